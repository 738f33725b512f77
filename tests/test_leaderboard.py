"""Leaderboard v1: ranking rules, the not-ranked section, HTML safety, terminal table."""

from __future__ import annotations

import base64
import importlib.resources
import math
import re
import sys
import tomllib
import zlib
from fnmatch import fnmatch
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest

from benchmark.errors import StoreError
from benchmark.report.leaderboard import (
    NO_GRADIENT_REASON,
    build_tables,
    render_html,
    terminal_table,
)
from benchmark.store.cell import CellKey, CellResult

N = 40
EVIL = "<script>alert(1)</script>"
NB = 100  # bootstrap resamples: enough to exercise the code, fast


def make_cell(
    model: str,
    attack: str,
    gain: float,
    *,
    eps: float = 8 / 255,
    direction: str = "up",
    status: str = "done",
    gradient: str = "ok",
    reason: str = "",
    dataset: str = "koniq",
    attack_config: dict | None = None,
    n: int = N,
) -> CellResult:
    """Scores in 0..100 (declared range): attacked = clean + 100 * gain, so G_abs == gain."""
    rng = np.random.default_rng(zlib.crc32(f"{model}|{dataset}".encode()))
    mos = rng.uniform(1, 5, n)
    clean = 20 * mos + rng.normal(0, 4, n)
    attacked = clean + 100 * gain if status == "done" else np.full(n, np.nan)
    dist = np.full(n, 0.01 if status == "done" else np.nan)
    return CellResult(
        key=CellKey(model, dataset, attack, eps, direction),
        status=status,
        image_id=np.array([f"img{i:03d}" for i in range(n)]),
        mos=mos,
        clean=clean,
        attacked=attacked,
        linf=dist,
        l2=dist,
        psnr=np.full(n, 40.0),
        ssim=np.full(n, 0.99),
        seconds=np.full(n, 0.1),
        model_info={
            "name": model,
            "kind": "NR",
            "lower_better": False,
            "score_range": [0.0, 100.0],
            "source": "pyiqa",
            "params": 1_500_000,
        },
        attack_config=attack_config or {"name": attack, "norm": "linf", "eps": eps, "seed": 0},
        gradient=gradient,
        reason=reason,
        meta={
            "git": "deadbeef42",
            "versions": {"torch": "2.14.1"},
            "seed": 0,
            "date": "2025-01-02",
        },
    )


def standard_cells() -> list[CellResult]:
    return [
        make_cell("fragile", "pgd", 0.20),
        make_cell("fragile", "fgsm", 0.05),
        make_cell("sturdy", "pgd", 0.01),
        make_cell("sturdy", "fgsm", 0.03),  # worst attack of sturdy is fgsm
        make_cell("middling", "pgd", 0.08),
        make_cell("middling", "fgsm", 0.0, status="failed", reason="CUDA out of memory"),
        make_cell(
            "piqe", "pgd", 0.0, status="not_applicable", gradient="none", reason="no gradient"
        ),
        make_cell(
            "piqe", "fgsm", 0.0, status="not_applicable", gradient="none", reason="no gradient"
        ),
        make_cell(EVIL, "pgd", 0.10),
    ]


def test_ranking_by_worst_case_gain():
    t = build_tables(standard_cells(), n_boot=NB)
    ranked = t.ranked
    assert ranked["model"].tolist() == ["sturdy", "middling", EVIL, "fragile"]
    assert ranked["rank"].tolist() == [1, 2, 3, 4]
    sturdy = ranked.iloc[0]
    assert sturdy["worst_attack"] == "fgsm" and sturdy["abs_gain"] == pytest.approx(0.03)
    assert sturdy["abs_gain_low"] <= 0.03 <= sturdy["abs_gain_high"]
    assert (sturdy["n_attacks_run"], sturdy["n_not_applicable"], sturdy["n_failed"]) == (2, 0, 0)
    assert sturdy["gradient"] == "ok" and sturdy["source"] == "pyiqa"
    assert 0.8 < sturdy["srocc_clean"] <= 1.0
    middling = ranked.iloc[1]
    assert middling["n_failed"] == 1 and "failed" in middling["note"]
    fragile = ranked.iloc[3]
    assert fragile["worst_attack"] == "pgd" and fragile["abs_gain"] == pytest.approx(0.2)


