"""A results file written before the house move (tests/data/premove, made by the code of
b94c2f7) still reads, renders the same leaderboard, and its cells keep their config hashes.

Its exports (CSV, JSON) are the old code's and must match column for column; the terminal
table and the page are snapshots of today's rendering (they gained the interval ties `~`
and an images column since)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from benchmark.cli import main
from benchmark.report.certified import EMPTY as CERTIFICATE_COLUMNS
from benchmark.report.leaderboard import build_tables, render_html, terminal_table
from benchmark.store.hdf5 import read_results

DATA = Path(__file__).parent / "data" / "premove"
# export columns added since premove.h5 was written (its exports beside it are the old code's)
ADDED = {
    "ranking": {"n_groups", "ci_unit", "tied_with", "units"},
    "cells": {"n_groups", "ci_unit", "units", *CERTIFICATE_COLUMNS},
}
# the command that wrote premove.h5 (its leaderboard and exports are beside it)
COMMAND = [
    "run", "--models", "cnniqa-builtin,robust-cnniqa-builtin,jpeg50+cnniqa-builtin,ssim,at-cnniqa-builtin",
    "--attacks", "fgsm,uap", "--limit", "4",
]  # fmt: skip


def normalised_html(text: str) -> str:
    """The page without what changes with each rendering: embedded plots and the clock; and
    with the sort arrows the old page lost (a Python octal escape ate the CSS `\\25B2`)."""
    text = text.replace("\x15B2", "\\25B2").replace("\x15BC", "\\25BC")
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "data:image/png;base64,PNG", text)
    return re.sub(r"(<th>report generated</th><td>)[^<]*", r"\1TIME", text)


@pytest.mark.parametrize("lazy", [False, True], ids=["arrays", "headers"])
def test_old_results_file_renders_the_same_leaderboard(tmp_path: Path, lazy: bool) -> None:
    """Format 1 (no index, no summaries) read whole or as lazy headers, as `leaderboard` does."""
    cells = read_results([str(DATA / "premove.h5")], lazy=lazy)
    assert len(cells) == 10
    tables = build_tables(cells)
    assert terminal_table(cells, tables=tables) + "\n" == (DATA / "terminal.txt").read_text()
    html = render_html(cells, tmp_path / "leaderboard.html", tables=tables)
    for name in ("ranking", "cells"):
        # the exports of the code that wrote the file, column for column; later columns
        # (intervals' unit and photographs, ties) are additions, checked for what they say
        for read in (pd.read_csv, pd.read_json):
            ext = "csv" if read is pd.read_csv else "json"
            want, got = (read(d / f"leaderboard.{name}.{ext}") for d in (DATA, tmp_path))
            assert set(got.columns) - set(want.columns) <= ADDED[name], f"{name}.{ext}"
            pd.testing.assert_frame_equal(got[want.columns], want, obj=f"{name}.{ext}")
            assert (got["ci_unit"] == "image").all()  # no photographs recorded in format 1
    want = normalised_html((DATA / "leaderboard.html").read_text())
    assert normalised_html(Path(html).read_text()) == want


@pytest.mark.usefixtures("one_thread")
def test_old_results_file_cells_are_not_recomputed(tmp_path: Path, capsys) -> None:
    out = tmp_path / "premove.h5"
    shutil.copy(DATA / "premove.h5", out)
    before = out.read_bytes()
    rc = main([*COMMAND, "--out", str(out), "--html", str(tmp_path / "lb.html"), "-q"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "0 cell(s) computed, 10 already stored (nothing recomputed)" in printed
    assert out.read_bytes() == before
