import pytest
import torch

import solverzoo as sz
from solverzoo.testbeds import GaussianMixture

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def gmm():
    return GaussianMixture.default(dim=4, seed=0)


@pytest.fixture(scope="session")
def gmm_img():
    """A mixture over (2, 4, 4) 'latents' (D = 32) for image-shaped checks."""
    return GaussianMixture.default(dim=32, components=5, classes=5, seed=1)


def ode_solvers():
    return [n for n in sz.registry.names("solver") if not sz.get_solver(n).stochastic and not sz.get_solver(n).adaptive]


def all_solvers():
    return sz.registry.names("solver")
