"""Score formulas against values derived by hand on tiny arrays."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.stats as st

from benchmark.errors import ConfigError
from benchmark.report.scores import (
    abs_gain,
    bootstrap_ci,
    energy_score,
    finite_pairs,
    fit_logistic,
    krocc,
    logistic4,
    plcc,
    plcc_logistic,
    quality_map,
    rel_gain,
    robustness_score,
    row_mean,
    row_pearson,
    row_spearman,
    srocc,
    summarize_cell,
    to_quality,
    wasserstein_score,
)
from benchmark.store.cell import CellKey, CellResult

NAN = float("nan")


def make_cell(
    clean,
    attacked,
    mos=None,
    *,
    status="done",
    lower_better=False,
    score_range=(0.0, 100.0),
    reason="",
    gradient="ok",
) -> CellResult:
    clean = np.asarray(clean, dtype=float)
    n = clean.shape[0]
    mos = np.full(n, NAN) if mos is None else np.asarray(mos, dtype=float)
    dist = np.full(n, NAN)
    return CellResult(
        key=CellKey("m", "d", "pgd", 8 / 255),
        status=status,
        image_id=np.array([f"img{i}" for i in range(n)]),
        mos=mos,
        clean=clean,
        attacked=np.asarray(attacked, dtype=float),
        linf=dist,
        l2=dist,
        psnr=dist,
        ssim=dist,
        seconds=np.ones(n),
        model_info={
            "name": "m",
            "kind": "NR",
            "lower_better": lower_better,
            "score_range": None if score_range is None else list(score_range),
            "source": "pyiqa",
            "params": 10,
        },
        attack_config={"name": "pgd", "norm": "linf", "eps": 8 / 255, "seed": 0},
        gradient=gradient,
        reason=reason,
    )


# --- orientation and normalisation ------------------------------------------------------


def test_to_quality_declared_range_both_orientations():
    # (raw - 0) / 10 for higher-better; (10 - raw) / 10 for lower-better
    assert to_quality([2, 4, 6], False, (0, 10)) == pytest.approx([0.2, 0.4, 0.6])
    assert to_quality([2, 4, 6], True, (0, 10)) == pytest.approx([0.8, 0.6, 0.4])
    # attacked value beyond the range is not clipped: 12 -> 1.2
    assert to_quality([12], False, (0, 10)) == pytest.approx([1.2])


def test_to_quality_clean_minmax_shared_by_attacked():
    # clean 2..6: lo 2, span 4 -> [0, .5, 1]; attacked 7 -> 5/4, 1 -> -1/4 (same mapping)
    assert to_quality([2, 4, 6], False) == pytest.approx([0.0, 0.5, 1.0])
    assert to_quality([7, 1], False, None, clean_raw=[2, 4, 6]) == pytest.approx([1.25, -0.25])
    # lower-better: oriented clean [-2,-4,-6], lo -6, span 4 -> [1, .5, 0]
    assert to_quality([2, 4, 6], True) == pytest.approx([1.0, 0.5, 0.0])


def test_quality_map_methods_and_errors():
    assert quality_map(False, (0, 1)).method == "declared"
    assert quality_map(False, None, [1.0, NAN, 3.0]).method == "clean-minmax"
    const = quality_map(False, None, [5.0, 5.0])
    assert const.method == "clean-constant"
    assert const([5.0, 6.5]) == pytest.approx([0.0, 1.5])  # raw units
    undefined = quality_map(False, None, [NAN, NAN])
    assert undefined.method == "undefined"
    assert np.isnan(undefined([1.0, 2.0])).all()
    for bad in [(1, 1), (2, 1), (0, float("inf")), ("a", "b"), (1,)]:
        with pytest.raises(ConfigError):
            quality_map(False, bad)
    with pytest.raises(ConfigError):
        quality_map(False, None, None)


# --- gains ------------------------------------------------------------------------------

Q = np.array([0.2, 0.5, 0.8])
QA = np.array([0.3, 0.5, 1.0])


def test_gains_by_hand():
    # differences 0.1, 0, 0.2 -> mean 0.1
    assert abs_gain(Q, QA) == pytest.approx(0.1)
    # 0.1/1.2 + 0/1.5 + 0.2/1.8 = 1/12 + 1/9 = 7/36; mean = 7/108
    assert rel_gain(Q, QA) == pytest.approx(7 / 108)
    # log10(0.8/0.1) + log10(0.5/1e-6) + log10(0.8/0.2) = 0.90309 + 5.69897 + 0.60206 -> /3
    assert robustness_score(Q, QA) == pytest.approx(2.40137, abs=1e-4)
    # sorted pairs (0.2,0.3), (0.5,0.5), (0.8,1.0): W1 = mean |diff| = 0.1, shift positive
    assert wasserstein_score(Q, QA) == pytest.approx(0.1)
    # CDF gaps: 1/3 on [0.2,0.3) and 1/3 on [0.8,1.0): integral (1/9)(0.1 + 0.2) = 1/30;
    # scipy's energy distance is sqrt(2 * integral) = sqrt(1/15)
    assert energy_score(Q, QA) == pytest.approx(math.sqrt(1 / 15))
    # deflation: every sign flips
    assert abs_gain(QA, Q) == pytest.approx(-0.1)
    assert wasserstein_score(QA, Q) == pytest.approx(-0.1)
    assert energy_score(QA, Q) == pytest.approx(-math.sqrt(1 / 15))


def test_robustness_of_unchanged_scores():
    # q = 0.5: log10(0.5 / 1e-6) = 5.69897; q = 0 or 1: log10(1 / 1e-6) = 6
    assert robustness_score([0.5], [0.5]) == pytest.approx(5.69897, abs=1e-5)
    assert robustness_score([0.0, 1.0], [0.0, 1.0]) == pytest.approx(6.0)


def test_nan_pairs_dropped_never_nan_mean():
    q = [0.2, NAN, 0.5, 0.1]
    qa = [0.3, 0.9, NAN, np.inf]
    (a, b), dropped = finite_pairs(q, qa)
    assert dropped == 3 and a.tolist() == [0.2] and b.tolist() == [0.3]
    assert abs_gain(q, qa) == pytest.approx(0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert math.isnan(abs_gain([NAN, NAN], [0.1, 0.2]))
        assert math.isnan(wasserstein_score([NAN], [NAN]))
        assert math.isnan(robustness_score([], []))
    assert caught == []
    with pytest.raises(ConfigError):
        abs_gain([0.1, 0.2], [0.1])


# --- correlations -----------------------------------------------------------------------


def test_correlations_by_hand():
    # ranks equal values; d = [-1, 1, -1, 1, 0], sum d^2 = 4: 1 - 6*4/(5*24) = 0.8
    assert srocc([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)
    # centred x = y-perm of [-1.5,-.5,.5,1.5]: sum xy = 4, sxx = syy = 5 -> 0.8
    assert plcc([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    # one discordant pair of six: (5 - 1) / 6
    assert krocc([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(2 / 3)


def test_correlations_undefined_are_nan_without_warnings():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert math.isnan(srocc([1, 2], [1, 2]))  # 2 pairs
        assert math.isnan(plcc([1, 2, NAN, 4], [1, 2, 3, NAN]))  # 2 finite pairs
        assert math.isnan(srocc([1, 1, 1, 1], [1, 2, 3, 4]))  # constant scores
        assert math.isnan(plcc([1, 2, 3, 4], [3, 3, 3, 3]))  # constant MOS
        assert math.isnan(krocc([], []))
    assert caught == []
    # NaN pairs dropped: the remaining 5 pairs give the hand value 0.8
    assert srocc([1, 2, 3, NAN, 4, 5], [2, 1, 4, 9, 3, 5]) == pytest.approx(0.8)


def test_logistic_fit_recovers_logistic_data():
    x = np.linspace(0, 1, 41)
    y = logistic4(x, 5.0, 1.0, 0.5, 0.08)
    fit = fit_logistic(x, y)
    assert not fit.fallback
    assert plcc_logistic(x, y, fit) == pytest.approx(1.0, abs=1e-6)
    assert plcc(x, y) < 0.97  # the sigmoid is far from linear
    # decreasing relationship: the fit still maps scores onto MOS
    y_dec = logistic4(x, 1.0, 5.0, 0.4, 0.1)
    assert plcc_logistic(x, y_dec) == pytest.approx(1.0, abs=1e-6)


def test_logistic_fallback_to_plain_plcc():
    x, y = [0.1, 0.4, 0.5, 0.9], [1.0, 2.0, 2.5, 4.0]  # 4 pairs: too few to fit 4 parameters
    fit = fit_logistic(x, y)
    assert fit.fallback and "5 pairs" in fit.note
    assert plcc_logistic(x, y, fit) == pytest.approx(plcc(x, y))
    assert fit_logistic([1, 1, 1, 1, 1], [1, 2, 3, 4, 5]).fallback


def test_row_correlations_match_scipy():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 5, size=(6, 30)).astype(float)  # ties on purpose
    y = x + rng.integers(0, 4, size=(6, 30))
    rs = row_spearman(x, y)
    rp = row_pearson(x, y)
    for i in range(6):
        assert rs[i] == pytest.approx(st.spearmanr(x[i], y[i]).statistic)
        assert rp[i] == pytest.approx(st.pearsonr(x[i], y[i]).statistic)
    const = np.array([[0.1, 0.1, 0.1], [1.0, 2.0, 3.0]])
    assert np.isnan(row_pearson(const, np.array([[1.0, 2, 3], [1.0, 2, 4]]))[0])


# --- bootstrap --------------------------------------------------------------------------


def test_bootstrap_ci_by_hand():
    # n = 2, terms {0, 1}: resampled means 0, .5, 1 with probability 1/4, 1/2, 1/4, so the
    # 2.5th and 97.5th percentiles of 2000 resamples are 0 and 1
    ci = bootstrap_ci(row_mean, [0.0, 1.0], n_boot=2000, seed=0)
    assert (ci.low, ci.high, ci.n_used) == (0.0, 1.0, 2000)
    # identical terms: every resample has the same mean
    ci = bootstrap_ci(row_mean, [0.3] * 5, n_boot=50)
    assert ci.low == pytest.approx(0.3) and ci.high == pytest.approx(0.3)


def test_bootstrap_ci_matches_normal_theory_and_is_seeded():
    x = np.random.default_rng(7).normal(size=400)
    ci = bootstrap_ci(row_mean, x, n_boot=2000, seed=1)
    half = 1.96 * x.std(ddof=1) / math.sqrt(x.size)
    assert ci.low == pytest.approx(x.mean() - half, abs=0.2 * half)
    assert ci.high == pytest.approx(x.mean() + half, abs=0.2 * half)
    assert bootstrap_ci(row_mean, x, n_boot=300, seed=1) == bootstrap_ci(
        row_mean, x, n_boot=300, seed=1
    )
    assert bootstrap_ci(row_mean, x, n_boot=300, seed=1) != bootstrap_ci(
        row_mean, x, n_boot=300, seed=2
    )


def test_bootstrap_ci_edge_cases():
    assert all(math.isnan(v) for v in bootstrap_ci(row_mean, [], n_boot=10)[:2])
    assert math.isnan(bootstrap_ci(row_mean, [1.0, 2.0], n_boot=0).low)
    # every resample of a constant pair is degenerate for a correlation
    ci = bootstrap_ci(row_pearson, [1.0, 1.0, 1.0], [1.0, 2.0, 3.0], n_boot=20)
    assert ci.n_used == 0 and math.isnan(ci.low)
    for bad in ({"level": 1.0}, {"n_boot": -1}, {"n_boot": 2.5}):
        with pytest.raises(ConfigError):
            bootstrap_ci(row_mean, [1.0, 2.0], **bad)


def test_bootstrap_chunking_gives_the_same_interval(monkeypatch):
    import benchmark.report.scores as scores

    x = np.random.default_rng(0).normal(size=50)
    whole = bootstrap_ci(row_mean, x, n_boot=100, seed=4)
    monkeypatch.setattr(scores, "_MAX_BOOT_ELEMS", 50 * 7)  # 7 resamples per chunk
    assert bootstrap_ci(row_mean, x, n_boot=100, seed=4) == whole


# --- one cell ---------------------------------------------------------------------------


def test_summarize_cell_by_hand():
    # declared range 0..100: q = [.2,.5,.8], q' = [.3,.5,1.0] as in test_gains_by_hand
    cell = make_cell([20, 50, 80], [30, 50, 100], mos=[1, 2, 3])
    s = summarize_cell(cell, n_boot=200)
    assert s["abs_gain"] == pytest.approx(0.1)
    assert s["rel_gain"] == pytest.approx(7 / 108)
    assert s["robustness"] == pytest.approx(2.40137, abs=1e-4)
    assert s["abs_gain_low"] <= s["abs_gain"] <= s["abs_gain_high"]
    assert s["srocc_clean"] == pytest.approx(1.0) and s["srocc_attacked"] == pytest.approx(1.0)
    assert (s["n_pairs"], s["n_dropped"], s["status"], s["normalization"]) == (
        3,
        0,
        "done",
        "declared",
    )
    assert s["eps_label"] == "8/255" and s["norm"] == "linf"
    assert s["logistic_fallback"]  # 3 pairs: plain PLCC, and the note says so
    assert "logistic fit needs 5 pairs" in s["notes"]


def test_summarize_cell_drops_nan_pairs_and_reports_them():
    cell = make_cell([20, 50, 80, 10], [30, 50, 100, NAN], mos=[1, 2, 3, 4])
    s = summarize_cell(cell, n_boot=100)
    assert s["abs_gain"] == pytest.approx(0.1)
    assert (s["n_pairs"], s["n_dropped"]) == (3, 1)
    assert "1 image(s) with a non-finite" in s["notes"]
    all_nan = summarize_cell(make_cell([20, 50], [NAN, NAN]), n_boot=10)
    assert math.isnan(all_nan["abs_gain"]) and all_nan["n_pairs"] == 0
    assert "no image with finite clean and attacked scores" in all_nan["notes"]


@pytest.mark.parametrize("status", ["not_applicable", "failed"])
def test_summarize_cell_inapplicable_keeps_status_and_clean_correlations(status):
    cell = make_cell(
        [20, 40, 50, 80, 90],
        [NAN] * 5,
        mos=[1, 3, 2, 4, 5],
        status=status,
        reason="why",
        gradient="none",
    )
    s = summarize_cell(cell, n_boot=100)
    assert (s["status"], s["reason"], s["gradient"]) == (status, "why", "none")
    for key in ("abs_gain", "rel_gain", "robustness", "wasserstein", "srocc_attacked"):
        assert math.isnan(s[key])
    # ranks [1,2,3,4,5] vs [1,3,2,4,5]: sum d^2 = 2 -> 1 - 12/120 = 0.9
    assert s["srocc_clean"] == pytest.approx(0.9)
    assert s["n_dropped"] == 0


def test_summarize_cell_without_mos_and_bad_model_info():
    s = summarize_cell(make_cell([20, 50, 80], [30, 50, 100]), n_boot=10)
    assert math.isnan(s["srocc_clean"]) and "no MOS" in s["notes"]
    assert s["abs_gain"] == pytest.approx(0.1)
    cell = make_cell([20, 50], [30, 50])
    del cell.model_info["lower_better"]
    with pytest.raises(ConfigError, match="lower_better"):
        summarize_cell(cell)


def test_summarize_cell_minmax_normalisation():
    # no declared range: clean 20..80 -> q [0, .5, 1]; attacked 30, 50, 110 -> [1/6, .5, 1.5]
    s = summarize_cell(make_cell([20, 50, 80], [30, 50, 110], score_range=None), n_boot=10)
    assert s["normalization"] == "clean-minmax"
    assert s["abs_gain"] == pytest.approx((1 / 6 + 0 + 0.5) / 3)
