"""Clean accuracy of a model on a dataset: SROCC/PLCC with bootstrap CIs, per distortion.

Why its own module: training writes these numbers onto zoo cards and `python -m benchmark
evaluate` prints them for any registered model, so both must compute them the same way
(with `benchmark.report.scores`, scipy-based, fixed bootstrap seed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from benchmark.attacks.utils import seeded_rng
from benchmark.datasets.base import IQADataset
from benchmark.errors import ConfigError, DataError, NonFiniteScore
from benchmark.report.scores import (
    bootstrap_ci,
    cluster_codes,
    finite_mask,
    interval_unit,
    plcc,
    plcc_logistic,
    row_pearson,
    row_spearman,
    srocc,
)


@dataclass
class Predictions:
    ids: list[str]
    scores: np.ndarray  # (n,) float64
    mos: np.ndarray  # (n,) float64, NaN where unknown
    groups: list[str] | None  # distortion type per image, where the dataset knows it
    photos: list[str] | None = None  # source photograph per image (the dataset's `group`)


def distortion_of(dataset: IQADataset, image_id: str) -> str | None:
    """The distortion type of one image, for datasets that record it (builtin)."""
    row = getattr(dataset, "row", None)
    if row is None:
        return None
    return getattr(row(image_id), "distortion", None)


@torch.no_grad()
def predict(
    model: nn.Module,
    dataset: IQADataset,
    *,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    limit: int | None = None,
    progress: bool = False,
    desc: str = "evaluate",
) -> Predictions:
    """Score every image of `dataset` with `model` (eval mode; restored afterwards).

    An `IQAModel` is read in quality-up orientation (`quality`), so a lower-is-better
    metric that works gets a positive SROCC, as the leaderboard shows it.
    """
    from benchmark.models.base import IQAModel

    fn = model.quality if isinstance(model, IQAModel) else model
    modes = [(m, m.training) for m in model.modules()]  # restored exactly, child by child
    model.eval()
    ids: list[str] = []
    scores: list[np.ndarray] = []
    mos: list[np.ndarray] = []
    total = len(dataset) if limit is None else min(limit, len(dataset))
    bar = tqdm(total=total, desc=desc, unit="img", disable=not progress, leave=False)
    try:
        for batch in dataset.batches(batch_size, limit=limit):
            out = fn(batch.images.to(device)).reshape(len(batch.ids), -1).mean(dim=1)
            ids += batch.ids
            scores.append(out.double().cpu().numpy())
            mos.append(batch.mos.numpy())
            bar.update(len(batch.ids))
    finally:
        bar.close()
        for m, mode in modes:
            m.training = mode
    if not ids:
        raise DataError(f"dataset {dataset.name!r} yielded no images to evaluate")
    all_scores = np.concatenate(scores)
    if not np.all(np.isfinite(all_scores)):
        bad = int((~np.isfinite(all_scores)).sum())
        raise NonFiniteScore(f"{bad} of {len(ids)} scores on {dataset.name!r} are NaN or inf")
    groups = [distortion_of(dataset, i) for i in ids]
    return Predictions(
        ids,
        all_scores,
        np.concatenate(mos),
        None if any(g is None for g in groups) else [str(g) for g in groups],
        [dataset.group(i) for i in ids],
    )


def _r(x: float) -> float:
    return round(float(x), 4) if math.isfinite(x) else float("nan")


def correlation_report(
    scores: Sequence[float] | np.ndarray,
    mos: Sequence[float] | np.ndarray,
    groups: Sequence[str] | None = None,
    *,
    photos: Sequence[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """SROCC, PLCC (linear and after the 4-parameter logistic) with 95% bootstrap CIs.

    `groups` (e.g. distortion types) adds SROCC per group; the pristine group `none`
    is skipped because its MOS is constant by construction. `photos` (each image's source
    photograph) makes the intervals resample photographs, then images within them.
    """
    keep = finite_mask(np.asarray(scores, dtype=np.float64), np.asarray(mos, dtype=np.float64))
    s = np.asarray(scores, dtype=np.float64)[keep]
    m = np.asarray(mos, dtype=np.float64)[keep]
    if s.size < 3:
        raise DataError(f"need at least 3 images with a MOS to correlate, have {s.size}")
    if photos is not None and len(photos) != keep.size:
        raise ConfigError(f"{len(photos)} photograph labels for {keep.size} scores")
    clusters = None if photos is None else cluster_codes(np.asarray(photos, dtype=object)[keep])
    ci_s = bootstrap_ci(row_spearman, s, m, n_boot=n_boot, seed=seed, clusters=clusters)
    ci_p = bootstrap_ci(row_pearson, s, m, n_boot=n_boot, seed=seed, clusters=clusters)
    report: dict[str, Any] = {
        "n": int(s.size),
        "n_photos": None if clusters is None else int(np.unique(clusters).size),
        "ci_unit": interval_unit(clusters, int(s.size)),
        "srocc": _r(srocc(s, m)),
        "srocc_ci": [_r(ci_s.low), _r(ci_s.high)],
        "plcc": _r(plcc(s, m)),
        "plcc_ci": [_r(ci_p.low), _r(ci_p.high)],
        "plcc_logistic": _r(plcc_logistic(s, m)),
        "bootstrap": {"n_boot": int(n_boot), "seed": int(seed), "level": 0.95},
    }
    if groups is not None:
        g = np.asarray(list(groups), dtype=object)
        sc, mo = np.asarray(scores, dtype=np.float64), np.asarray(mos, dtype=np.float64)
        if g.shape[0] != sc.shape[0]:
            raise ConfigError(f"{g.shape[0]} group labels for {sc.shape[0]} scores")
        per = {}
        for name in sorted(set(g.tolist()) - {"none"}):
            sel = g == name
            per[name] = _r(srocc(sc[sel], mo[sel]))
        report["srocc_per_distortion"] = per
    return report


def evaluate_model(
    model: nn.Module,
    dataset: IQADataset,
    *,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    limit: int | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    # A stochastic model (random resize-and-pad) draws from the global RNG: seeding it here
    # makes `evaluate` and the cards reproducible without touching the caller's stream.
    with seeded_rng(seed, torch.device(device)):
        preds = predict(
            model, dataset, batch_size=batch_size, device=device, limit=limit, progress=progress
        )
    report = correlation_report(
        preds.scores, preds.mos, preds.groups, photos=preds.photos, n_boot=n_boot, seed=seed
    )
    report["dataset"] = dataset.name
    report["split"] = dataset.info.split
    return report


def photos_text(report: dict[str, Any]) -> str:
    """ ", 4 photographs (intervals over them)" where the intervals resample photographs."""
    if report.get("ci_unit") != "photograph":
        return ""
    return f", {report['n_photos']} photographs (intervals over them)"


def format_report(name: str, report: dict[str, Any]) -> str:
    lines = [
        f"{name} on {report.get('dataset', '?')}/{report.get('split', '?')} (n={report['n']}"
        f"{photos_text(report)}):"
        f" SROCC {report['srocc']:.4f} [{report['srocc_ci'][0]:.4f}, {report['srocc_ci'][1]:.4f}]"
        f"  PLCC {report['plcc']:.4f} [{report['plcc_ci'][0]:.4f}, {report['plcc_ci'][1]:.4f}]"
        f"  PLCC(logistic) {report['plcc_logistic']:.4f}"
    ]
    per = report.get("srocc_per_distortion")
    if per:
        lines.append("  SROCC per distortion: " + ", ".join(f"{k} {v:.2f}" for k, v in per.items()))
    return "\n".join(lines)
