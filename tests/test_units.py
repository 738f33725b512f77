"""The MSU benchmark's units beside ours: gains by min-max of the cell's clean scores, checked
against its formulas (msu-video-group/MSU_Metrics_Robustness_Benchmark, score_methods.py:
sklearn MinMaxScaler fitted on the clean values) on arrays computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmark.errors import ConfigError
from benchmark.report.leaderboard import build_tables, render_html, terminal_table
from benchmark.report.scores import summarize_cell
from benchmark.store.cell import CellKey, CellResult


def cell(clean, attacked, *, lower_better=False, score_range=(0.0, 10.0)) -> CellResult:
    n = len(clean)
    return CellResult(
        key=CellKey("m", "d", "ifgsm", 4 / 255),
        status="done",
        image_id=np.array([f"i{k}" for k in range(n)], dtype=object),
        mos=np.array([1.0, 2.0, 3.0][:n]),
        clean=np.asarray(clean, dtype=float),
        attacked=np.asarray(attacked, dtype=float),
        linf=np.full(n, 0.01),
        l2=np.full(n, 0.1),
        psnr=np.full(n, 40.0),
        ssim=np.full(n, 0.99),
        seconds=np.full(n, 0.1),
        model_info={"lower_better": lower_better, "score_range": list(score_range)},
        attack_config={"name": "ifgsm", "norm": "linf"},
    )


def test_msu_units_are_min_max_of_the_clean_scores_as_their_formulas_give():
    # clean 2, 4, 6 -> MinMaxScaler: 0, 0.5, 1; attacked 3, 4, 8 -> 0.25, 0.5, 1.5
    c = cell([2, 4, 6], [3, 4, 8])
    ours = summarize_cell(c, n_boot=10)
    msu = summarize_cell(c, n_boot=10, units="msu")
    # score range 0..10: q = .2 .4 .6, q' = .3 .4 .8
    assert ours["abs_gain"] == pytest.approx((0.1 + 0 + 0.2) / 3)
    assert ours["units"] == "range" and msu["units"] == "msu"
    assert msu["abs_gain"] == pytest.approx((0.25 + 0 + 0.5) / 3)
    # normalized_relative_gain: ((s'+1) - (s+1)) / (s+1)
    assert msu["rel_gain"] == pytest.approx((0.25 / 1 + 0 / 1.5 + 0.5 / 2) / 3)
    # robustness_score: log10(max(1 - s, s - 0) / (|s - s'| + 1e-6))
    want = np.mean(
        [math.log10(1 / (0.25 + 1e-6)), math.log10(0.5 / 1e-6), math.log10(1 / (0.5 + 1e-6))]
    )
    assert msu["robustness"] == pytest.approx(want)
    # wasserstein score: W1 of the scaled values, signed by the mean shift
    assert msu["wasserstein"] == pytest.approx(0.25)


def test_a_lower_is_better_metric_gains_the_same_in_both_orientations():
    """MSU flips the sign (inverse_sign) of the scaled raw values; we orient scores first.
    The absolute gain and R agree; clean 6, 4, 2 (lower better) attacked 5, 4, 0."""
    msu = summarize_cell(cell([6, 4, 2], [5, 4, 0], lower_better=True), n_boot=10, units="msu")
    # raw scaled s = 1, .5, 0; s' = .75, .5, -.5; gain = -(s' - s) = .25, 0, .5
    assert msu["abs_gain"] == pytest.approx(0.25)
    want = np.mean(
        [math.log10(1 / (0.25 + 1e-6)), math.log10(0.5 / 1e-6), math.log10(1 / (0.5 + 1e-6))]
    )
    assert msu["robustness"] == pytest.approx(want)


def test_the_tables_name_their_units_and_bad_units_are_refused(tmp_path):
    cells = [cell([2, 4, 6], [3, 4, 8])]
    tables = build_tables(cells, n_boot=10, units="msu")
    assert (tables.rows["units"] == "msu").all() and (tables.cells["units"] == "msu").all()
    assert tables.rows["abs_gain"].iloc[0] == pytest.approx(0.25)
    assert "(MSU min-max)" in terminal_table(cells, tables=tables).splitlines()[0]
    page = render_html(cells, tmp_path / "lb.html", tables=tables).read_text()
    assert "Abs gain [MSU min-max]" in page and "gains in MSU min-max units" in page
    default = render_html(cells, tmp_path / "lb2.html", n_boot=10).read_text()
    assert "Abs gain [score range]" in default
    with pytest.raises(ConfigError, match="units must be one of"):
        build_tables(cells, units="percent")
