"""`evaluate`: SROCC/PLCC (with bootstrap CIs) of models against a dataset's MOS."""

from __future__ import annotations

import argparse
import json
from typing import Any

from benchmark.cli.options import add_model_options
from benchmark.errors import ConfigError


def add_parser(subparsers: Any) -> None:
    e = subparsers.add_parser(
        "evaluate", help="SROCC/PLCC (with bootstrap CIs) of models against a dataset's MOS"
    )
    add_model_options(e)
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


def run(args: argparse.Namespace) -> int:
    from benchmark.datasets.registry import create_dataset
    from benchmark.models.registry import create_model, select_models
    from benchmark.report.evaluation import evaluate_model, format_report

    names = select_models(args.models, args.exclude)
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
