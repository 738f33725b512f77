"""Evidence tables as data: the markdown tables in `docs/evidence/` are regenerated from the
committed results files under `results/evidence/` and the model cards, nothing else.

A page marks each generated block::

    <!-- evidence results="results/evidence/cnniqa.h5" family="cnniqa-builtin" -->
    ...generated markdown...
    <!-- /evidence -->

`update_page` rewrites every block from its files; `scripts/evidence_docs.py` runs it over
every page (`--check` fails when a committed table differs from its regeneration, which a test
also asserts). Inference timings are not results of an attack and change with the machine, so
they are not in these tables (`docs/speed.md` has them).
"""

from __future__ import annotations

import json
import math
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmark.cards import read_toml
from benchmark.errors import ConfigError
from benchmark.report.scores import to_quality
from benchmark.store.cell import CellResult

BLOCK = re.compile(
    r"(?P<open><!-- evidence (?P<attrs>[^>]*?) -->\n)(?P<body>.*?)(?P<close><!-- /evidence -->)",
    re.S,
)
ATTR = re.compile(r'(\w+)="([^"]*)"')

# test-split correlations of a model without a card: `python -m benchmark evaluate --json`
Correlations = Mapping[str, Mapping[str, Any]]


@dataclass(frozen=True)
class BlockSpec:
    """What one marked block shows: the files it reads and the model family it keeps."""

    results: tuple[str, ...]
    family: str | None = None
    direction: str = "up"
    evaluations: tuple[str, ...] = ()
    heading: str = "####"

    @classmethod
    def parse(cls, attrs: str) -> BlockSpec:
        values = dict(ATTR.findall(attrs))
        unknown = set(values) - {"results", "family", "direction", "eval", "heading"}
        if unknown or "results" not in values:
            raise ConfigError(
                f"evidence block <!-- evidence {attrs} -->: needs results=..., "
                f"knows family/direction/eval/heading, got {sorted(values)}"
            )
        return cls(
            results=tuple(shlex.split(values["results"])),
            family=values.get("family") or None,
            direction=values.get("direction", "up"),
            evaluations=tuple(shlex.split(values.get("eval", ""))),
            heading=values.get("heading", "####"),
        )


def md_num(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.{digits}f}"


def md_ci(v: Any, lo: Any, hi: Any, digits: int = 3) -> str:
    if v is None or not math.isfinite(float(v)):
        return "-"
    return f"{float(v):.{digits}f} [{float(lo):.{digits}f}, {float(hi):.{digits}f}]"


def base_of(name: str) -> str:
    """The model a defense, purifier or RobustBlock conversion wraps (itself for a base)."""
    from benchmark.models.purified import parse_purified
    from benchmark.models.registry import model_registry

    purified = parse_purified(name)
    if purified is not None:
        return base_of(purified[2])
    if name in model_registry():
        return model_registry().get(name).meta.get("base") or name
    return name


def _card(name: str) -> dict[str, Any]:
    from benchmark.models.purified import parse_purified
    from benchmark.models.registry import model_registry

    if parse_purified(name) is not None or name not in model_registry():
        return {}
    card = model_registry().get(name).meta.get("card")
    return read_toml(Path(card)) if card else {}


def training_minutes(name: str) -> float | None:
    """Minutes on the model's card (wall clock of the command that made it); 0 for purifiers."""
    from benchmark.models.purified import parse_purified

    if parse_purified(name) is not None:
        return 0.0
    return _card(name).get("training", {}).get("minutes")


def split_correlations(name: str, evaluations: Correlations) -> dict[str, Any] | None:
    """SROCC/PLCC with CIs on the whole builtin test split: the committed `evaluate --json`
    output where the block names one for the model (intervals over source photographs), else
    the card's numbers (measured on its shipped file when it was trained)."""
    if name in evaluations:
        return dict(evaluations[name])
    ev = _card(name).get("evaluation", {})
    if ev.get("dataset") == "builtin" and ev.get("split") == "test":
        return ev
    return None


def _split_text(corr: Mapping[str, Mapping[str, Any] | None]) -> str:
    """What the test-split columns were measured on, and what their intervals resample."""
    units = {(c.get("n"), c.get("n_photos"), c.get("ci_unit", "image")) for c in corr.values() if c}
    parts = []
    for n, photos, unit in sorted(units, key=str):
        over = (
            f"{photos} source photographs, intervals over them"
            if unit == "photograph"
            else ("intervals over images")
        )
        parts.append(f"{n} images ({over})")
    return "Test SROCC/PLCC: the whole builtin test split, pseudo-MOS: " + "; ".join(parts) + "."


def versus_base(row: Mapping[str, Any], base: Mapping[str, Any] | None) -> str:
    """The worst-case gain against the base model's (`tables.separation`), "-" without one."""
    from benchmark.report.tables import separation

    return (separation(row, base) if base is not None else None) or "-"


