"""`leaderboard`: render the leaderboard from stored results alone."""

from __future__ import annotations

import argparse
from typing import Any

from benchmark.errors import ConfigError


def add_parser(sub: Any) -> None:
    lb = sub.add_parser("leaderboard", help="render the leaderboard from stored results alone")
    lb.add_argument("results", nargs="+", help="results .h5 files")
    lb.add_argument("-o", "--out", default="results/leaderboard.html")
    lb.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for CIs")
    lb.add_argument(
        "--units",
        choices=["range", "msu"],
        default="range",
        help="normalise scores by the model's score range (default) or, as the MSU benchmark "
        "does, by min-max of each cell's clean scores",
    )


def run(args: argparse.Namespace) -> int:
    from benchmark.report.leaderboard import build_tables, render_html, terminal_table
    from benchmark.store.hdf5 import read_results

    cells = read_results(args.results, lazy=True)  # arrays read only where a view needs them
    if not cells:
        raise ConfigError(f"no stored cell in {', '.join(args.results)}")
    tables = build_tables(cells, n_boot=args.bootstrap, units=args.units)
    out = render_html(cells, args.out, tables=tables)
    print(terminal_table(cells, tables=tables))
    print(f"leaderboard: {out}")
    return 0