def test_gradient_none_model_is_not_ranked_and_never_gain_zero():
    cells = standard_cells() + [
        # a gradient attack stored as "done" on a gradient-less model must not rank it either
        make_cell("entropy", "pgd", 0.0, gradient="none"),
    ]
    t = build_tables(cells, n_boot=NB)
    assert "piqe" not in set(t.ranked["model"]) and "entropy" not in set(t.ranked["model"])
    nr = t.not_ranked.set_index("model")
    for name in ("piqe", "entropy"):
        assert nr.loc[name, "reason"] == NO_GRADIENT_REASON
        assert math.isnan(nr.loc[name, "abs_gain"])
        assert 0.8 < nr.loc[name, "srocc_clean"] <= 1.0  # clean accuracy still shown
    assert nr.loc["piqe", "n_not_applicable"] == 2


def test_gradient_none_model_ranked_on_gradient_free_attack():
    cells = [
        make_cell("piqe", "pgd", 0.0, status="not_applicable", gradient="none"),
        make_cell("piqe", "square", 0.04, gradient="none"),
        make_cell("other", "pgd", 0.02, gradient="none",
                  attack_config={"name": "pgd", "norm": "linf", "gradient_free": True}),
        make_cell("cnn", "pgd", 0.06),
    ]  # fmt: skip
    ranked = build_tables(cells, n_boot=NB).ranked.set_index("model")
    assert ranked.loc["piqe", "worst_attack"] == "square"
    assert ranked.loc["piqe", "abs_gain"] == pytest.approx(0.04)
    assert "gradient-free attacks only" in ranked.loc["piqe", "note"]
    assert ranked.loc["other", "rank"] == 1 and ranked.loc["cnn", "rank"] == 3


def test_threat_models_and_directions_are_ranked_separately():
    cells = [
        make_cell("a", "pgd", 0.10),
        make_cell("b", "pgd", 0.05),
        make_cell("a", "pgd", 0.01, eps=4 / 255),
        make_cell("b", "pgd", 0.03, eps=4 / 255),
        # deflation: the most negative gain is the worst case
        make_cell("a", "pgd", -0.02, direction="down"),
        make_cell("a", "fgsm", -0.09, direction="down"),
        make_cell("b", "pgd", -0.04, direction="down"),
    ]
    t = build_tables(cells, n_boot=NB)
    groups = {(k[2], k[3]): g for k, g in t.threat_groups()}
    assert set(groups) == {(4 / 255, "up"), (8 / 255, "up"), (8 / 255, "down")}
    assert groups[(8 / 255, "up")]["model"].tolist() == ["b", "a"]
    assert groups[(4 / 255, "up")]["model"].tolist() == ["a", "b"]
    down = groups[(8 / 255, "down")].set_index("model")
    assert down.loc["a", "worst_attack"] == "fgsm" and down.loc["a", "abs_gain"] == pytest.approx(
        -0.09
    )
    assert down.loc["b", "rank"] == 1 and down.loc["a", "rank"] == 2


def test_failed_cells_listed_with_reason_and_all_failed_model_not_ranked():
    cells = standard_cells() + [
        make_cell("broken", "pgd", 0.0, status="failed", reason="weights missing")
    ]
    t = build_tables(cells, n_boot=NB)
    failed = t.failed.set_index("model")
    assert failed.loc["broken", "outcome_reason"] == "weights missing"
    assert failed.loc["middling", "outcome_reason"] == "CUDA out of memory"
    nr = t.not_ranked.set_index("model")
    assert nr.loc["broken", "reason"] == "all attacks failed"


def test_duplicate_cells_rejected_and_empty_input():
    with pytest.raises(StoreError, match="duplicate"):
        build_tables([make_cell("a", "pgd", 0.1), make_cell("a", "pgd", 0.1)], n_boot=NB)
    t = build_tables([], n_boot=NB)
    assert t.rows.empty and t.ranked.empty and t.not_ranked.empty and t.threat_groups() == []
    assert terminal_table([]) == "no results"


