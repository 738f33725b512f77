"""CSV and JSON copies of the leaderboard tables, for analysis outside the page."""

from __future__ import annotations

from pathlib import Path

from benchmark.paths import atomic_write
from benchmark.report.tables import LeaderboardTables


def export_tables(tables: LeaderboardTables, html_path: Path) -> list[Path]:
    """CSV and JSON of the ranking rows and per-cell scores beside the HTML file."""
    stem = html_path.with_suffix("")
    html_path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for name, frame in (("ranking", tables.rows), ("cells", tables.cells)):
        frame = frame.drop(columns=["logistic_params"], errors="ignore")
        path = Path(f"{stem}.{name}.csv")
        atomic_write(path, lambda tmp, frame=frame: frame.to_csv(tmp, index=False))
        written.append(path)
        path = Path(f"{stem}.{name}.json")
        atomic_write(
            path,
            lambda tmp, frame=frame: frame.to_json(
                tmp, orient="records", indent=1, default_handler=str
            ),
        )
        written.append(path)
    return written
