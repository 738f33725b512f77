"""`run`: attack models on a dataset, store every cell, render the leaderboard."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from benchmark.api import DEFAULT_RESULTS
from benchmark.cli.options import add_batch_size_option, add_model_options


def add_parser(sub: Any) -> None:
    r = sub.add_parser("run", help="attack models on a dataset and store the results")
    add_model_options(r)
    r.add_argument(
        "--attacks",
        required=True,
        help="comma list of attack presets (see `list attacks`) or sets: msu (the MSU benchmark's nine)",
    )
    r.add_argument(
        "--dataset", default="builtin", help="dataset card name or folder:PATH (default: builtin)"
    )
    r.add_argument("--split", default=None, help="dataset split (default: test where there is one)")
    r.add_argument("--data-root", default=None, help="where the dataset lives (overrides the card)")
    r.add_argument(
        "--eps",
        default=None,
        help="comma list of budgets like 4/255,8/255, or pixels like 10px for L0 attacks "
        "(default: each card's)",
    )
    r.add_argument(
        "--direction",
        default="up",
        choices=["up", "down", "both"],
        help="inflate (up) or deflate (down) the quality",
    )
    r.add_argument("--limit", type=int, default=None, help="attack only the first N images")
    r.add_argument(
        "--sample",
        type=int,
        default=None,
        help="attack N images evenly spaced over the split (all photographs and distortions)",
    )
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    add_batch_size_option(r)
    r.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override an attack parameter (repeatable)",
    )
    r.add_argument(
        "--out", default=str(DEFAULT_RESULTS), help=f"results file (default {DEFAULT_RESULTS})"
    )
    r.add_argument(
        "--html", default=None, help="leaderboard file (default: leaderboard.html beside --out)"
    )
    r.add_argument("--force", action="store_true", help="recompute cells even when stored")
    r.add_argument(
        "--attack-source",
        default=None,
        help="transfer: craft attacks on this model, score them on every --models target",
    )
    r.add_argument("--executor", default="local", choices=["local", "ray"], help="where cells run")
    r.add_argument(
        "--ray-address", default=None, help="Ray cluster address (default: start a local one)"
    )


def run(args: argparse.Namespace) -> int:
    from benchmark.api import run as run_benchmark
    from benchmark.report.leaderboard import terminal_table

    html = Path(args.html) if args.html else Path(args.out).with_name("leaderboard.html")
    result = run_benchmark(
        models=args.models,
        exclude=args.exclude,
        attacks=args.attacks,
        dataset=args.dataset,
        split=args.split,
        data_root=args.data_root,
        eps=args.eps,
        direction=args.direction,
        limit=args.limit,
        sample=args.sample,
        seed=args.seed,
        device=args.device,
        batch_size=args.batch_size,
        params=args.param,
        out=args.out,
        html=html,
        force=args.force,
        attack_source=args.attack_source,
        executor=args.executor,
        ray_address=args.ray_address,
        progress=not args.quiet,
    )
    report = result.report
    print(terminal_table(result.cells, tables=result.tables()))
    print(
        f"\n{len(report.computed)} cell(s) computed, {len(report.skipped)} already stored"
        f"{' (nothing recomputed)' if not report.computed and report.skipped else ''}, "
        f"{len(report.failed)} failed, in {report.wall_s:.1f} s"
    )
    for name, why in report.unavailable.items():
        print(f"unavailable: {name}: {why}")
    print(f"results: {result.path}\nleaderboard: {result.html}")
    return 0 if result.ok else 1
