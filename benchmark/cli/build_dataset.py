"""`build-dataset NAME`: generate a built-in dataset (`builtin`, `builtin-photos`) into the cache now."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    bd = sub.add_parser(
        "build-dataset",
        help="generate a built-in dataset (builtin, builtin-photos) into the cache now",
    )
    bd.add_argument("name", help="a dataset card of layout builtin, e.g. builtin or builtin-photos")
    bd.add_argument("--force", action="store_true", help="rebuild even when cached")
    bd.add_argument(
        "--debs",
        metavar="DIR",
        help="folder holding the downloaded .deb files a dataset's photographs come from "
        "(default: $BENCHMARK_DEBS, else <cache>/debs)",
    )


def run(args: argparse.Namespace) -> int:
    from benchmark.datasets.registry import load_card
    from benchmark.errors import ConfigError

    card = load_card(args.name)
    if card.layout != "builtin":
        raise ConfigError(
            f"dataset {card.name!r} has layout {card.layout!r}; build-dataset generates "
            "builtin-layout datasets only (others are downloaded: see its card)"
        )
    cache = None if card.root is None else str(Path(card.root).expanduser())
    if card.photos:
        from benchmark.datasets.debian import build_photos

        path = build_photos(card, cache, debs=args.debs, force=args.force)
    else:
        from benchmark.datasets.builtin import build_builtin

        if args.debs is not None:
            raise ConfigError(f"dataset {card.name!r} takes no Debian packages; drop --debs")
        path = build_builtin(cache_dir=cache, force=args.force)
    manifest = json.loads((path / "manifest.json").read_text())
    print(f"dataset {card.name} ready at {path}")
    print(
        f"hash {manifest['hash']}, {manifest['images']} images "
        + ", ".join(f"{k} {v}" for k, v in manifest["splits"].items())
        + f"; built in {manifest['build_seconds']} s"
    )
    return 0
