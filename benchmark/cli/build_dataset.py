"""`build-dataset builtin`: generate the built-in dataset into the cache now."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> None:
    bd = sub.add_parser("build-dataset", help="generate the built-in dataset into the cache now")
    bd.add_argument("name", choices=["builtin"])
    bd.add_argument("--force", action="store_true", help="rebuild even when cached")


def run(args: argparse.Namespace) -> int:
    from benchmark.datasets.builtin import build_builtin

    path = build_builtin(force=args.force)
    print(f"built-in dataset ready at {path}")
    return 0
