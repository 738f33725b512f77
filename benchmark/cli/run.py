"""`run`: attack models on a dataset, store every cell, render the leaderboard."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from benchmark.cli.options import (
    add_batch_size_option,
    add_model_options,
    parse_eps,
    resolve_models,
)
from benchmark.errors import ConfigError

log = logging.getLogger("benchmark")

DEFAULT_RESULTS = Path("results") / "benchmark.h5"


def add_parser(sub: Any) -> None:
    r = sub.add_parser("run", help="attack models on a dataset and store the results")
    add_model_options(r)
    r.add_argument(
        "--attacks", required=True, help="comma list of attack presets (see `list attacks`)"
    )
    r.add_argument(
        "--dataset", default="builtin", help="dataset card name or folder:PATH (default: builtin)"
    )
    r.add_argument("--split", default=None, help="dataset split (default: test where there is one)")
    r.add_argument("--data-root", default=None, help="where the dataset lives (overrides the card)")
    r.add_argument(
        "--eps",
        default=None,
        help="comma list of L_inf budgets like 4/255,8/255 (default: each card's)",
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


def make_executor(name: str, address: str | None) -> Any:
    from benchmark.run.executors import LocalExecutor, RayExecutor

    if name == "ray":
        return RayExecutor(address)
    if name != "local":
        raise ConfigError(f"--executor must be local or ray, got {name!r}")
    return LocalExecutor()


def run(args: argparse.Namespace) -> int:
    from benchmark.attacks.registry import parse_overrides
    from benchmark.models.registry import resolve_model_names
    from benchmark.report.leaderboard import build_tables, render_html, terminal_table
    from benchmark.run.batching import parse_batch_size
    from benchmark.run.runner import RunConfig, resolve_attacks
    from benchmark.run.runner import run as run_cells
    from benchmark.store.hdf5 import ResultStore

    models = resolve_models(args.models, args.exclude)
    cfg = RunConfig(
        models=models,
        attacks=resolve_attacks(args.attacks),
        dataset=args.dataset,
        split=args.split,
        eps=parse_eps(args.eps),
        directions=("up", "down") if args.direction == "both" else (args.direction,),
        limit=args.limit,
        sample=args.sample,
        seed=args.seed,
        device=args.device,
        batch_size=parse_batch_size(args.batch_size),
        params=parse_overrides(args.param),
        data_root=args.data_root,
        attack_source=resolve_model_names(args.attack_source)[0] if args.attack_source else None,
    )
    log.info("models: %s", ", ".join(models))
    store = ResultStore(args.out)
    report = run_cells(
        cfg,
        store,
        progress=not args.quiet,
        force=args.force,
        executor=make_executor(args.executor, args.ray_address),
    )
    cells = store.read_cells()
    html = Path(args.html) if args.html else store.path.with_name("leaderboard.html")
    tables = build_tables(cells)
    render_html(cells, html, tables=tables)
    print(terminal_table(cells, tables=tables))
    print(
        f"\n{len(report.computed)} cell(s) computed, {len(report.skipped)} already stored"
        f"{' (nothing recomputed)' if not report.computed and report.skipped else ''}, "
        f"{len(report.failed)} failed, in {report.wall_s:.1f} s"
    )
    for name, why in report.unavailable.items():
        print(f"unavailable: {name}: {why}")
    print(f"results: {store.path}\nleaderboard: {html}")
    return 1 if report.failed or report.unavailable else 0
