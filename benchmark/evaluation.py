"""Clean accuracy of a model on a dataset: SROCC/PLCC with bootstrap CIs, per distortion.

Why its own module: training writes these numbers onto zoo cards and `python -m benchmark
evaluate` prints them for any registered model, so both must compute them the same way
(with `benchmark.scores`, scipy-based, fixed bootstrap seed).
"""

from __future__ import annotations

import argparse
import json
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
from benchmark.scores import (
    bootstrap_ci,
    finite_pairs,
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
    )


def _r(x: float) -> float:
    return round(float(x), 4) if math.isfinite(x) else float("nan")


def correlation_report(
    scores: Sequence[float] | np.ndarray,
    mos: Sequence[float] | np.ndarray,
    groups: Sequence[str] | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """SROCC, PLCC (linear and after the 4-parameter logistic) with 95% bootstrap CIs.

    `groups` (e.g. distortion types) adds SROCC per group; the pristine group `none`
    is skipped because its MOS is constant by construction.
    """
    (s, m), _ = finite_pairs(
        np.asarray(scores, dtype=np.float64), np.asarray(mos, dtype=np.float64)
    )
    if s.size < 3:
        raise DataError(f"need at least 3 images with a MOS to correlate, have {s.size}")
    ci_s = bootstrap_ci(row_spearman, s, m, n_boot=n_boot, seed=seed)
    ci_p = bootstrap_ci(row_pearson, s, m, n_boot=n_boot, seed=seed)
    report: dict[str, Any] = {
        "n": int(s.size),
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
    report = correlation_report(preds.scores, preds.mos, preds.groups, n_boot=n_boot, seed=seed)
    report["dataset"] = dataset.name
    report["split"] = dataset.info.split
    return report


def format_report(name: str, report: dict[str, Any]) -> str:
    lines = [
        f"{name} on {report.get('dataset', '?')}/{report.get('split', '?')} (n={report['n']}):"
        f" SROCC {report['srocc']:.4f} [{report['srocc_ci'][0]:.4f}, {report['srocc_ci'][1]:.4f}]"
        f"  PLCC {report['plcc']:.4f} [{report['plcc_ci'][0]:.4f}, {report['plcc_ci'][1]:.4f}]"
        f"  PLCC(logistic) {report['plcc_logistic']:.4f}"
    ]
    per = report.get("srocc_per_distortion")
    if per:
        lines.append("  SROCC per distortion: " + ", ".join(f"{k} {v:.2f}" for k, v in per.items()))
    return "\n".join(lines)


def add_evaluate_parser(subparsers: Any) -> None:
    e = subparsers.add_parser(
        "evaluate", help="SROCC/PLCC (with bootstrap CIs) of models against a dataset's MOS"
    )
    e.add_argument("--models", required=True, help="comma list of model names (see `list models`)")
    e.add_argument("--dataset", default="builtin", help="dataset card name (default: builtin)")
    e.add_argument("--split", default=None, help="dataset split (default: test where there is one)")
    e.add_argument("--data-root", default=None, help="where the dataset lives (overrides the card)")
    e.add_argument("--limit", type=int, default=None, help="only the first N images")
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    e.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for CIs")
    e.add_argument(
        "--seed", type=int, default=0, help="bootstrap seed; also seeds a stochastic model's draws"
    )
    e.add_argument("--json", default=None, metavar="FILE", help="also write the reports as JSON")
    e.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from benchmark.datasets.registry import create_dataset
    from benchmark.models.registry import create_model

    names = [n.strip() for n in args.models.split(",") if n.strip()]
    if not names:
        raise ConfigError("--models is empty")
    if args.limit is not None and args.limit < 3:
        raise ConfigError(f"--limit must be at least 3 to correlate, got {args.limit}")
    dataset = create_dataset(args.dataset, args.split, args.data_root)
    if dataset.info.mos_range is None:
        raise ConfigError(f"dataset {dataset.name!r} has no MOS: nothing to correlate with")
    quiet = bool(getattr(args, "quiet", False))
    reports = {}
    for name in names:
        model = create_model(name, device=args.device)
        reports[name] = evaluate_model(
            model,
            dataset,
            batch_size=args.batch_size,
            device=args.device,
            limit=args.limit,
            n_boot=args.bootstrap,
            seed=args.seed,
            progress=not quiet,
        )
        print(format_report(name, reports[name]), flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(reports, fh, indent=2)
    return 0
