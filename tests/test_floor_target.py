"""The report's check of issue 10's floor target: the floor's fid_inf, its whole interval, within 5%
of the spread of fid_inf between the best and the worst cell."""
import pandas as pd

from solverzoo.bench.report_sections import floor_target_lines

CELLS = pd.DataFrame({"fid_inf": [100.0, 250.0, 500.0, float("nan")]})  # spread 400: 5% is 20


def test_met_only_when_the_whole_interval_is_within_five_percent():
    met = floor_target_lines({"fid_inf": 2.0, "fid_inf_ci_low": -15.0, "fid_inf_ci_high": 19.0}, CELLS)
    assert "spread of `fid_inf` between the best and the worst cell is 400.0" in met[0]
    assert "0.5% of it" in met[0] and "reaches 4.8%" in met[0] and "met)" in met[0] and "not met" not in met[0]
    # the estimate alone is within 5%, its interval is not: not met
    wide = floor_target_lines({"fid_inf": 2.0, "fid_inf_ci_low": -30.0, "fid_inf_ci_high": 19.0}, CELLS)
    assert "reaches 7.5%" in wide[0] and "not met" in wide[0]


def test_no_claim_without_two_cells_or_an_interval():
    assert floor_target_lines({"fid_inf": 2.0, "fid_inf_ci_low": -1.0, "fid_inf_ci_high": 3.0}, CELLS.iloc[:1]) == []
    assert floor_target_lines({"fid_inf": 2.0, "fid_inf_ci_low": float("nan"), "fid_inf_ci_high": float("nan")}, CELLS) == []
