"""The solver-author kit: its declared API, the Butcher-tableau route to a solver."""
import inspect

import pytest

import solverzoo as sz
import solverzoo.kit as kit
from solverzoo.kit import RungeKutta, TableauError
from solverzoo.testing.verify import verify


def test_all_names_exist_and_are_documented():
    missing = [n for n in kit.__all__ if not hasattr(kit, n)]
    assert not missing
    own = [getattr(kit, n) for n in kit.__all__ if getattr(getattr(kit, n), "__module__", None) == "solverzoo.kit"]
    assert len(own) >= 12
    assert [o.__name__ for o in own if not (inspect.isfunction(o) or inspect.isclass(o)) or not o.__doc__] == []
    for n in ("Solver", "Callback", "Generators", "randn_like", "Table", "table", "alpha_sigma_at", "expm1_neg",
              "multistep_orders", "lincomb", "resolve_frame", "frame_coords", "frame_time", "RungeKutta",
              "RKPlan", "RKStep", "FRAMES"):
        assert n in kit.__all__
    assert kit.Solver is sz.Solver and kit.randn_like is sz.randn_like
    assert "Stability" in kit.__doc__


class Ralston(RungeKutta):
    """Ralston — second-order Runge-Kutta with minimum error bound."""

    name, order = "ralston_kit_test", 2
    tableau = (((2 / 3,),), (1 / 4, 3 / 4), (0.0, 2 / 3))


def test_tableau_subclass_is_a_working_second_order_solver():
    solver = Ralston()
    assert solver.evals_per_step == 2  # defaults to the number of stages
    rep = verify(solver, n=32)
    assert abs(rep.empirical_order - 2) < 0.5


def test_builtin_tableaux_are_valid_and_declare_their_stages():
    for name in ("euler", "heun", "midpoint", "rk4"):
        solver = sz.get_solver(name)
        kit.check_tableau(solver.tableau)
        assert solver.evals_per_step == len(solver.tableau[1])


@pytest.mark.parametrize("tableau,message", [
    (((), (1.0,)), r"must be a tuple \(A, b, c\)"),
    ((((1.0,),), (0.5, 0.5), (0.0,)), r"b needs 2 weights, c 2 nodes and A 1 rows"),
    ((((1.0,),), (0.5, 0.5), (0.5, 1.0)), r"first node c\[0\] must be 0"),
    ((((0.5, 0.5),), (0.5, 0.5), (0.0, 1.0)), r"row 0 of A \(stage 1\) needs 1 entries"),
    ((((0.5,),), (0.5, 0.5), (0.0, 1.0)), r"row 0 of A sums to 0.5 but its node c\[1\] is 1.0"),
    ((((1.0,),), (0.5, 0.6), (0.0, 1.0)), r"weights b sum to 1.1"),
])
def test_bad_tableau_fails_at_class_definition(tableau, message):
    with pytest.raises(TableauError, match=message):
        type("Bad", (RungeKutta,), {"name": "bad", "tableau": tableau})


def test_evals_per_step_must_match_the_tableau():
    with pytest.raises(TableauError, match="evals_per_step = 1 but the tableau has 2 stage"):
        type("Bad", (RungeKutta,), {"name": "bad", "evals_per_step": 1, "tableau": Ralston.tableau})