def test_html_is_self_contained_escaped_and_embeds_plot(tmp_path):
    pyplot_before = "matplotlib.pyplot" in sys.modules
    backend_before = dict.__getitem__(matplotlib.rcParams, "backend")
    out = render_html(
        standard_cells(), tmp_path / "lb" / "index.html", title=f"T {EVIL}", n_boot=NB
    )
    html = out.read_text(encoding="utf-8")
    # the only script is the page's own sorter; user strings never become markup
    assert EVIL not in html and html.lower().count("<script") == 1
    assert "Per-attack matrix" in html and 'class="sortable"' in html
    for export in ("index.ranking.csv", "index.cells.json"):
        assert (tmp_path / "lb" / export).stat().st_size > 0
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert not re.search(r"https?://", html)
    assert not re.search(r"<link|@import|url\(|<iframe", html, re.I)
    srcs = re.findall(r'src="([^"]*)"', html)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    png = base64.b64decode(srcs[0].split(",", 1)[1])
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
    # tables, sections, definitions, provenance
    expected = ["sturdy", "fragile", "middling", "piqe", NO_GRADIENT_REASON, "CUDA out of memory"]
    expected += ["deadbeef42", "2.14.1", "2025-01-02", "koniq", "Linf 8/255", "G_abs = mean"]
    for text in expected:
        assert text in html, text
    assert not list(tmp_path.glob("lb/.*tmp"))  # atomic write leaves no temp file
    # rendering used no pyplot and left the backend alone
    assert ("matplotlib.pyplot" in sys.modules) == pyplot_before
    assert dict.__getitem__(matplotlib.rcParams, "backend") == backend_before


def test_html_renders_without_ranked_models(tmp_path):
    cells = [make_cell("piqe", "pgd", 0.0, status="not_applicable", gradient="none")]
    html = render_html(cells, tmp_path / "x.html", n_boot=NB).read_text()
    assert "No ranked model." in html and "data:image/png;base64," in html


def test_templates_ship_with_the_package_and_render_from_any_directory(tmp_path, monkeypatch):
    """The page comes from template files: they must be package data (a wheel without them
    renders nothing) and be found through the package, not the working directory."""
    templates = importlib.resources.files("benchmark.report") / "templates"
    names = sorted(f.name for f in templates.iterdir() if f.name.endswith(".j2"))
    assert {"leaderboard.html.j2", "table.html.j2", "compare.html.j2"} <= set(names)
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    shipped = pyproject["tool"]["setuptools"]["package-data"]["benchmark"]
    for name in names:
        assert any(fnmatch(f"report/templates/{name}", p) for p in shipped), name
    monkeypatch.chdir(tmp_path)
    html = render_html(standard_cells()[:4], "out.html", n_boot=NB).read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and html.count('<table class="sortable">') >= 3
    # the sort arrows are CSS escapes, not control characters
    assert r'content: " \25B2"' in html
    assert all(ch.isprintable() or ch == "\n" for ch in html)


def test_one_gradient_rule_with_a_fallback_for_old_files():
    """`gradient_free` recorded by the runner decides; files written before it was recorded
    fall back to the family, a BPDA surrogate and the known gradient-free presets."""

    def uses(attack: str, cfg: dict) -> bool:
        return make_cell("m", attack, 0.0, attack_config=cfg).uses_gradient

    assert not uses("square", {"name": "square", "gradient_free": True})
    assert uses("square", {"name": "square", "gradient_free": False})  # recorded value wins
    assert not uses("square", {"name": "square"})
    assert not uses("sq@other", {"name": "square"})
    assert not uses("q", {"name": "q", "family": "query"})
    assert not uses("bp", {"name": "bp", "params": {"bpda": True}})
    assert uses("pgd", {"name": "pgd", "family": "gradient"})


def test_terminal_table_lists_every_model():
    cells = standard_cells() + [make_cell("evil\x1b[31mred", "pgd", 0.02)]
    text = terminal_table(cells, n_boot=NB)
    lines = text.splitlines()
    for name in ("fragile", "sturdy", "middling", "piqe", EVIL, "evil\\x1b[31mred"):
        assert sum(name in line for line in lines) >= 1, name
    assert "\x1b" not in text
    piqe = next(line for line in lines if "piqe" in line)
    assert "not ranked" in piqe and "0.0000" not in piqe
    assert "1 failed cell(s):" in text and "CUDA out of memory" in text
    sturdy = next(line for line in lines if " sturdy " in line)
    assert "fgsm" in sturdy and "0.0300" in sturdy


