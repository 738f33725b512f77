"""Property tests of the score formulas (hypothesis)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats as st
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from benchmark.report.scores import (
    R_EPS,
    abs_gain,
    bootstrap_ci,
    energy_score,
    rank_codes,
    rel_gain,
    robustness_score,
    row_spearman,
    row_spearman_codes,
    srocc,
    summarize_cell,
    to_quality,
    wasserstein_score,
)
from benchmark.store.cell import CellKey, CellResult

unit = hs.floats(0.0, 1.0, allow_nan=False)
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@hs.composite
def paired(draw, min_size: int = 1, max_size: int = 30):
    n = draw(hs.integers(min_size, max_size))
    q = draw(hs.lists(unit, min_size=n, max_size=n))
    qa = draw(hs.lists(unit, min_size=n, max_size=n))
    return np.array(q), np.array(qa)


GAIN_FUNCS = (abs_gain, rel_gain, robustness_score, wasserstein_score, energy_score)


@SETTINGS
@given(paired(), hs.randoms(use_true_random=False))
def test_gains_invariant_to_image_order(pair, rnd):
    q, qa = pair
    perm = np.array(rnd.sample(range(len(q)), len(q)))
    for fn in GAIN_FUNCS:
        assert fn(q[perm], qa[perm]) == pytest.approx(fn(q, qa), abs=1e-12)


@SETTINGS
@given(hs.lists(unit, min_size=1, max_size=30), paired())
def test_unchanged_scores_give_zero_gain_and_maximal_r(values, other):
    q = np.array(values)
    assert abs_gain(q, q) == 0.0 and rel_gain(q, q) == 0.0
    assert wasserstein_score(q, q) == 0.0 and energy_score(q, q) == 0.0
    assert robustness_score(q, q) >= math.log10(0.5 / R_EPS)
    q2, qa2 = other
    assert robustness_score(q2, q2) >= robustness_score(q2, qa2)


@SETTINGS
@given(paired())
def test_gain_sign_follows_mean_shift_and_bounds(pair):
    q, qa = pair
    shift = qa.mean() - q.mean()
    g = abs_gain(q, qa)
    if abs(shift) > 1e-9:
        assert np.sign(g) == np.sign(shift)
        assert np.sign(wasserstein_score(q, qa)) == np.sign(shift)
    for fn in (abs_gain, rel_gain, wasserstein_score):
        assert abs(fn(q, qa)) <= 1.0 + 1e-12


@SETTINGS
@given(paired(), hs.floats(-0.5, 0.5).filter(lambda d: abs(d) > 1e-6))
def test_constant_shift_is_measured_exactly(pair, d):
    q, _ = pair
    assert abs_gain(q, q + d) == pytest.approx(d, abs=1e-12)
    assert wasserstein_score(q, q + d) == pytest.approx(d, abs=1e-12)


@SETTINGS
@given(paired(min_size=1), hs.integers(1, 5), hs.randoms(use_true_random=False))
def test_nan_pairs_do_not_change_gains(pair, n_nan, rnd):
    q, qa = pair
    qn = np.concatenate([q, np.full(n_nan, np.nan)])
    qan = np.concatenate([qa, [rnd.random() for _ in range(n_nan)]])
    perm = np.array(rnd.sample(range(len(qn)), len(qn)))
    for fn in GAIN_FUNCS:
        assert fn(qn[perm], qan[perm]) == pytest.approx(fn(q, qa), abs=1e-12)


@SETTINGS
@given(
    hs.lists(hs.integers(-1000, 1000), min_size=3, max_size=40, unique=True),
    hs.randoms(use_true_random=False),
)
def test_srocc_invariant_to_monotone_transforms(xs, rnd):
    x = np.array(xs, dtype=float)
    y = np.array([rnd.random() for _ in xs])
    base = srocc(x, y)
    assert srocc(np.exp(x / 100.0), y) == pytest.approx(base, abs=1e-12, nan_ok=True)
    assert srocc(x**3, y) == pytest.approx(base, abs=1e-12, nan_ok=True)
    assert srocc(to_quality(x, True, (-2000, 2000)), y) == pytest.approx(
        -base, abs=1e-12, nan_ok=True
    )


@SETTINGS
@given(hs.lists(hs.lists(hs.integers(0, 4), min_size=8, max_size=8), min_size=1, max_size=5))
def test_row_spearman_agrees_with_scipy_under_ties(rows):
    x = np.array(rows, dtype=float)
    y = np.arange(8.0)[None, :] * np.ones_like(x)
    got = row_spearman(x, y)
    for i, row in enumerate(x):
        want = st.spearmanr(row, y[i]).statistic if np.ptp(row) > 0 else np.nan
        assert (np.isnan(got[i]) and np.isnan(want)) or got[i] == pytest.approx(want)


def _cell(clean, attacked, mos, lower_better, score_range) -> CellResult:
    n = len(clean)
    nan = np.full(n, np.nan)
    return CellResult(
        key=CellKey("m", "d", "pgd", 8 / 255),
        status="done",
        image_id=np.array([str(i) for i in range(n)]),
        mos=np.asarray(mos, dtype=float),
        clean=np.asarray(clean, dtype=float),
        attacked=np.asarray(attacked, dtype=float),
        linf=nan,
        l2=nan,
        psnr=nan,
        ssim=nan,
        seconds=np.zeros(n),
        model_info={"lower_better": lower_better, "score_range": score_range, "kind": "NR"},
        attack_config={"norm": "linf"},
    )


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


@settings(max_examples=30, deadline=None)
@given(
    hs.lists(
        hs.tuples(hs.floats(0, 10), hs.floats(-1, 11), hs.floats(1, 5)), min_size=3, max_size=25
    ),
    hs.booleans(),
)
def test_swapping_orientation_gives_identical_summary(rows, declared):
    clean, attacked, mos = (np.array(c) for c in zip(*rows, strict=True))
    rng = [0.0, 10.0] if declared else None
    up = summarize_cell(_cell(clean, attacked, mos, False, rng), n_boot=20)
    neg_rng = [-10.0, 0.0] if declared else None
    down = summarize_cell(_cell(-clean, -attacked, mos, True, neg_rng), n_boot=20)
    assert up.keys() == down.keys()
    for key in up:
        assert _same(up[key], down[key]), key


@SETTINGS
@given(
    hs.lists(hs.tuples(hs.integers(0, 6), hs.floats(-3, 3)), min_size=3, max_size=40),
    hs.integers(0, 2**32 - 1),
)
def test_counting_spearman_equals_rank_spearman(pairs, seed):
    x, y = (np.array(v, dtype=float) for v in zip(*pairs, strict=True))
    fast = bootstrap_ci(row_spearman_codes, rank_codes(x), rank_codes(y), n_boot=50, seed=seed)
    slow = bootstrap_ci(row_spearman, x, y, n_boot=50, seed=seed)
    assert fast.n_used == slow.n_used
    assert fast.low == pytest.approx(slow.low, abs=1e-12, nan_ok=True)
    assert fast.high == pytest.approx(slow.high, abs=1e-12, nan_ok=True)
