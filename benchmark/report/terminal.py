"""The CLI's plain-text leaderboard: one line per model per threat model, then failures."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from benchmark.report.formatting import (
    fmt_ci,
    fmt_images,
    fmt_num,
    fmt_rank,
    printable,
    threat_label,
)
from benchmark.report.scores import UNITS
from benchmark.report.tables import LeaderboardTables, build_tables
from benchmark.store.cell import Cell


def terminal_table(
    cells: Sequence[Cell],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    tables: LeaderboardTables | None = None,
) -> str:
    """Plain-text summary for the CLI: one line per model per threat model, then failures."""
    tables = tables if tables is not None else build_tables(cells, n_boot=n_boot, seed=seed)
    if tables.rows.empty:
        return "no results"
    head = ["dataset", "threat", "dir", "rank", "model", "SROCC"]
    tail_head = ["worst attack", f"abs gain [95% CI] ({UNITS[tables.units]})", "R", "images"]
    lines: list[tuple[list[str], list[str] | str]] = []
    for _, r in pd.concat([tables.ranked, tables.not_ranked], ignore_index=True).iterrows():
        common = [
            printable(r["dataset"], 20),
            threat_label(r["norm"], r["eps_label"]),
            str(r["direction"]),
            fmt_rank(r["rank"], r.get("tied_with")) if r["ranked"] else "-",
            printable(r["model"], 32),
            fmt_num(r["srocc_clean"]),
        ]
        if r["ranked"]:
            tail: list[str] | str = [
                printable(r["worst_attack"], 20),
                fmt_ci(r["abs_gain"], r["abs_gain_low"], r["abs_gain_high"], 4),
                fmt_num(r["robustness"], 2),
                fmt_images(r["n_images"], r.get("n_groups"), r.get("ci_unit")),
            ]
        else:  # free text that may run past the gain columns
            tail = f"not ranked: {printable(r['reason'], 90)}"
        lines.append((common, tail))
    head_w = [max(len(h), *(len(c[i]) for c, _ in lines)) for i, h in enumerate(head)]
    tails = [t for _, t in lines if isinstance(t, list)]
    tail_w = [max([len(h)] + [len(t[i]) for t in tails]) for i, h in enumerate(tail_head)]

    def join(cols: Sequence[str], widths: Sequence[int]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))

    out = [
        (join(head, head_w) + "  " + join(tail_head, tail_w)).rstrip(),
        "-" * (sum(head_w) + sum(tail_w) + 2 * (len(head_w) + len(tail_w) - 1)),
    ]
    for common, tail in lines:
        rest = join(tail, tail_w) if isinstance(tail, list) else tail
        out.append((join(common, head_w) + "  " + rest).rstrip())
    failed = tables.failed
    if len(failed):
        out.append(f"{len(failed)} failed cell(s):")
        for _, r in failed.iterrows():
            out.append(
                f"  {printable(r['model'], 32)} | {printable(r['dataset'], 20)}"
                f" | {printable(r['attack'], 20)} @ {threat_label(r['norm'], r['eps_label'])}"
                f" {r['direction']}: {printable(r['outcome_reason'], 100)}"
            )
    return "\n".join(out)