def test_certified_cap_shown_where_a_bound_is_known(tmp_path):
    import dataclasses

    from benchmark.report.scores import certified_gain

    info = {"score_range": [0, 2], "extra": {"certified": {"lipschitz": 0.5}}}
    assert certified_gain(info, 8 / 255, "linf", [3, 8, 8]) == pytest.approx(
        0.5 * 8 / 255 * math.sqrt(192) / 2
    )
    assert math.isnan(certified_gain({"score_range": [0, 1]}, 8 / 255, "linf", [3, 8, 8]))
    assert math.isnan(certified_gain(info | {"score_range": None}, 8 / 255, "linf", [3, 8, 8]))
    cell = make_cell("robust", "ifgsm", 0.01)
    cell = dataclasses.replace(
        cell,
        model_info={
            **cell.model_info,
            "score_range": [0, 100],
            "extra": {"certified": {"lipschitz": 2.0}},
        },
        meta={**cell.meta, "input_shape": [3, 4, 4]},
    )
    tables = build_tables([cell, make_cell("plain", "ifgsm", 0.02)], n_boot=NB)
    row = tables.ranked.set_index("model")
    cap = 2.0 * (8 / 255) * math.sqrt(48) / 100
    assert row.loc["robust", "certified_gain"] == pytest.approx(cap)
    assert math.isnan(row.loc["plain", "certified_gain"])
    html = render_html([cell], tmp_path / "x.html", n_boot=NB).read_text()
    assert "Certified cap" in html and f"{cap:.4f}" in html


def test_a_purified_model_says_how_it_was_attacked() -> None:
    """A defense's gain is only meaningful with the attacker's route through it beside it."""
    jpeg = make_cell("jpeg50+m", "pgd", 0.05)
    jpeg.model_info["extra"] = {"bpda": True, "attacker_backward": "differentiable JPEG"}
    old = make_cell("bits4+m", "pgd", 0.05)
    old.model_info["extra"] = {"bpda": True}  # stored before the backward was recorded
    eot = make_cell("resize1.15+m", "pgd", 0.05)
    eot.model_info["extra"] = {"bpda": False, "eot_samples": 8}
    plain = make_cell("m", "pgd", 0.1)
    notes = build_tables([jpeg, old, eot, plain], n_boot=NB).rows.set_index("model")["note"]
    assert notes["jpeg50+m"] == "attacker: BPDA through differentiable JPEG"
    assert notes["bits4+m"] == "attacker: BPDA through identity"
    assert notes["resize1.15+m"] == "attacker: EOT over 8 draws"
    assert "attacker" not in notes["m"]


def test_stored_summaries_are_used_only_when_computed_the_same_way(monkeypatch):
    from benchmark.report import tables

    c = _synthetic_cell_for_summary()
    fresh = tables.cell_summary(c, n_boot=50)
    c.summary = {**fresh, "abs_gain": 123.0}  # a stored summary, marked as made the same way
    assert tables.stored_summary(c, n_boot=50)["abs_gain"] == 123.0
    # another bootstrap size or other scoring code: recomputed, never reused
    assert tables.stored_summary(c, n_boot=60)["abs_gain"] == pytest.approx(fresh["abs_gain"])
    monkeypatch.setattr(tables, "SCORES_CODE", "other")
    assert tables.stored_summary(c, n_boot=50)["abs_gain"] == pytest.approx(fresh["abs_gain"])


def _synthetic_cell_for_summary(model: str = "m", attack: str = "ifgsm", seed: int = 0):
    rng = np.random.default_rng(seed)
    n = 30
    clean = rng.uniform(size=n)
    return CellResult(
        key=CellKey(model, "d", attack, 4 / 255, "up"),
        status="done",
        image_id=np.array([f"i{i}" for i in range(n)], dtype=object),
        mos=clean + rng.normal(0, 0.1, n),
        clean=clean,
        attacked=clean + rng.uniform(0, 0.2, n),
        linf=np.full(n, 4 / 255),
        l2=np.ones(n),
        psnr=np.full(n, 40.0),
        ssim=np.ones(n),
        seconds=np.ones(n),
        model_info={"lower_better": False, "score_range": [0, 1]},
        attack_config={"name": attack, "family": "gradient", "params": {"steps": 1 + seed}},
    )


def test_lazy_cells_with_stored_summaries_rank_like_fresh_ones(tmp_path: Path):
    from benchmark.report.tables import cell_summary
    from benchmark.store.hdf5 import ResultStore, read_results

    cells = [
        _synthetic_cell_for_summary(m, a, seed)
        for m in ("m1", "m2")
        for seed, a in enumerate(("fgsm", "ifgsm", "pgd"))
    ]
    store = ResultStore(tmp_path / "r.h5")
    with store.writer():
        for c in cells:
            store.write_cell(c, "h", summary=cell_summary(c, n_boot=100))
    lazy = read_results([tmp_path / "r.h5"], lazy=True)
    want, got = build_tables(cells, n_boot=100), build_tables(lazy, n_boot=100)
    pd.testing.assert_frame_equal(want.rows, got.rows)
    pd.testing.assert_frame_equal(want.cells, got.cells)
