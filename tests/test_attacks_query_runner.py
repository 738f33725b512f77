"""Score-based attacks through the whole run: queries and pixels changed are stored per image
(as optional arrays beside the old ones), an L0 cell is labelled in pixels, and a model
without input gradient (PIQE) is ranked by these attacks, NR and FR, up and down."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from benchmark.cli import main
from benchmark.report.tables import build_tables
from benchmark.store.cell import PER_IMAGE_FIELDS
from benchmark.store.hdf5 import ResultStore


@pytest.fixture()
def stored(tmp_path: Path, make_kadid) -> Path:
    data = make_kadid(tmp_path / "kadid")
    out = tmp_path / "r.h5"

    def argv(attacks: str) -> list[str]:
        return ["-q", "run", "--models", "piqe,ssim", "--attacks", attacks,
                "--dataset", "kadid10k", "--data-root", str(data), "--split", "all",
                "--direction", "both", "--param", "queries=60", "--out", str(out),
                "--html", str(tmp_path / "lb.html")]  # fmt: skip

    assert main(argv("nes,patch-rs,ifgsm")) == 2  # ifgsm takes no `queries`: refused up front
    assert not out.exists()
    assert main(argv("nes,patch-rs")) == 0
    return out


@pytest.mark.slow
def test_queries_and_pixels_are_stored_and_piqe_is_ranked(stored: Path):
    cells = {
        (c.key.model, c.key.attack, c.key.direction): c for c in ResultStore(stored).read_cells()
    }
    assert len(cells) == 8  # 2 models x 2 attacks x 2 directions
    for (model, attack, _), cell in cells.items():
        assert cell.status == "done", cell.reason
        assert cell.queries is not None and cell.l0 is not None
        expected = 1 + 51 if attack == "nes" else 60  # nes: 1 step of 2 x 25 samples + 1
        assert np.array_equal(cell.queries, np.full(len(cell), expected)), (model, attack)
        if attack == "patch-rs":
            assert cell.key.eps_label == "64px" and cell.attack_config["norm"] == "l0"
            assert (cell.l0 <= 64).all()
        else:
            assert (cell.linf <= 8 / 255 + 1e-6).all()
    assert cells[("piqe", "nes", "up")].gradient == "none"
    with h5py.File(stored) as fh:  # the optional arrays sit beside the old ones, by name
        names: list[str] = []
        fh.visit(lambda n: names.append(n) if n.endswith("/queries") else None)
        assert len(names) == 8
        for name in names:
            parent = fh[name.rsplit("/", 1)[0]]
            assert set(PER_IMAGE_FIELDS) <= set(parent) and "l0" in parent

    # a model without gradient is ranked by the black-box attacks, per threat model and direction
    tables = build_tables(ResultStore(stored).read_cells(), n_boot=50)
    ranked = tables.ranked
    piqe = ranked[ranked["model"] == "piqe"]
    assert set(piqe["norm"]) == {"linf", "l0"} and set(piqe["direction"]) == {"up", "down"}
    assert "gradient-free attacks only" in piqe["note"].iloc[0]
    up = piqe[piqe["direction"] == "up"]["abs_gain"]
    down = piqe[piqe["direction"] == "down"]["abs_gain"]
    assert (up > 0).all() and (down < 0).all()  # moved the requested way
    assert tables.not_ranked.empty
