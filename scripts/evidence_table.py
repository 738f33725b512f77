"""Print evidence tables from results files, with inference timings measured now.

The committed tables in docs/evidence/ come from scripts/evidence_docs.py (no timings).

    python scripts/evidence_table.py results/evidence.h5 [more.h5 ...] [--timing-images 8]
        [--family BASE]

Every number comes from the stored cells (the same scoring as the leaderboard: worst-case
absolute gain over the attacks run, bootstrap CIs, robustness score, certified cap) except
two costs that are not results of an attack: training minutes, read from each model's card,
and inference time per image, measured here in one process as the median of repeats and
printed as a ratio to the model's base (the model a defense or conversion wraps).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import pandas as pd
import torch

from benchmark.report.evidence import (
    base_of,
    md_ci,
    md_num,
    split_correlations,
    spread_gains,
    training_minutes,
)


def test_split_correlations(name: str) -> dict[str, Any]:
    """SROCC/PLCC with CIs on the whole builtin test split: the card's numbers where the model
    has a card (they were measured on its shipped file), else measured now."""
    from benchmark.datasets.registry import create_dataset
    from benchmark.models.registry import create_model
    from benchmark.report.evaluation import evaluate_model

    return split_correlations(name, {}) or evaluate_model(
        create_model(name), create_dataset("builtin", "test")
    )


def inference_ms(names: list[str], n_images: int, repeats: int = 3) -> dict[str, float]:
    """Median ms per image of clean scoring on the builtin test split, one process."""
    from benchmark.datasets.registry import create_dataset
    from benchmark.models.registry import create_model

    ds = create_dataset("builtin", "test")
    batch = next(iter(ds.batches(n_images, sample=n_images)))
    out = {}
    for name in names:
        model = create_model(name)
        times = []
        with torch.inference_mode():
            model.quality(batch.images[:1], batch.refs[:1] if batch.refs is not None else None)
            for _ in range(repeats):
                t0 = time.perf_counter()
                model.quality(batch.images, batch.refs)
                times.append(time.perf_counter() - t0)
        out[name] = 1000 * statistics.median(times) / len(batch.ids)
    return out


def main(argv: list[str] | None = None) -> int:
    from benchmark.report.leaderboard import build_tables
    from benchmark.store.hdf5 import read_results

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("results", nargs="+", help="results .h5 files")
    p.add_argument("--timing-images", type=int, default=8, help="0 skips the timing")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--direction", default="up")
    p.add_argument(
        "--family",
        help="only this base model and what wraps it (its defenses, its robust- version)",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # comparable ratios on a shared machine

    stored = read_results(args.results)
    tables = build_tables(stored, n_boot=args.bootstrap)
    per_sd = spread_gains(stored)
    rows = tables.rows[tables.rows["direction"] == args.direction]
    if rows.empty:
        print("no stored cell for that direction", file=sys.stderr)
        return 1
    models = list(dict.fromkeys(rows.sort_values("model")["model"]))
    if args.family:
        models = [m for m in models if base_of(m) == args.family]
        if not models:
            print(f"no stored model of the {args.family!r} family", file=sys.stderr)
            return 1
        rows = rows[rows["model"].isin(models)]
    order = sorted(models, key=lambda m: (base_of(m), m != base_of(m), m))
    ms = inference_ms(order, args.timing_images) if args.timing_images > 0 else {}
    corr = {m: test_split_correlations(m) for m in order}

    for (norm, eps_label), group in rows.groupby(["norm", "eps_label"], sort=True):
        n = int(group["n_images"].max())
        print(f"\n### {norm} eps {eps_label} ({n} images, direction {args.direction})\n")
        print("Test SROCC/PLCC: the whole builtin test split (628 images, pseudo-MOS).\n")
        print(
            "| model | source | params | test SROCC [95% CI] | test PLCC | worst-case gain "
            "[95% CI] | worst attack | gain / sd(clean) | robustness R | certified cap | train min "
            "| ms/img (x base) |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        g = group.set_index("model")
        for m in order:
            if m not in g.index:
                continue
            r = g.loc[m]
            base = base_of(m)
            ratio = ""
            if m in ms and base in ms and m != base:
                ratio = f" (x{ms[m] / ms[base]:.2f})"
            t = training_minutes(m)
            c = corr[m]
            print(
                f"| {m} | {r['source']} | {int(r['params']) if pd.notna(r['params']) else '-'} "
                f"| {md_ci(c['srocc'], *c['srocc_ci'])} | {md_num(c['plcc'])} "
                f"| {md_ci(r['abs_gain'], r['abs_gain_low'], r['abs_gain_high'])} "
                f"| {r['worst_attack'] or r['reason']} "
                f"| {md_num(per_sd.get((m, r['worst_attack'], float(r['eps']), args.direction)), 2)} "
                f"| {md_num(r['robustness'], 2)} "
                f"| {md_num(r['certified_gain'], 2)} | {md_num(t, 1)} "
                f"| {md_num(ms.get(m), 1)}{ratio} |"
            )

    cells = tables.cells[tables.cells["direction"] == args.direction]
    cells = cells[cells["model"].isin(order)]
    for (norm, eps_label), group in cells.groupby(["norm", "eps_label"], sort=True):
        print(f"\n### absolute gain per attack, {norm} eps {eps_label}\n")
        mat = group.pivot_table(index="model", columns="attack", values="abs_gain", aggfunc="first")
        mat = mat.reindex([m for m in order if m in mat.index])
        print("| model | " + " | ".join(mat.columns) + " |")
        print("|---|" + "---|" * len(mat.columns))
        for m, vals in mat.iterrows():
            print(f"| {m} | " + " | ".join(md_num(v) for v in vals) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
