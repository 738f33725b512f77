"""Score formulas of the benchmark (docs/architecture.md, "Scores"): pure functions on numpy arrays.

Everything works on *quality-up, normalised* scores `q` (clean) and `q_adv` (attacked):
`to_quality` turns a model's raw outputs into them so that "inflation" always means
`q_adv > q` and gains of different models are comparable.

Conventions that hold for every function here:
- Non-finite values are never averaged in. Paired statistics drop the images where either
  value is NaN/inf; `summarize_cell` reports how many were dropped. With nothing left the
  result is NaN and `summarize_cell` says why.
- Correlations need at least 3 valid pairs and non-constant inputs; otherwise they are NaN
  (checked up front, so scipy emits no warnings).
- Bootstrap intervals resample *images* (paired: the same indices for every array of one
  statistic), use a fixed-seed `numpy.random.Generator` and the percentile method.
- MOS is taken as higher-is-better; dataset cards orient DMOS-style labels before this point.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import scipy.stats as st
from scipy.optimize import OptimizeWarning, curve_fit
from scipy.special import expit

from benchmark.budget import budget_label
from benchmark.errors import ConfigError
from benchmark.report.certified import certified_scores
from benchmark.store.cell import CellResult

R_EPS = 1e-6  # the 1e-6 in the robustness score's denominator
MIN_CORR_PAIRS = 3
MIN_LOGISTIC_PAIRS = 5  # 4 parameters: fewer points would be interpolated, not fitted
_MAX_BOOT_ELEMS = 2_000_000  # resample in chunks of at most this many gathered values

ArrayLike = np.ndarray | Sequence[float]
RowStat = Callable[..., np.ndarray]


# ---------------------------------------------------------------------------------------
# orientation and normalisation


@dataclass(frozen=True)
class QualityMap:
    """Affine map raw score -> quality-up score, `(oriented - lo) / (hi - lo)`.

    `lo`/`hi` are in oriented (quality-up) units. `method` records where they came from:
    "declared" (the model's score range), "clean-minmax" (min/max of the clean scores),
    "clean-constant" (clean scores all equal: scale 1, so values are raw differences) or
    "undefined" (no declared range and no finite clean score: every value maps to NaN).
    Values are deliberately NOT clipped to [0,1]: an attack that pushes a score beyond the
    declared range or beyond the clean extremes is exactly what the gains must show, and
    clipping would cap the measured inflation at the edge of the range.
    """

    lower_better: bool
    lo: float
    hi: float
    method: str

    def __call__(self, raw: ArrayLike) -> np.ndarray:
        raw = np.asarray(raw, dtype=np.float64)
        if self.method == "undefined":
            return np.full(raw.shape, np.nan)
        oriented = -raw if self.lower_better else raw
        return (oriented - self.lo) / (self.hi - self.lo)


def _check_range(score_range: Sequence[float]) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in score_range)
    except (TypeError, ValueError):
        raise ConfigError(
            f"score_range must be two numbers [lo, hi], got {score_range!r}"
        ) from None
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ConfigError(f"score_range must be finite with lo < hi, got {score_range!r}")
    return lo, hi


def quality_map(
    lower_better: bool,
    score_range: Sequence[float] | None = None,
    clean_raw: ArrayLike | None = None,
) -> QualityMap:
    """Build the one mapping used for clean AND attacked scores of a (model, dataset).

    Declared range wins; otherwise min-max of the finite clean scores, so that clean and
    attacked values share one scale and gains stay meaningful.
    """
    if score_range is not None:
        lo, hi = _check_range(score_range)
        if lower_better:
            lo, hi = -hi, -lo
        return QualityMap(bool(lower_better), lo, hi, "declared")
    if clean_raw is None:
        raise ConfigError("without a declared score_range the clean scores are needed to normalise")
    clean = np.asarray(clean_raw, dtype=np.float64)
    clean = clean[np.isfinite(clean)]
    if clean.size == 0:
        return QualityMap(bool(lower_better), np.nan, np.nan, "undefined")
    oriented = -clean if lower_better else clean
    lo, hi = float(oriented.min()), float(oriented.max())
    if lo == hi:
        return QualityMap(bool(lower_better), lo, lo + 1.0, "clean-constant")
    return QualityMap(bool(lower_better), lo, hi, "clean-minmax")


def to_quality(
    raw: ArrayLike,
    lower_better: bool,
    score_range: Sequence[float] | None = None,
    clean_raw: ArrayLike | None = None,
) -> np.ndarray:
    """Raw model outputs -> quality-up scores normalised to [0,1] (not clipped).

    With no declared `score_range`, min-max of `clean_raw` is used (of `raw` itself when
    `clean_raw` is None, i.e. when `raw` are the clean scores).
    """
    ref = raw if (score_range is None and clean_raw is None) else clean_raw
    return quality_map(lower_better, score_range, ref)(raw)


# ---------------------------------------------------------------------------------------
# gains and robustness


def finite_mask(*arrays: ArrayLike) -> np.ndarray:
    """The positions where every array is finite."""
    arrs = [np.asarray(a, dtype=np.float64).ravel() for a in arrays]
    n = arrs[0].shape[0]
    if any(a.shape[0] != n for a in arrs):
        raise ConfigError(f"paired arrays differ in length: {[a.shape[0] for a in arrs]}")
    keep = np.ones(n, dtype=bool)
    for a in arrs:
        keep &= np.isfinite(a)
    return keep


def finite_pairs(*arrays: ArrayLike) -> tuple[list[np.ndarray], int]:
    """Keep the positions where every array is finite; return them and how many were dropped."""
    keep = finite_mask(*arrays)
    arrs = [np.asarray(a, dtype=np.float64).ravel()[keep] for a in arrays]
    return arrs, int(keep.size - keep.sum())


def _subset(clusters: np.ndarray | None, keep: np.ndarray) -> np.ndarray | None:
    return None if clusters is None else clusters[keep]


def abs_gain_terms(q: np.ndarray, q_adv: np.ndarray) -> np.ndarray:
    return q_adv - q


def rel_gain_terms(q: np.ndarray, q_adv: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return (q_adv - q) / (q + 1.0)


def robustness_terms(q: np.ndarray, q_adv: np.ndarray) -> np.ndarray:
    """Per-image log10(max(1-q, q) / (|q - q'| + 1e-6)); max(1-q, q) >= 0.5, so always defined."""
    return np.log10(np.maximum(1.0 - q, q) / (np.abs(q - q_adv) + R_EPS))


def _finite_mean(terms: np.ndarray) -> float:
    terms = terms[np.isfinite(terms)]
    return float(terms.mean()) if terms.size else float("nan")


def _paired_mean(
    term_fn: Callable[[np.ndarray, np.ndarray], np.ndarray], q: ArrayLike, q_adv: ArrayLike
) -> float:
    (a, b), _ = finite_pairs(q, q_adv)
    return _finite_mean(term_fn(a, b))


def abs_gain(q: ArrayLike, q_adv: ArrayLike) -> float:
    """Mean inflation `mean(q' - q)` over images with both scores finite."""
    return _paired_mean(abs_gain_terms, q, q_adv)


def rel_gain(q: ArrayLike, q_adv: ArrayLike) -> float:
    """`mean((q' - q) / (q + 1))`: inflation relative to the clean score."""
    return _paired_mean(rel_gain_terms, q, q_adv)


def robustness_score(q: ArrayLike, q_adv: ArrayLike) -> float:
    """R = mean(log10(max(1-q, q) / (|q-q'| + 1e-6))); higher is more robust, ~6 when q' == q."""
    return _paired_mean(robustness_terms, q, q_adv)


def _signed_distance(
    dist: Callable[[np.ndarray, np.ndarray], float], q: ArrayLike, q_adv: ArrayLike
) -> float:
    (a, b), _ = finite_pairs(q, q_adv)
    if a.size == 0:
        return float("nan")
    return float(dist(a, b) * np.sign(b.mean() - a.mean()))


def wasserstein_score(q: ArrayLike, q_adv: ArrayLike) -> float:
    """W1 between the clean and attacked score distributions, signed by the mean shift."""
    return _signed_distance(st.wasserstein_distance, q, q_adv)


def energy_score(q: ArrayLike, q_adv: ArrayLike) -> float:
    """Energy distance between the two distributions, signed by the mean shift."""
    return _signed_distance(st.energy_distance, q, q_adv)


# ---------------------------------------------------------------------------------------
# correlations


def correlation_issue(x: ArrayLike, y: ArrayLike) -> str:
    """Why a correlation of x and y would be undefined ("" when it is defined)."""
    (a, b), _ = finite_pairs(x, y)
    if a.size < MIN_CORR_PAIRS:
        return f"{a.size} finite pair(s), need {MIN_CORR_PAIRS}"
    if np.ptp(a) == 0:
        return "constant scores"
    if np.ptp(b) == 0:
        return "constant MOS"
    return ""


def _corr(fn: Callable[..., Any], x: ArrayLike, y: ArrayLike) -> float:
    if correlation_issue(x, y):
        return float("nan")
    (a, b), _ = finite_pairs(x, y)
    with warnings.catch_warnings():  # near-constant input still gives a number; don't spam
        warnings.simplefilter("ignore")
        return float(fn(a, b).statistic)


def srocc(x: ArrayLike, y: ArrayLike) -> float:
    """Spearman rank correlation (scipy), NaN when undefined."""
    return _corr(st.spearmanr, x, y)


def plcc(x: ArrayLike, y: ArrayLike) -> float:
    """Pearson linear correlation (scipy), NaN when undefined."""
    return _corr(st.pearsonr, x, y)


def krocc(x: ArrayLike, y: ArrayLike) -> float:
    """Kendall tau-b (scipy), NaN when undefined."""
    return _corr(st.kendalltau, x, y)


def logistic4(x: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """VQEG 4-parameter logistic `(b1 - b2) / (1 + exp(-(x - b3)/|b4|)) + b2` (overflow-free)."""
    return (b1 - b2) * expit((x - b3) / (np.abs(b4) + 1e-12)) + b2


@dataclass(frozen=True)
class LogisticFit:
    """A fitted logistic mapping, or the identity when fitting failed (`fallback`)."""

    params: tuple[float, float, float, float] | None
    fallback: bool
    note: str = ""

    def apply(self, x: ArrayLike) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        return x.copy() if self.params is None else logistic4(x, *self.params)


def fit_logistic(x: ArrayLike, mos: ArrayLike) -> LogisticFit:
    """Fit the 4-parameter logistic of MOS on (clean) scores by least squares.

    Several starts (slope scale std(x) times 1, 1/4, 4; orientation from the rank
    correlation) and the lowest squared error wins. Any failure, non-finite parameters or a
    degenerate (constant) mapped output falls back to the identity, i.e. plain PLCC,
    and says why.
    """
    (a, b), _ = finite_pairs(x, mos)
    if a.size < MIN_LOGISTIC_PAIRS:
        return LogisticFit(
            None, True, f"logistic fit needs {MIN_LOGISTIC_PAIRS} pairs, have {a.size}"
        )
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return LogisticFit(None, True, "logistic fit impossible on constant input")
    hi, lo = float(b.max()), float(b.min())
    if srocc(a, b) < 0:
        hi, lo = lo, hi
    std = float(a.std())
    best: tuple[float, np.ndarray] | None = None
    last_error = ""
    for scale in (1.0, 0.25, 4.0):
        p0 = [hi, lo, float(np.median(a)), std * scale]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", OptimizeWarning)
                warnings.simplefilter("ignore", RuntimeWarning)
                params, _ = curve_fit(logistic4, a, b, p0=p0, maxfev=10_000)
        except (RuntimeError, ValueError, TypeError) as exc:
            last_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            continue
        if not np.all(np.isfinite(params)):
            continue
        sse = float(np.sum((logistic4(a, *params) - b) ** 2))
        if np.isfinite(sse) and (best is None or sse < best[0]):
            best = (sse, params)
    if best is None:
        return LogisticFit(
            None, True, f"logistic fit failed ({last_error or 'non-finite parameters'})"
        )
    b1, b2, b3, b4 = (float(p) for p in best[1])
    params = (b1, b2, b3, abs(b4))  # only |b4| enters the formula
    if np.ptp(logistic4(a, *params)) == 0:
        return LogisticFit(None, True, "logistic fit degenerate (constant output)")
    return LogisticFit(params, False)


def plcc_logistic(x: ArrayLike, mos: ArrayLike, fit: LogisticFit | None = None) -> float:
    """PLCC after the logistic mapping (fitted on x and mos unless `fit` is given)."""
    fit = fit_logistic(x, mos) if fit is None else fit
    return plcc(fit.apply(x), mos)


# ---------------------------------------------------------------------------------------
# bootstrap


def row_mean(terms: np.ndarray) -> np.ndarray:
    return terms.mean(axis=1)


def row_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of each row pair of two (B, n) arrays; NaN for rows with a constant side."""
    xc = x - x.mean(axis=1, keepdims=True)
    yc = y - y.mean(axis=1, keepdims=True)
    den = np.sqrt((xc * xc).sum(axis=1) * (yc * yc).sum(axis=1))
    degenerate = (np.ptp(x, axis=1) == 0) | (np.ptp(y, axis=1) == 0) | (den == 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (xc * yc).sum(axis=1) / den
    r[degenerate] = np.nan
    return np.clip(r, -1.0, 1.0)


def row_spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman rho per row: Pearson of average ranks, as scipy.stats.spearmanr computes it."""
    return row_pearson(st.rankdata(x, axis=1), st.rankdata(y, axis=1))


def rank_codes(x: ArrayLike) -> np.ndarray:
    """Dense codes 0..G-1 of x (equal values share one code), for `row_spearman_codes`."""
    return (
        np.unique(np.asarray(x, dtype=np.float64), return_inverse=True)[1]
        .ravel()
        .astype(np.float64)
    )


def _row_ranks_from_codes(codes: np.ndarray) -> np.ndarray:
    """Average ranks per row by counting: O(B*n) instead of a sort per row."""
    c = codes.astype(np.int64)
    b, _ = c.shape
    g = int(c.max()) + 1
    counts = np.bincount((np.arange(b)[:, None] * g + c).ravel(), minlength=b * g).reshape(b, g)
    # a value seen m times after `before` smaller values holds ranks before+1..before+m
    avg = np.cumsum(counts, axis=1) - counts + (counts + 1) / 2.0
    return np.take_along_axis(avg, c, axis=1)


def row_spearman_codes(x_codes: np.ndarray, y_codes: np.ndarray) -> np.ndarray:
    """`row_spearman` on rows of `rank_codes` values; same result, about 3x faster at 10k images."""
    return row_pearson(_row_ranks_from_codes(x_codes), _row_ranks_from_codes(y_codes))


class BootstrapCI(NamedTuple):
    low: float
    high: float
    n_used: int  # resamples with a finite statistic (e.g. not constant for correlations)


def cluster_codes(groups: Sequence[Any] | np.ndarray | None) -> np.ndarray | None:
    """Integer codes 0..G-1 of each image's group (its source photograph); None: no groups."""
    if groups is None:
        return None
    return np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)[1].ravel()


def _resample_rows(
    rng: np.random.Generator, n: int, b: int, clusters: np.ndarray | None
) -> list[np.ndarray]:
    """Index arrays of `b` bootstrap resamples of n images, grouped into equal-length blocks.

    With `clusters`, a two-stage cluster bootstrap: draw as many groups as there are, with
    replacement, then each drawn group's images with replacement within it. Why: images cut
    from one photograph are not independent, and resampling them as if they were gives
    intervals that are too narrow. Resamples differ in length when groups differ in size, so
    they come back as blocks of shape (k, L), one per length.
    """
    if clusters is None or int(clusters.max()) + 1 == n:  # singleton groups: plain bootstrap
        return [rng.integers(0, n, size=(b, n))]
    order = np.argsort(clusters, kind="stable")
    sizes = np.bincount(clusters)
    starts = np.cumsum(sizes) - sizes
    n_groups = sizes.size
    picks = rng.integers(0, n_groups, size=(b, n_groups))
    lengths = sizes[picks].sum(axis=1)
    slot = np.repeat(picks.ravel(), sizes[picks.ravel()])
    within = (rng.random(slot.size) * sizes[slot]).astype(np.int64)
    flat = order[starts[slot] + within]
    rows = np.split(flat, np.cumsum(lengths)[:-1])
    by_length: dict[int, list[np.ndarray]] = {}
    for row in rows:
        by_length.setdefault(row.size, []).append(row)
    return [np.stack(block) for _, block in sorted(by_length.items())]


def bootstrap_stats(
    row_stat: RowStat,
    *arrays: ArrayLike,
    n_boot: int = 1000,
    seed: int = 0,
    clusters: np.ndarray | None = None,
) -> np.ndarray:
    """The statistic on `n_boot` resamples of the images (or of their groups, `clusters`)."""
    if isinstance(n_boot, bool) or int(n_boot) != n_boot or n_boot < 0:
        raise ConfigError(f"n_boot must be a non-negative integer, got {n_boot!r}")
    arrs = [np.asarray(a, dtype=np.float64).ravel() for a in arrays]
    n = arrs[0].shape[0]
    if clusters is not None:
        if np.shape(clusters) != (n,):
            raise ConfigError(
                f"clusters must give one group per image ({n}), got {np.shape(clusters)}"
            )
        clusters = np.unique(clusters, return_inverse=True)[1].ravel()  # 0..G-1, none empty
    if n == 0 or n_boot == 0 or (clusters is not None and int(clusters.max()) < 1):
        return np.empty(0)  # with one photograph no interval over photographs exists
    rng = np.random.default_rng(seed)
    chunk = max(1, min(int(n_boot), _MAX_BOOT_ELEMS // n))
    stats: list[np.ndarray] = []
    for start in range(0, int(n_boot), chunk):
        for idx in _resample_rows(rng, n, min(chunk, int(n_boot) - start), clusters):
            stats.append(row_stat(*(a[idx] for a in arrs)))
    return np.concatenate(stats)


def bootstrap_ci(
    row_stat: RowStat,
    *arrays: ArrayLike,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    clusters: np.ndarray | None = None,
) -> BootstrapCI:
    """Percentile bootstrap interval of a statistic over images, or over their groups.

    `row_stat` maps arrays of shape (B, n) (B resamples of the n images, the same indices
    for every array) to B values; `row_mean`, `row_pearson`, `row_spearman` are such. The
    arrays must already be free of NaN (see `finite_pairs`). Resamples whose statistic is
    not finite (constant resample for a correlation) are left out and counted. `clusters`
    (`cluster_codes` of each image's source photograph) resamples photographs, then images
    within them; with fewer than two groups no interval over them exists (NaN).
    """
    if not (0.0 < level < 1.0):
        raise ConfigError(f"confidence level must lie in (0, 1), got {level}")
    nan = float("nan")
    stats = bootstrap_stats(row_stat, *arrays, n_boot=n_boot, seed=seed, clusters=clusters)
    good = stats[np.isfinite(stats)]
    if good.size == 0:
        return BootstrapCI(nan, nan, 0)
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(good, [tail, 100.0 - tail])
    return BootstrapCI(float(low), float(high), int(good.size))


# ---------------------------------------------------------------------------------------
# one cell


def _mean_finite(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else float("nan")


def _max_finite(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(values.max()) if values.size else float("nan")


def _correlations(
    prefix: str,
    q: np.ndarray,
    mos: np.ndarray,
    fit: LogisticFit,
    n_boot: int,
    seed: int,
    clusters: np.ndarray | None = None,
) -> tuple[dict[str, Any], str]:
    """SROCC/PLCC/logistic PLCC (with CIs) and KROCC of q vs MOS; also the reason if NaN.

    `clusters`: each image's group code, for intervals over source photographs."""
    out: dict[str, Any] = {}
    issue = correlation_issue(q, mos)
    keep = finite_mask(q, mos)
    a, b = np.asarray(q, dtype=np.float64)[keep], np.asarray(mos, dtype=np.float64)[keep]
    sub = _subset(clusters, keep)
    out[f"n_mos_{prefix}"] = int(a.size)
    mapped = fit.apply(a)
    for name, value, row_stat, args in (
        ("srocc", srocc(a, b), row_spearman_codes, (rank_codes(a), rank_codes(b))),
        ("plcc", plcc(a, b), row_pearson, (a, b)),
        ("plcc_logistic", plcc(mapped, b), row_pearson, (mapped, b)),
    ):
        ci = (
            bootstrap_ci(row_stat, *args, n_boot=n_boot, seed=seed, clusters=sub)
            if np.isfinite(value)
            else None
        )
        out[f"{name}_{prefix}"] = value
        out[f"{name}_{prefix}_low"] = ci.low if ci else float("nan")
        out[f"{name}_{prefix}_high"] = ci.high if ci else float("nan")
    out[f"krocc_{prefix}"] = krocc(a, b)
    return out, issue


GAIN_STATS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "abs_gain": abs_gain_terms,
    "rel_gain": rel_gain_terms,
    "robustness": robustness_terms,
}


def certified_gain(
    info: dict[str, Any], eps: float, norm: str, input_shape: Sequence[int] | None
) -> float:
    """Cap on the normalised gain of any perturbation in the ball: L * radius_L2 / range width.

    Needs a certified L2 Lipschitz bound (`extra.certified.lipschitz`, from a RobustBlock
    model's card) and a declared score range; an L_inf ball of radius eps in D = C*H*W
    dimensions lies in the L2 ball of radius eps * sqrt(D).
    """
    lipschitz = ((info.get("extra") or {}).get("certified") or {}).get("lipschitz")
    score_range = info.get("score_range")
    if not lipschitz or not score_range or not input_shape:
        return float("nan")
    radius = eps * math.sqrt(math.prod(input_shape)) if norm == "linf" else eps
    return float(lipschitz) * radius / (float(score_range[1]) - float(score_range[0]))


def adaptive_attack_note(extra: Mapping[str, Any]) -> str:
    """How gradient attacks reached a purified model (BPDA stand-in, EOT draws), or "".

    Why: a defense's gain means little without knowing whether the attacker saw through it;
    results stored before `attacker_backward` was recorded used the identity for BPDA.
    """
    parts = []
    if extra.get("bpda"):
        parts.append(f"BPDA through {extra.get('attacker_backward') or 'identity'}")
    if int(extra.get("eot_samples") or 1) > 1:
        parts.append(f"EOT over {int(extra['eot_samples'])} draws")
    if int(extra.get("min_side") or 0) > 0:  # a pyiqa metric that refuses small images
        parts.append(f"inputs upscaled to a short side of {int(extra['min_side'])}")
    return ", ".join(parts)


def _clean_statistics(
    q: np.ndarray,
    mos: np.ndarray,
    has_mos: bool,
    n_boot: int,
    seed: int,
    clusters: np.ndarray | None,
) -> tuple[LogisticFit, dict[str, Any], str]:
    """The logistic fit and clean correlations of (q, MOS), computed once per distinct input.

    Why: every cell of one model on one image set has the same clean scores, and these are
    half of a cell's scoring time (a logistic fit and three bootstraps); the result is a
    function of the inputs alone, so a repeat is looked up, not recomputed.
    """
    q64, mos64 = np.asarray(q, dtype=np.float64), np.asarray(mos, dtype=np.float64)
    codes = None if clusters is None else np.asarray(clusters, dtype=np.int64).tobytes()
    fit, corr, issue = _clean_statistics_of(
        q64.tobytes(), mos64.tobytes(), has_mos, n_boot, seed, codes
    )
    return fit, dict(corr), issue


@functools.lru_cache(maxsize=16)
def _clean_statistics_of(
    q: bytes, mos: bytes, has_mos: bool, n_boot: int, seed: int, codes: bytes | None
) -> tuple[LogisticFit, dict[str, Any], str]:
    qa, mosa = np.frombuffer(q), np.frombuffer(mos)
    clusters = None if codes is None else np.frombuffer(codes, dtype=np.int64)
    fit = fit_logistic(qa, mosa) if has_mos else LogisticFit(None, True, "no MOS")
    corr, issue = _correlations("clean", qa, mosa, fit, n_boot, seed, clusters)
    return fit, corr, issue


# How scores are put on [0, 1] before gains are taken: "range" by the model's declared score
# range (else min-max of its clean scores), "msu" as the MSU metrics robustness benchmark
# does (Antsiferova et al., AAAI 2024): min-max over the cell's clean scores, always.
UNITS = {"range": "score range", "msu": "MSU min-max"}


def check_units(units: str) -> str:
    if units not in UNITS:
        raise ConfigError(f"units must be one of {', '.join(UNITS)}, got {units!r}")
    return units


def summarize_cell(
    cell: CellResult, n_boot: int = 1000, seed: int = 0, units: str = "range"
) -> dict[str, Any]:
    """Every score of one cell as a flat dict (one row of the per-cell table).

    Gains are computed for status "done" only; "not_applicable"/"failed" cells keep NaN
    gains with their status and reason, but clean correlations are still computed from the
    clean scores when MOS is present (the model's accuracy is known even if the attack did
    not run). `notes` explains every NaN and every dropped image. `units`: see `UNITS`.
    """
    info = cell.model_info
    if "lower_better" not in info:
        raise ConfigError(f"cell {cell.key}: model_info lacks 'lower_better'; cannot orient scores")
    score_range = info.get("score_range") if check_units(units) == "range" else None
    qmap = quality_map(bool(info["lower_better"]), score_range, cell.clean)
    q = qmap(cell.clean)
    q_adv = qmap(cell.attacked)
    mos = np.asarray(cell.mos, dtype=np.float64)
    norm = str(cell.attack_config.get("norm", "linf"))
    clusters = cluster_codes(cell.group)
    notes: list[str] = []
    nan = float("nan")

    out: dict[str, Any] = {
        "model": cell.key.model,
        "dataset": cell.key.dataset,
        "attack": cell.key.attack,
        "eps": float(cell.key.eps),
        "eps_label": budget_label(cell.key.eps),
        "norm": norm,
        "direction": cell.key.direction,
        "status": cell.status,
        "reason": cell.reason,
        "gradient": cell.gradient,
        "source": info.get("source", ""),
        "kind": info.get("kind", ""),
        "params": info.get("params"),
        "n_images": len(cell),
        "units": units,
        # source photographs (groups) behind the images; intervals resample them when fewer
        "n_groups": int(np.unique(clusters).size) if clusters is not None else None,
        "ci_unit": interval_unit(clusters, len(cell)),
        "normalization": qmap.method,
        "adaptive": adaptive_attack_note(info.get("extra") or {}),
    }
    if qmap.method == "undefined":
        notes.append("no finite clean score and no declared range: scores cannot be normalised")
    elif qmap.method == "clean-constant":
        notes.append("clean scores constant: no range to normalise by, gains are in raw units")
    if qmap.method == "declared":
        finite_q = q[np.isfinite(q)]
        n_out = int(((finite_q < 0) | (finite_q > 1)).sum())
        if n_out:
            notes.append(f"{n_out} clean score(s) outside the declared range")
    n_clean_nan = int((~np.isfinite(q)).sum())
    if n_clean_nan and qmap.method != "undefined":
        notes.append(f"{n_clean_nan} non-finite clean score(s)")

    # gains
    applied = cell.status == "done"
    keep = finite_mask(q, q_adv)
    qa, qb, n_dropped = q[keep], q_adv[keep], int(keep.size - keep.sum())
    pair_clusters = _subset(clusters, keep)
    out["n_pairs"] = int(qa.size) if applied else 0
    out["n_dropped"] = n_dropped if applied else 0
    for name, term_fn in GAIN_STATS.items():
        value = low = high = nan
        if applied and qa.size:
            terms = term_fn(qa, qb)
            finite = np.isfinite(terms)
            finite_terms = terms[finite]
            if finite_terms.size < terms.size:
                notes.append(f"{name}: {terms.size - finite_terms.size} non-finite term(s) dropped")
            value = _finite_mean(finite_terms)
            low, high, _ = bootstrap_ci(
                row_mean,
                finite_terms,
                n_boot=n_boot,
                seed=seed,
                clusters=_subset(pair_clusters, finite),
            )
        out[name], out[f"{name}_low"], out[f"{name}_high"] = value, low, high
    out["wasserstein"] = wasserstein_score(qa, qb) if applied else nan
    out["energy"] = energy_score(qa, qb) if applied else nan
    if applied:
        if qa.size == 0:
            notes.append("no image with finite clean and attacked scores: gains undefined")
        elif n_dropped:
            notes.append(f"{n_dropped} image(s) with a non-finite clean or attacked score dropped")

    # correlations with MOS
    has_mos = bool(np.isfinite(mos).any())
    fit, clean_corr, clean_issue = _clean_statistics(q, mos, has_mos, n_boot, seed, clusters)
    out.update(clean_corr)
    if not has_mos:
        notes.append("no MOS: correlations undefined")
    elif clean_issue:
        notes.append(f"clean correlations undefined: {clean_issue}")
    elif fit.fallback:
        notes.append(f"{fit.note}; logistic PLCC = plain PLCC")
    adv_source = q_adv if applied else np.full_like(q, np.nan)
    adv_corr, adv_issue = _correlations("attacked", adv_source, mos, fit, n_boot, seed, clusters)
    out.update(adv_corr)
    if applied and has_mos and adv_issue and not clean_issue:
        notes.append(f"attacked correlations undefined: {adv_issue}")
    out["logistic_fallback"] = fit.fallback
    out["logistic_params"] = fit.params

    # perturbation size and cost
    out["certified_gain"] = certified_gain(info, cell.key.eps, norm, cell.meta.get("input_shape"))
    # a smoothed model's certificate (benchmark.report.certified) replaces the Lipschitz cap
    smoothing = (info.get("extra") or {}).get("smoothing") or {}
    cert = certified_scores(
        getattr(cell, "certified", None),
        str(smoothing.get("method", "")),
        q,
        q_adv,
        qmap,
        cell.key.direction,
        applied,
    )
    if not cert["certified_by"] and np.isfinite(out["certified_gain"]):
        cert["certified_by"] = "lipschitz"
    out.update(cert)
    out["mean_linf"] = _mean_finite(cell.linf)
    out["max_linf"] = _max_finite(cell.linf)
    out["mean_l2"] = _mean_finite(cell.l2)
    out["mean_psnr"] = _mean_finite(cell.psnr)
    out["mean_ssim"] = _mean_finite(cell.ssim)
    out["seconds"] = (
        float(np.nansum(np.asarray(cell.seconds, dtype=np.float64))) if len(cell) else 0.0
    )
    if out["ci_unit"] == "photograph" and out["n_groups"] < 2:
        notes.append("one source photograph: no interval over photographs")
    out["notes"] = "; ".join(notes)
    return out


def interval_unit(clusters: np.ndarray | None, n_images: int) -> str:
    """What the intervals resample: "photograph" when images share source photographs."""
    if clusters is None or np.unique(clusters).size >= n_images:
        return "image"
    return "photograph"


def paired_difference(
    a: CellResult, b: CellResult, n_boot: int = 2000, seed: int = 0
) -> tuple[float, tuple[float, float], float, int]:
    """Mean over shared images of (gain_a - gain_b), its 95% bootstrap CI and two-sided p.

    The bootstrap resamples source photographs (then images) when `a` records them."""
    qa = quality_map(bool(a.model_info["lower_better"]), a.model_info.get("score_range"), a.clean)
    qb = quality_map(bool(b.model_info["lower_better"]), b.model_info.get("score_range"), b.clean)
    ga = dict(zip(a.image_id, qa(a.attacked) - qa(a.clean), strict=True))
    gb = dict(zip(b.image_id, qb(b.attacked) - qb(b.clean), strict=True))
    shared = [i for i in ga if i in gb and np.isfinite(ga[i]) and np.isfinite(gb[i])]
    nan = float("nan")
    if not shared:
        return nan, (nan, nan), nan, 0
    d = np.array([ga[i] - gb[i] for i in shared])
    group_of = None if a.group is None else dict(zip(a.image_id, a.group, strict=True))
    clusters = None if group_of is None else cluster_codes([group_of[i] for i in shared])
    means = bootstrap_stats(row_mean, d, n_boot=n_boot, seed=seed, clusters=clusters)
    if means.size == 0:
        return float(d.mean()), (nan, nan), nan, int(d.size)
    low, high = np.percentile(means, [2.5, 97.5])
    p = min(1.0, 2 * min(float((means <= 0).mean()), float((means >= 0).mean())))
    return float(d.mean()), (float(low), float(high)), p, int(d.size)
