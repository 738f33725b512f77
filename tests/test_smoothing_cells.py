"""A smoothed model's cells: the run stores each image's certificate at the cell's L2 radius
(optional arrays, read back eagerly and lazily), the summary puts the certified worst-case gain
beside the empirical one, abstentions are recorded as such, and the leaderboard flags a gain
above the certified bound as a bug."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from benchmark.datasets.builtin import BuiltinDataset
from benchmark.engine.cells import plan_cells, run_group
from benchmark.engine.config import RunConfig
from benchmark.report.tables import build_tables, cell_summary
from benchmark.store.cell import CERTIFIED_FIELDS, CellKey, CellResult
from benchmark.store.hdf5 import ResultStore

EPS = 4 / 255


def test_a_run_stores_certificates_and_the_summary_reads_them(tiny_root: Path, tmp_path) -> None:
    models = ("rs0.5n8+cnniqa-builtin", "ms0.25n4+cnniqa-builtin")
    cfg = RunConfig(models=models, attacks=("ifgsm",), eps=(EPS,), limit=2, batch_size=2,
                    params={"steps": 1})  # fmt: skip
    store = ResultStore(tmp_path / "r.h5")
    test = BuiltinDataset(tiny_root, "test")
    with store.writer():  # as the runner writes them
        for model in models:
            todo = [c for c in plan_cells(cfg) if c[0].model == model]
            run_group(cfg, model, todo, lambda cell, h: store.write_cell(
                cell, h, summary=cell_summary(cell, n_boot=20)), progress=False, dataset=test)  # fmt: skip
    cells = {c.key.model: c for c in store.read_cells()}
    assert all(c.status == "done" for c in cells.values()) and len(cells) == 2
    lazy = {c.key.model: c for c in store.read_stored()}

    rs = cells[models[0]]
    assert set(rs.certified) == set(CERTIFIED_FIELDS)
    for name in CERTIFIED_FIELDS:  # read lazily, the same arrays
        np.testing.assert_array_equal(lazy[models[0]].certified[name], rs.certified[name])
    d = 3 * rs.meta["input_shape"][1] * rs.meta["input_shape"][2]
    np.testing.assert_allclose(rs.certified["radius"], EPS * math.sqrt(d))
    assert (rs.certified["n_samples"] == 8).all() and not rs.certified["abstain"].any()
    # the interval holds the smoothed clean score; at L2 radius eps it is narrower
    c = rs.certified
    assert (c["lower"] <= rs.clean).all() and (rs.clean <= c["upper"]).all()
    assert (c["upper_l2eps"] - c["lower_l2eps"] < c["upper"] - c["lower"]).all()
    s = rs.summary
    assert s["certified_by"] == "rs" and s["certified_abstain_rate"] == 0
    assert s["certified_gain"] == np.max(c["upper"] - rs.clean)  # range [0, 1]
    assert s["certified_gain"] >= s["empirical_max_gain"] and s["certified_escapes"] == 0
    assert "EOT over 8 draws" in s["adaptive"]

    ms = cells[models[1]]  # 4 samples cannot bound a median at r/sigma ~ 1.7: abstain
    assert ms.certified["abstain"].all() and np.isnan(ms.certified["upper"]).all()
    assert np.isfinite(ms.clean).all()  # the smoothed score itself is still measured
    assert np.isnan(ms.summary["certified_gain"]) and ms.summary["certified_abstain_rate"] == 1

    tables = build_tables(list(cells.values()), n_boot=20)
    notes = dict(zip(tables.rows["model"], tables.rows["note"], strict=True))
    assert "certificate abstained on every image" in notes[models[1]]
    assert "BUG" not in notes[models[0]]


def _cell(attacked: list[float], upper: list[float], model: str = "rs0.25+m") -> CellResult:
    n = len(attacked)
    clean = np.full(n, 0.5)
    nan = np.full(n, np.nan)
    cert = {
        "lower": clean - 0.2,
        "upper": np.asarray(upper, dtype=float),
        "lower_l2eps": clean - 0.1,
        "upper_l2eps": clean + 0.1,
        "radius": np.full(n, 1.7),
        "n_samples": np.full(n, 100.0),
        "abstain": np.zeros(n),
    }
    return CellResult(
        key=CellKey(model, "d", "ifgsm", EPS),
        status="done",
        image_id=np.array([f"i{k}" for k in range(n)], dtype=object),
        mos=np.linspace(1, 5, n),
        clean=clean,
        attacked=np.asarray(attacked, dtype=float),
        linf=np.full(n, EPS),
        l2=nan,
        psnr=nan,
        ssim=nan,
        seconds=np.ones(n),
        model_info={
            "name": model,
            "kind": "NR",
            "lower_better": False,
            "score_range": [0, 1],
            "source": "defense",
            "extra": {"smoothing": {"method": "rs"}},
        },  # fmt: skip
        attack_config={"name": "ifgsm", "norm": "linf", "gradient_free": False},
        certified=cert,
    )


def test_the_leaderboard_flags_a_gain_above_the_certified_bound() -> None:
    honest = _cell([0.6, 0.62, 0.55, 0.7], [0.7, 0.7, 0.7, 0.75], "rs0.25+honest")
    broken = _cell([0.6, 0.62, 0.55, 0.8], [0.7, 0.7, 0.7, 0.75], "rs0.25+broken")
    tables = build_tables([honest, broken], n_boot=20)
    rows = tables.rows.set_index("model")
    assert rows.loc["rs0.25+broken", "note"].startswith("BUG: ifgsm exceeds the certified bound")
    assert "1 image(s) beyond their certified interval" in rows.loc["rs0.25+broken", "note"]
    assert "BUG" not in rows.loc["rs0.25+honest", "note"]
    assert rows.loc["rs0.25+honest", "certified_gain"] == 0.25  # max(upper - clean)
    per_cell = tables.cells.set_index("model")
    assert per_cell.loc["rs0.25+honest", "certified_by"] == "rs"
    assert per_cell.loc["rs0.25+broken", "certified_escapes"] == 1


def test_cells_without_a_certificate_keep_their_summary() -> None:
    plain = _cell([0.6, 0.62], [0.7, 0.7], "plain")
    plain.certified = None
    plain.model_info = {**plain.model_info, "extra": {}}
    summary = build_tables([plain], n_boot=20).cells.iloc[0]
    assert summary["certified_by"] == "" and np.isnan(summary["certified_gain"])
    assert summary["certified_escapes"] == 0


def test_an_abstention_over_the_ball_leaves_the_bound_at_l2_radius_eps() -> None:
    """Median smoothing typically abstains at the L2 radius of an L_inf ball yet certifies
    the (much smaller) L2 radius eps: each radius abstains on its own bounds."""
    cell = _cell([0.6, 0.62], [np.nan, np.nan], "ms0.25+m")
    cell.certified["lower"][:] = np.nan
    cell.certified["abstain"][:] = 1.0
    summary = build_tables([cell], n_boot=20).cells.iloc[0]
    assert np.isnan(summary["certified_gain"]) and summary["certified_abstain_rate"] == 1
    assert summary["certified_gain_l2eps"] == pytest.approx(0.1)  # upper_l2eps - clean
    assert summary["certified_escapes"] == 0  # nothing certified, nothing to escape
