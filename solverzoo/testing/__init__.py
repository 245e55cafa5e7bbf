"""The packaged conformance suite: checks every registered component must pass.

Run it from the command line (``solverzoo conformance NAME [NAME ...]``), from Python
(:func:`run_conformance`), or from a plugin's own tests::

    import pytest
    from solverzoo.testing import applicable_checks

    @pytest.mark.parametrize("check", applicable_checks("my_solver"), ids=lambda c: c.name)
    def test_conformance(check):
        check("my_solver")

Importing this package imports neither pytest nor the benchmark harness.
"""
from solverzoo.testing.conformance import (
    CHECKS,
    EDGE_GRIDS,
    PARAMETRISATIONS,
    Check,
    ConformanceResult,
    applicable_checks,
    check_batch_independent,
    check_contract,
    check_edge_grid,
    check_edge_grids,
    check_empirical_order,
    check_grid,
    check_prediction_invariance,
    check_reaches_grid_end,
    check_same_seed_bit_identical,
    check_sde_distribution,
    check_shape_dtype_device,
    check_stateless,
    run_conformance,
)

__all__ = [
    "CHECKS", "EDGE_GRIDS", "PARAMETRISATIONS", "Check", "ConformanceResult", "applicable_checks", "check_batch_independent",
    "check_contract", "check_edge_grid", "check_edge_grids", "check_empirical_order", "check_grid",
    "check_prediction_invariance", "check_reaches_grid_end", "check_same_seed_bit_identical",
    "check_sde_distribution", "check_shape_dtype_device", "check_stateless", "run_conformance",
]