def spread_gains(cells: list[CellResult]) -> dict[tuple[str, str, float, str], float]:
    """Mean gain in units of the spread (std) of the model's own clean scores, per cell.

    Why: a model whose outputs are compressed into a narrow band (a Lipschitz-constrained one
    can be) shows a small absolute gain even when the attack moves it across its whole range
    of opinions; gain / std(clean) is scale-free and shows that.
    """
    out = {}
    for c in cells:
        if c.status != "done":
            continue
        lb = bool(c.model_info.get("lower_better"))
        sr = c.model_info.get("score_range")
        q = to_quality(c.clean, lb, sr)
        qa = to_quality(c.attacked, lb, sr, clean_raw=c.clean)
        ok = np.isfinite(q) & np.isfinite(qa)
        sd = float(np.std(q[ok]))
        if ok.sum() > 1 and sd > 0:
            key = (c.key.model, c.key.attack, float(c.key.eps), c.key.direction)
            out[key] = float(np.mean(qa[ok] - q[ok])) / sd
    return out


def read_evaluations(paths: tuple[str, ...], root: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in paths:
        out.update(json.loads((root / p).read_text(encoding="utf-8")))
    return out


def render_block(spec: BlockSpec, root: Path, n_boot: int = 1000) -> str:
    """The markdown of one block: per threat a summary table, then gains per attack."""
    from benchmark.report.leaderboard import build_tables
    from benchmark.store.hdf5 import read_results

    missing = [p for p in spec.results if not (root / p).is_file()]
    if missing:
        raise ConfigError(f"evidence results file(s) not found: {', '.join(missing)}")
    stored = read_results([str(root / p) for p in spec.results])
    evaluations = read_evaluations(spec.evaluations, root)
    tables = build_tables(stored, n_boot=n_boot)
    per_sd = spread_gains(stored)
    rows = tables.rows[tables.rows["direction"] == spec.direction]
    models = list(dict.fromkeys(rows.sort_values("model")["model"]))
    if spec.family:
        models = [m for m in models if base_of(m) == spec.family]
    if not models:
        raise ConfigError(f"no stored model of family {spec.family!r} in {spec.results}")
    rows = rows[rows["model"].isin(models)]
    order = sorted(models, key=lambda m: (base_of(m), m != base_of(m), m))
    corr = {m: split_correlations(m, evaluations) for m in order}
    out: list[str] = []
    for (norm, eps_label), group in rows.groupby(["norm", "eps_label"], sort=True):
        n = int(group["n_images"].max())
        by_photo = group[group["ci_unit"] == "photograph"] if "ci_unit" in group else group[:0]
        photos = int(by_photo["n_groups"].max()) if len(by_photo) else None
        images = f"{n} images" + (f" from {photos} source photographs" if photos else "")
        unit = "source photographs, then images" if photos else "images"
        out += [
            f"{spec.heading} {norm} eps {eps_label} ({images}, direction {spec.direction})",
            "",
            _split_text(corr) + f" Worst-case gain intervals resample {unit}; 'vs base' "
            "compares a model's gain interval with its base model's.",
            "",
            "| model | source | params | test SROCC [95% CI] | test PLCC | worst-case gain "
            "[95% CI] | vs base | worst attack | gain / sd(clean) | robustness R "
            "| certified cap | train min |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        g = group.set_index("model")
        base_rows = {m: g.loc[m] for m in order if m in g.index and base_of(m) == m}
        for m in order:
            if m not in g.index:
                continue
            r = g.loc[m]
            c = corr[m] or {}
            srocc = md_ci(c["srocc"], *c["srocc_ci"]) if c else "-"
            sd_gain = per_sd.get((m, r["worst_attack"], float(r["eps"]), spec.direction))
            params = int(r["params"]) if pd.notna(r["params"]) else "-"
            out.append(
                f"| {m} | {r['source']} | {params} | {srocc} | {md_num(c.get('plcc'))} "
                f"| {md_ci(r['abs_gain'], r['abs_gain_low'], r['abs_gain_high'])} "
                f"| {'-' if base_of(m) == m else versus_base(r, base_rows.get(base_of(m)))} "
                f"| {r['worst_attack'] or r['reason']} | {md_num(sd_gain, 2)} "
                f"| {md_num(r['robustness'], 2)} | {md_num(r['certified_gain'], 2)} "
                f"| {md_num(training_minutes(m), 1)} |"
            )
        out.append("")
    cells = tables.cells[tables.cells["direction"] == spec.direction]
    cells = cells[cells["model"].isin(order)]
    for (norm, eps_label), group in cells.groupby(["norm", "eps_label"], sort=True):
        mat = group.pivot_table(index="model", columns="attack", values="abs_gain", aggfunc="first")
        mat = mat.reindex([m for m in order if m in mat.index])
        out += [f"{spec.heading} absolute gain per attack, {norm} eps {eps_label}", ""]
        out.append("| model | " + " | ".join(mat.columns) + " |")
        out.append("|---|" + "---|" * len(mat.columns))
        out += [
            f"| {m} | " + " | ".join(md_num(v) for v in vals) + " |" for m, vals in mat.iterrows()
        ]
        out.append("")
    return "\n".join(out)


def update_page(
    text: str, root: Path, render: Callable[[BlockSpec, Path], str] = render_block
) -> str:
    """`text` with every marked block regenerated from its results files."""

    def one(m: re.Match[str]) -> str:
        body = render(BlockSpec.parse(m.group("attrs")), root)
        return m.group("open") + body.rstrip("\n") + "\n" + m.group("close")

    return BLOCK.sub(one, text)


def pages_with_blocks(docs: Path) -> list[Path]:
    return sorted(p for p in docs.rglob("*.md") if BLOCK.search(p.read_text(encoding="utf-8")))
