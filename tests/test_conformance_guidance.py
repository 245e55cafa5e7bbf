"""Every registered guidance method (built-in and from plugins) passes the guidance conformance
suite; a broken third-party guidance is caught with a message naming the problem."""

import pytest
import torch

import solverzoo as sz
from solverzoo.testing.conformance import run_guidance_conformance
from solverzoo.testing.conformance_guidance import guidance_testbed_model

OPTIONS = {"autoguidance": lambda model: {"weak": guidance_testbed_model(seed=7, hidden=16)}}  # no weak DiT ships yet


@pytest.mark.parametrize("name", sz.registry.names("guidance"))
def test_guidance_conformance(name):
    run_guidance_conformance(name, OPTIONS.get(name))


class _Batchwide(sz.Guidance):
    """A broken guidance: normalises by a statistic over the whole batch."""

    name = "batchwide"
    branches = ("cond", "uncond")

    def __init__(self, scale: float = 2.0):
        self.scale = scale

    def combine(self, preds, x, t, alpha, sigma):
        c, u = preds["cond"], preds["uncond"]
        k = (c.x0 - u.x0).abs().mean()  # over the batch: sample i depends on the others
        return sz.Prediction(u.x0 + self.scale * (c.x0 - u.x0) / (1 + k), u.eps + self.scale * (c.eps - u.eps) / (1 + k))


class _Plugin:
    @staticmethod
    def register_guidance(register):
        register(_Batchwide, name="batchwide")


def test_broken_plugin_guidance_is_caught():
    sz.registry.add_plugin(_Plugin, "batchwide-test")
    try:
        with pytest.raises(AssertionError, match="batchwide"):
            run_guidance_conformance("batchwide")
    finally:
        sz.registry.remove_plugin("batchwide-test")
    assert torch.isfinite(torch.zeros(1)).all()
