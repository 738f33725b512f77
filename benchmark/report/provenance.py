"""The page's provenance table: what every cell recorded about its run, with counts."""

from __future__ import annotations

import datetime as _dt
import json
import platform
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from benchmark import __version__
from benchmark.report.tables import LeaderboardTables
from benchmark.store.cell import Cell

# Meta fields that differ from cell to cell by nature: shown in the all-cells table, not in
# the provenance summary.
PER_CELL_META = frozenset({"wall_s", "skipped_images"})


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value


def provenance(cells: Sequence[Cell], tables: LeaderboardTables) -> list[tuple[str, str]]:
    """(field, values) pairs: every `cell.meta` field with its distinct values and counts."""
    counters: dict[str, Counter[str]] = {}
    for cell in cells:
        flat: dict[str, Any] = {}
        _flatten("", {k: v for k, v in cell.meta.items() if k not in PER_CELL_META}, flat)
        flat["dataset"] = cell.key.dataset
        if "seed" in cell.attack_config:
            flat["attack seed"] = cell.attack_config["seed"]
        for k, v in flat.items():
            text = v if isinstance(v, str) else json.dumps(v, default=str, sort_keys=True)
            text = text if len(text) <= 300 else text[:297] + "..."
            counters.setdefault(k, Counter())[text] += 1
    items: list[tuple[str, str]] = []
    for key in sorted(counters):
        counter = counters[key]
        if len(counter) == 1:
            items.append((key, next(iter(counter))))
        else:
            items.append((key, "; ".join(f"{v} ({n} cells)" for v, n in sorted(counter.items()))))
    import matplotlib
    import scipy

    items += [
        ("report generated", _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")),
        (
            "report software",
            f"benchmark {__version__}, python {platform.python_version()}, "
            f"numpy {np.__version__}, scipy {scipy.__version__}, pandas {pd.__version__}, "
            f"matplotlib {matplotlib.__version__}",
        ),
        (
            "bootstrap",
            f"{tables.n_boot} resamples of images, seed {tables.seed}, percentile 95% CI",
        ),
    ]
    return items
