"""`compare`: a user's defense against its baseline on the standard suite, with statistics.

The defense and the baseline run the same cells (same images, attacks, budgets, seed); the
report pairs them image by image: the difference of absolute gains gets a paired bootstrap
interval and p-value (resampling source photographs, then images, where the images share
photographs), so "my defense lowers the gain" is a claim with an error bar; where the
interval contains 0 the report says "not separated" instead of naming a winner. Warnings
flag weak evidence: few images, a gradient-free attack beating the gradient attacks (gradient
masking), one signed-gradient step beating an iterative attack of the same kind (the
iterations are failing: stochastic or obfuscated gradients), a non-differentiable defense seen
only by gradient attacks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.paths import atomic_write
from benchmark.report import jinja
from benchmark.report.sanity import failing_iterations
from benchmark.report.scores import paired_difference, summarize_cell
from benchmark.store.cell import CellResult

STANDARD_ATTACKS = ("fgsm", "ifgsm", "pgd", "apgd", "square")
FEW_IMAGES = 30
FEW_PHOTOS = 10


@dataclass
class AttackComparison:
    attack: str
    eps_label: str
    direction: str
    defense_gain: float
    defense_ci: tuple[float, float]
    baseline_gain: float
    baseline_ci: tuple[float, float]
    diff: float  # defense - baseline, paired over images
    diff_ci: tuple[float, float]
    p_value: float
    n_pairs: int
    defense_status: str
    baseline_status: str
    n_photos: int | None = None  # source photographs, where the intervals resample them

    @property
    def verdict(self) -> str:
        """Which side the paired interval puts lower, or that it cannot tell them apart."""
        low, high = self.diff_ci
        if not (np.isfinite(low) and np.isfinite(high)) or low <= 0 <= high:
            return "not separated"
        return "defense lower" if high < 0 else "baseline lower"

    @property
    def images_text(self) -> str:
        return f"{self.n_pairs}" + (f" ({self.n_photos} photos)" if self.n_photos else "")


@dataclass
class CompareReport:
    defense: str
    baseline: str
    rows: list[AttackComparison]
    clean: dict[str, dict[str, float]]  # model -> srocc/plcc (+CI)
    warnings: list[str] = field(default_factory=list)
    positions: list[str] = field(default_factory=list)


def build_report(
    cells: list[CellResult], defense: str, baseline: str, context: list[CellResult] | None = None
) -> CompareReport:
    by_key = {(c.key.model, c.key.attack, c.key.eps, c.key.direction): c for c in cells}
    rows = []
    clean: dict[str, dict[str, float]] = {}
    summaries: dict[tuple, dict[str, Any]] = {}
    for (model, attack, eps, direction), cell in sorted(by_key.items()):
        summaries[(model, attack, eps, direction)] = s = summarize_cell(cell, n_boot=500)
        if model not in clean or s["n_mos_clean"] > clean[model]["n"]:
            clean[model] = {
                "srocc": s["srocc_clean"],
                "srocc_low": s["srocc_clean_low"],
                "srocc_high": s["srocc_clean_high"],
                "plcc": s["plcc_logistic_clean"],
                "n": s["n_mos_clean"],
            }
    for (model, attack, eps, direction), cell in sorted(by_key.items()):
        if model != defense or (baseline, attack, eps, direction) not in by_key:
            continue
        base_cell = by_key[(baseline, attack, eps, direction)]
        sd, sb = (
            summaries[(model, attack, eps, direction)],
            summaries[(baseline, attack, eps, direction)],
        )
        diff, diff_ci, p, n = paired_difference(cell, base_cell)
        rows.append(
            AttackComparison(
                attack,
                cell.key.eps_label,
                direction,
                sd["abs_gain"],
                (sd["abs_gain_low"], sd["abs_gain_high"]),
                sb["abs_gain"],
                (sb["abs_gain_low"], sb["abs_gain_high"]),
                diff,
                diff_ci,
                p,
                n,
                cell.status,
                base_cell.status,
                sd["n_groups"] if sd.get("ci_unit") == "photograph" else None,
            )  # fmt: skip
        )
    report = CompareReport(defense, baseline, rows, clean)
    report.warnings = _warnings(report, [c for c in cells if c.key.model == defense])
    if context:
        report.positions = leaderboard_positions(context + cells, defense)
    return report


def _warnings(report: CompareReport, defense_cells: list[CellResult]) -> list[str]:
    out = []
    n = max((len(c) for c in defense_cells), default=0)
    photos = {r.n_photos for r in report.rows if r.n_photos}
    if photos and min(photos) < FEW_PHOTOS:
        out.append(
            f"the images come from only {min(photos)} source photographs: intervals resample "
            "photographs and are wide; where a difference's interval contains 0 the two are "
            "not separated"
        )
    if n < FEW_IMAGES:
        out.append(
            f"only {n} images per cell: intervals are wide, the evidence is weak (use more, e.g. --limit 200)"
        )
    if any(c.gradient == "none" for c in defense_cells):
        free = [c for c in defense_cells if not c.uses_gradient]
        if not free:
            out.append(
                "the defense has no usable input gradient and only gradient attacks ran: it is "
                "untested, not robust (add a gradient-free attack such as square, or a BPDA surrogate)"
            )
    gradient_free = {c.key.attack for c in defense_cells if not c.uses_gradient}
    for eps_dir in {(r.eps_label, r.direction) for r in report.rows}:
        rows = [
            r
            for r in report.rows
            if (r.eps_label, r.direction) == eps_dir and r.defense_status == "done"
        ]
        grad = [r.defense_gain for r in rows if r.attack not in gradient_free]
        free = [r.defense_gain for r in rows if r.attack in gradient_free]
        if grad and free and max(free) > 1.5 * max(max(grad), 0) + 0.005:
            out.append(
                f"at {eps_dir[0]} a gradient-free attack gains {max(free):.3f} but gradient attacks "
                f"only {max(grad):.3f}: gradient masking suspected; gradient-attack numbers understate the risk"
            )
    out += [w for ws in failing_iterations(defense_cells).values() for w in ws]
    return sorted(out)


def leaderboard_positions(cells: list[CellResult], model: str) -> list[str]:
    from benchmark.report.formatting import threat_label
    from benchmark.report.tables import build_tables

    tables = build_tables(cells, n_boot=200)
    out = []
    for (dataset, norm, _eps, direction), group in tables.threat_groups():
        hit = group[group["model"] == model]
        if len(hit):
            out.append(
                f"{dataset} | {threat_label(norm, hit['eps_label'].iloc[0])} | {direction}: "
                f"rank {int(hit['rank'].iloc[0])} of {len(group)}"
            )
    return out


def _fmt(v: float, d: int = 4) -> str:
    return "-" if not np.isfinite(v) else f"{v:.{d}f}"


def terminal_report(r: CompareReport) -> str:
    lines = [f"defense {r.defense} vs baseline {r.baseline}"]
    for m in (r.defense, r.baseline):
        c = r.clean.get(m, {})
        lines.append(f"  clean SROCC {m}: {_fmt(c.get('srocc', np.nan), 3)} "
                     f"[{_fmt(c.get('srocc_low', np.nan), 3)}, {_fmt(c.get('srocc_high', np.nan), 3)}]")  # fmt: skip
    head = f"  {'attack':<16}{'eps':<9}{'dir':<5}{'defense gain':>14}{'baseline gain':>15}{'diff [95% CI]':>30}{'p':>8}{'images':>18}  verdict"
    lines += [head, "  " + "-" * (len(head) - 2)]
    for x in r.rows:
        ci = f"{_fmt(x.diff)} [{_fmt(x.diff_ci[0])}, {_fmt(x.diff_ci[1])}]"
        lines.append(
            f"  {x.attack:<16}{x.eps_label:<9}{x.direction:<5}{_fmt(x.defense_gain):>14}"
            f"{_fmt(x.baseline_gain):>15}{ci:>30}{_fmt(x.p_value, 3):>8}{x.images_text:>18}"
            f"  {x.verdict}"
        )
    lines += [f"  leaderboard: {p}" for p in r.positions]
    lines += [f"  warning: {w}" for w in r.warnings]
    return "\n".join(lines)


def write_html(report: CompareReport, path: Path) -> Path:
    """The report as one page (templates/compare.html.j2), written atomically."""
    page = jinja.render("compare.html.j2", r=report, fmt=_fmt)
    atomic_write(path, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return path
