"""`list models|attacks|datasets`: every registry entry and whether it is usable here."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> None:
    ls = sub.add_parser(
        "list", help="list models, attacks or datasets and whether they are usable here"
    )
    ls.add_argument("what", choices=["models", "attacks", "datasets"])
    ls.add_argument("--usable", action="store_true", help="only entries usable here")
    ls.add_argument(
        "--artifacts",
        action="store_true",
        help="with attacks: list cached trained-attack artifacts",
    )


def run(args: argparse.Namespace) -> int:
    rows: list[tuple[str, ...]]
    if args.what == "models":
        from benchmark.models.registry import list_models

        header = ("name", "source", "base", "kind", "lower_better", "usable", "why")
        rows = [
            (
                s.name,
                s.source,
                s.base or "-",
                s.kind,
                str(s.lower_better).lower(),
                "yes" if s.usable else "no",
                s.reason,
            )
            for s in list_models()
            if s.usable or not args.usable
        ]
    elif args.what == "attacks" and args.artifacts:
        from benchmark.attacks.artifacts import list_artifacts
        from benchmark.paths import cache_dir

        header = ("attack", "model", "key", "size", "train_s", "train_images", "created", "status")
        rows = [
            (r.attack, r.model, r.digest, f"{r.size_bytes / 1e6:.1f} MB",
             "-" if r.train_seconds is None else f"{r.train_seconds:.0f}",
             str(r.train_images or "-"), r.created, r.problem or "ok")
            for r in list_artifacts(cache_dir() / "artifacts")
        ]  # fmt: skip
    elif args.what == "attacks":
        from benchmark.attacks.registry import list_attacks

        header = (
            "name",
            "family",
            "norm",
            "eps",
            "gradient_free",
            "trainable",
            "usable",
            "description",
        )
        rows = []
        for card in list_attacks():
            problem = card.problem()
            if problem and args.usable:
                continue
            rows.append(
                (
                    card.name,
                    card.info.family,
                    card.info.norm,
                    card.eps_label,
                    str(card.info.gradient_free).lower(),
                    str(card.info.trainable).lower(),
                    "no" if problem else "yes",
                    problem or card.info.description,
                )
            )
    else:
        from benchmark.datasets.registry import list_datasets

        header = ("name", "layout", "splits", "mos_range", "usable", "why")
        rows = [
            (
                s.name,
                s.info.layout,
                ",".join(s.splits) or "all",
                "-"
                if s.info.mos_range is None
                else f"{s.info.mos_range[0]:g}-{s.info.mos_range[1]:g}",
                "yes" if s.usable else "no",
                s.reason,
            )
            for s in list_datasets()
            if s.usable or not args.usable
        ]
    print(_format_rows(header, rows))
    return 0


def _format_rows(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    widths[-1] = len(header[-1])  # the last column is free text: no padding
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)
