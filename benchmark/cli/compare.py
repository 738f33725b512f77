"""`compare`: a defense against its baseline on the standard suite, paired image by image."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from benchmark.budget import parse_budgets
from benchmark.cli.options import add_batch_size_option
from benchmark.errors import ConfigError
from benchmark.report.compare import STANDARD_ATTACKS, build_report, terminal_report, write_html


def add_parser(sub: Any) -> None:
    c = sub.add_parser("compare", help="compare a defense with its baseline on the standard suite")
    c.add_argument(
        "--defense",
        required=True,
        help="file.py:Class, module:attr, a registered name or <purifier>+<base>",
    )
    c.add_argument(
        "--baseline", default=None, help="baseline model (default: the defense's `base`)"
    )
    c.add_argument(
        "--attacks",
        default=None,
        help=f"comma list (default: those of {','.join(STANDARD_ATTACKS)} registered)",
    )
    c.add_argument("--eps", default="4/255,8/255")
    c.add_argument("--dataset", default="builtin")
    c.add_argument("--split", default=None)
    c.add_argument("--data-root", default=None)
    c.add_argument("--limit", type=int, default=64)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--device", default="cpu")
    add_batch_size_option(c)
    c.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    c.add_argument(
        "--leaderboard", nargs="*", default=[], help="results files to place the defense in"
    )
    c.add_argument("-o", "--out", default="results/compare", help="folder for results and report")


def run(args: argparse.Namespace) -> int:
    from benchmark.attacks.registry import attack_registry, parse_overrides
    from benchmark.engine.batching import parse_batch_size
    from benchmark.engine.runner import RunConfig, resolve_attacks
    from benchmark.engine.runner import run as run_cells
    from benchmark.models.registry import create_model, resolve_model_names
    from benchmark.store.hdf5 import ResultStore, read_results

    (defense,) = resolve_model_names(args.defense)
    baseline = args.baseline or create_model(defense).info.base
    if not baseline:
        raise ConfigError(f"{defense} declares no `base`: give --baseline <model>")
    (baseline,) = resolve_model_names(baseline)
    if args.attacks:
        attacks = resolve_attacks(args.attacks)
    else:
        attacks = tuple(a for a in STANDARD_ATTACKS if a in attack_registry())
    cfg = RunConfig(
        models=(defense, baseline), attacks=attacks, dataset=args.dataset, split=args.split,
        eps=parse_budgets(args.eps), limit=args.limit, seed=args.seed, device=args.device,
        batch_size=parse_batch_size(args.batch_size), params=parse_overrides(args.param),
        data_root=args.data_root,
    )  # fmt: skip
    out = Path(args.out)
    store = ResultStore(out / "compare.h5")
    run_cells(cfg, store, progress=not args.quiet)
    keys = {(m, a) for m in cfg.models for a in attacks}
    cells = [
        c
        for c in store.read_cells()
        if (c.key.model, c.key.attack) in keys and c.key.dataset == cfg.dataset
    ]
    context = read_results(args.leaderboard) if args.leaderboard else None
    report = build_report(cells, defense, baseline, context)
    html = write_html(report, out / "report.html")
    print(terminal_report(report))
    print(f"report: {html}")
    return 0
