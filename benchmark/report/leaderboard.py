"""The leaderboard's public names, one import for the CLI and scripts.

Each stage lives in its own module: `tables` (ranking rules), `formatting`, `plots`,
`provenance`, `export` (CSV/JSON), `html` (the page, from templates/leaderboard.html.j2)
and `terminal`.
"""

from __future__ import annotations

from benchmark.report.export import export_tables
from benchmark.report.formatting import fmt_ci, fmt_num, fmt_params, printable, threat_label
from benchmark.report.html import COLUMN_DEFINITIONS, attack_matrices, render_html
from benchmark.report.plots import extra_plots, tradeoff_png
from benchmark.report.provenance import provenance
from benchmark.report.tables import (
    FAILING_ITERATIONS_NOTE,
    GROUP_KEYS,
    NO_GRADIENT_REASON,
    LeaderboardTables,
    build_tables,
    summarize_cells,
)
from benchmark.report.terminal import terminal_table

__all__ = [
    "COLUMN_DEFINITIONS",
    "FAILING_ITERATIONS_NOTE",
    "GROUP_KEYS",
    "NO_GRADIENT_REASON",
    "LeaderboardTables",
    "attack_matrices",
    "build_tables",
    "export_tables",
    "extra_plots",
    "fmt_ci",
    "fmt_num",
    "fmt_params",
    "printable",
    "provenance",
    "render_html",
    "summarize_cells",
    "terminal_table",
    "threat_label",
    "tradeoff_png",
]
