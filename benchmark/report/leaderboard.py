"""Leaderboard v1: per-threat-model ranking tables, one self-contained HTML page, a terminal table.

Data flow: `CellResult`s -> `summarize_cells` (one row of scores per cell) -> `build_tables`
(one row per model, dataset, threat model (norm, eps) and direction, ranked by the worst
attack) -> `render_html` / `terminal_table`. Later versions add views on the same two
frames (`LeaderboardTables.cells` keeps every per-cell score), not new computations.

Ranking rules (DESIGN sections 3 and 5):
- within one (dataset, norm, eps, direction) the worst attack of a model is the one with the
  largest inflation in the attack's direction (largest gain for "up", most negative gain for
  "down"); models are ranked by that worst-case absolute gain, lower is better;
- only cells that really ran count. A model without input gradient is never ranked on
  gradient attacks (a zero gain there means "could not attack", not "robust"): with no
  gradient-free attack it goes to the "not ranked" table with its clean correlations;
- failed cells are listed with their reason; a model with some failed attacks is ranked on
  the rest and flagged as incomplete;
- where an iterative signed-gradient attack finds significantly less than one FGSM step
  (`attack_sanity.failing_iterations`), the ranked gain is noted as a lower bound.
"""

from __future__ import annotations

import base64
import datetime as _dt
import io
import json
import math
import os
import platform
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd

from benchmark import __version__
from benchmark.errors import StoreError
from benchmark.report.sanity import CellGroup, failing_iterations
from benchmark.report.scores import summarize_cell
from benchmark.store.cell import CellResult

GROUP_KEYS = ["dataset", "norm", "eps", "direction"]
FAILING_ITERATIONS_NOTE = (
    "iterative attacks found less than one FGSM step (iterations failing: stochastic or "
    "obfuscated gradients): the gain is a lower bound"
)
NO_GRADIENT_REASON = "no input gradient; gradient attacks not applicable"
# Attack presets that need no input gradient, for configs that do not say so themselves.
# The runner should record `gradient_free` (from AttackInfo) in the attack config.
KNOWN_GRADIENT_FREE = frozenset({"square"})
# Meta fields that differ from cell to cell by nature: shown in the all-cells table, not in
# the provenance summary.
PER_CELL_META = frozenset({"wall_s", "skipped_images"})

COLUMN_DEFINITIONS: dict[str, str] = {
    "Rank": "Position within one dataset and threat model by worst-case absolute gain "
    "(lower gain ranks first; ties share a rank).",
    "Model": "Registered model name.",
    "Source": "Where the model comes from: pyiqa, zoo (trained here), robustblock, plugin.",
    "Kind": "NR (no-reference) or FR (full-reference).",
    "Gradient": "ok: the model has a usable input gradient; none: its gradient was absent, "
    "zero or non-finite on the first batch, so gradient attacks are not applicable.",
    "Params": "Number of trainable parameters.",
    "Clean SROCC": "Spearman correlation of clean scores with MOS, with a 95% bootstrap "
    "interval over images.",
    "Clean PLCC": "Pearson correlation of clean scores with MOS after the VQEG 4-parameter "
    "logistic mapping fitted on clean scores (plain PLCC where the fit failed), 95% CI.",
    "Worst attack": "The attack with the largest score inflation in the attacked direction "
    "among those that ran on this model.",
    "Abs gain": "G_abs = mean(q' - q) of the worst attack, q and q' the clean and attacked "
    "scores in quality-up orientation normalised to [0,1] by the declared score range "
    "(else min-max of the clean scores); 95% bootstrap CI over images. Not clipped: values "
    "beyond the range show inflation beyond it.",
    "Certified cap": "Provable upper bound on the absolute gain of ANY perturbation within the "
    "budget: L * eps * sqrt(3HW) / (score range), with L the model's certified L2 Lipschitz "
    "bound from its card (RobustBlock models); '-' where no bound is known.",
    "Rel gain": "G_rel = mean((q' - q) / (q + 1)) of the worst attack.",
    "R": "Robustness score mean(log10(max(1-q, q) / (|q - q'| + 1e-6))) of the worst attack; "
    "higher is more robust, about 6 for an unchanged score.",
    "W1": "Wasserstein-1 distance between clean and attacked score distributions, signed by "
    "the mean shift.",
    "Attacked SROCC": "Spearman correlation of attacked scores with MOS.",
    "Images": "Images with finite clean and attacked scores in the worst-attack cell.",
    "Attacks run": "Attack cells that ran and count for this model.",
    "N/A": "Attack cells that do not apply to this model (e.g. gradient attacks on a model "
    "without input gradient).",
    "Failed": "Attack cells that failed or produced no finite score (see the failures table).",
    "Note": "Caveats of the row: for a purified model, how gradient attacks reached it (BPDA "
    "and its stand-in for a non-differentiable purifier, EOT draws for a random one).",
}


# ---------------------------------------------------------------------------------------
# tables


def _uses_gradient(cell: CellResult) -> bool:
    """Whether the attack needs the model's input gradient (BPDA with a surrogate does not)."""
    cfg = cell.attack_config
    params = cfg.get("params") or {}
    if "gradient_free" in cfg:
        return not bool(cfg["gradient_free"])
    if cfg.get("family") == "query" or cfg.get("bpda") or params.get("bpda"):
        return False
    names = {str(cfg.get("name", "")), cell.key.attack}
    return not (names & KNOWN_GRADIENT_FREE)


def _outcome(cell: CellResult, summary: Mapping[str, Any]) -> tuple[str, str]:
    """("counted" | "not_applicable" | "failed", why) for one cell."""
    if cell.status == "failed":
        return "failed", cell.reason or "failed (no reason recorded)"
    if cell.status == "not_applicable":
        return "not_applicable", cell.reason or "not applicable"
    if cell.gradient == "none" and _uses_gradient(cell):
        return "not_applicable", "gradient attack on a model without input gradient"
    if not np.isfinite(summary["abs_gain"]):
        return "failed", summary["notes"] or "no finite gain"
    return "counted", ""


def summarize_cells(cells: Iterable[CellResult], n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row of scores per cell (see `scores.summarize_cell`) plus its ranking outcome."""
    rows = []
    seen: set[Any] = set()
    for cell in cells:
        if cell.key in seen:
            raise StoreError(f"duplicate cell in results: {cell.key}")
        seen.add(cell.key)
        summary = summarize_cell(cell, n_boot=n_boot, seed=seed)
        summary["outcome"], summary["outcome_reason"] = _outcome(cell, summary)
        summary["uses_gradient"] = _uses_gradient(cell)
        summary["effect"] = summary["abs_gain"] * (-1.0 if cell.key.direction == "down" else 1.0)
        rows.append(summary)
    frame = pd.DataFrame(rows)
    if not rows:
        return frame
    return frame.sort_values(GROUP_KEYS + ["model", "attack"], kind="stable").reset_index(drop=True)


_CLEAN_COLS = [
    f"{m}_clean{s}" for m in ("srocc", "plcc", "plcc_logistic") for s in ("", "_low", "_high")
] + ["krocc_clean", "n_mos_clean"]
_WORST_COLS = {
    "attack": "worst_attack",
    "abs_gain": "abs_gain",
    "abs_gain_low": "abs_gain_low",
    "abs_gain_high": "abs_gain_high",
    "rel_gain": "rel_gain",
    "robustness": "robustness",
    "wasserstein": "wasserstein",
    "srocc_attacked": "srocc_attacked",
    "plcc_logistic_attacked": "plcc_logistic_attacked",
    "n_pairs": "n_images",
    "certified_gain": "certified_gain",
    "effect": "effect",
}


def _model_rows(
    cells: pd.DataFrame, failing: Mapping[CellGroup, list[str]] = MappingProxyType({})
) -> pd.DataFrame:
    """Aggregate per-cell rows into one row per (dataset, norm, eps, direction, model).

    `failing`: groups whose iterative attacks found less than one FGSM step
    (`attack_sanity.failing_iterations`); their gain is noted as a lower bound.
    """
    # Clean correlations are a property of (model, dataset): take the cell with most MOS pairs.
    best_clean = (
        cells.sort_values(["n_mos_clean"], ascending=False, kind="stable")
        .drop_duplicates(["model", "dataset"])
        .set_index(["model", "dataset"])
    )
    rows = []
    for key, group in cells.groupby(GROUP_KEYS + ["model"], sort=True, dropna=False):
        dataset, norm, eps, direction, model = key
        first = group.iloc[0]
        counted = group[group["outcome"] == "counted"]
        n_na = int((group["outcome"] == "not_applicable").sum())
        n_failed = int((group["outcome"] == "failed").sum())
        gradient = "none" if (group["gradient"] == "none").any() else "ok"
        row: dict[str, Any] = {
            "dataset": dataset,
            "norm": norm,
            "eps": eps,
            "eps_label": first["eps_label"],
            "direction": direction,
            "model": model,
            "source": first["source"],
            "kind": first["kind"],
            "gradient": gradient,
            "params": first["params"],
            "n_attacks_run": len(counted),
            "n_not_applicable": n_na,
            "n_failed": n_failed,
            "attacks": ", ".join(sorted(group["attack"].astype(str))),
        }
        clean = best_clean.loc[(model, dataset)]
        row.update({c: clean[c] for c in _CLEAN_COLS})
        notes = [f"attacker: {first['adaptive']}"] if first.get("adaptive") else []
        if len(counted):
            worst = counted.sort_values(
                ["effect", "attack"], ascending=[False, True], kind="stable"
            ).iloc[0]
            row.update({dst: worst[src] for src, dst in _WORST_COLS.items()})
            row["ranked"] = True
            row["reason"] = ""
            if gradient == "none":
                notes.append("ranked on gradient-free attacks only")
            if n_failed:
                notes.append(f"{n_failed} attack(s) failed: worst case over the rest")
            if (model, dataset, norm, eps, direction) in failing:
                notes.append(FAILING_ITERATIONS_NOTE)
        else:
            row.update({dst: np.nan for dst in _WORST_COLS.values()})
            row["worst_attack"] = ""
            row["n_images"] = int(group["n_images"].max())
            row["ranked"] = False
            if gradient == "none" and n_na:
                reason = NO_GRADIENT_REASON
            elif n_na:
                reasons = sorted(
                    set(group.loc[group["outcome"] == "not_applicable", "outcome_reason"])
                )
                reason = "not applicable: " + "; ".join(reasons)
            else:
                reason = "all attacks failed"
            if n_failed and n_na:
                reason += f"; {n_failed} attack(s) failed"
            row["reason"] = reason
        row["note"] = "; ".join(notes)
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame["rank"] = pd.array([pd.NA] * len(frame), dtype="Int64")
    ranked = frame["ranked"].astype(bool)
    if ranked.any():
        ranks = frame[ranked].groupby(GROUP_KEYS, sort=False)["effect"].rank(method="min")
        frame.loc[ranked, "rank"] = ranks.astype("int64").to_numpy()
    return frame


@dataclass
class LeaderboardTables:
    """`rows`: one row per (dataset, norm, eps, direction, model); `cells`: one per cell."""

    rows: pd.DataFrame
    cells: pd.DataFrame
    n_boot: int = 1000
    seed: int = 0

    @property
    def ranked(self) -> pd.DataFrame:
        """Ranked rows, ordered by threat model then rank (best first)."""
        if self.rows.empty:
            return self.rows
        r = self.rows[self.rows["ranked"].astype(bool)]
        return r.sort_values(GROUP_KEYS + ["rank", "model"], kind="stable").reset_index(drop=True)

    @property
    def not_ranked(self) -> pd.DataFrame:
        """Rows with no counted attack (no input gradient, nothing applicable, all failed)."""
        if self.rows.empty:
            return self.rows
        r = self.rows[~self.rows["ranked"].astype(bool)]
        return r.sort_values(GROUP_KEYS + ["model"], kind="stable").reset_index(drop=True)

    @property
    def failed(self) -> pd.DataFrame:
        """Failed cells (including cells that ran but produced no finite score)."""
        if self.cells.empty:
            return self.cells
        return self.cells[self.cells["outcome"] == "failed"].reset_index(drop=True)

    def threat_groups(self) -> list[tuple[tuple[Any, ...], pd.DataFrame]]:
        """[((dataset, norm, eps, direction), ranked rows of that group)], sorted."""
        ranked = self.ranked
        if ranked.empty:
            return []
        return [
            (tuple(k), g.reset_index(drop=True)) for k, g in ranked.groupby(GROUP_KEYS, sort=True)
        ]


def build_tables(
    cells: Sequence[CellResult], n_boot: int = 1000, seed: int = 0
) -> LeaderboardTables:
    """Score every cell and aggregate into ranking rows (see the module docstring for rules)."""
    per_cell = summarize_cells(cells, n_boot=n_boot, seed=seed)
    failing = failing_iterations(cells)
    rows = _model_rows(per_cell, failing) if len(per_cell) else pd.DataFrame()
    return LeaderboardTables(rows=rows, cells=per_cell, n_boot=n_boot, seed=seed)


# ---------------------------------------------------------------------------------------
# formatting helpers


def _is_missing(x: Any) -> bool:
    if x is None or x is pd.NA:
        return True
    return isinstance(x, float | np.floating) and math.isnan(x)


def fmt_num(x: Any, digits: int = 3) -> str:
    if _is_missing(x):
        return "-"
    if isinstance(x, float | np.floating):
        return f"{float(x):.{digits}f}" if np.isfinite(x) else str(float(x))
    return str(x)


def fmt_ci(value: Any, low: Any, high: Any, digits: int = 3) -> str:
    if _is_missing(value):
        return "-"
    if _is_missing(low) or _is_missing(high):
        return fmt_num(value, digits)
    return f"{fmt_num(value, digits)} [{fmt_num(low, digits)}, {fmt_num(high, digits)}]"


def fmt_params(n: Any) -> str:
    if _is_missing(n):
        return "-"
    n = float(n)
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return f"{int(n)}"


def threat_label(norm: Any, eps_label: Any) -> str:
    norm_s = {"linf": "Linf", "l2": "L2"}.get(str(norm), str(norm))
    return f"{norm_s} {eps_label}"


def _printable(s: Any, width: int | None = None) -> str:
    """Terminal-safe text: control characters (ANSI escapes, newlines) shown as \\xNN."""
    text = "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in str(s))
    if width is not None and len(text) > width:
        text = text[: width - 3] + "..."
    return text


# ---------------------------------------------------------------------------------------
# plot


def tradeoff_png(tables: LeaderboardTables) -> bytes:
    """Worst-case absolute gain vs clean SROCC per model: robustness bought with accuracy shows.

    Built on `matplotlib.figure.Figure` with an explicit Agg canvas, so rendering touches no
    global pyplot state or backend setting. Names are drawn with mathtext parsing off.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.8), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    markers = "os^Dv<>pPX*h"
    plotted = skipped = 0
    for i, ((dataset, norm, _eps, direction), group) in enumerate(tables.threat_groups()):
        ok = group[
            np.isfinite(group["srocc_clean"].astype(float))
            & np.isfinite(group["effect"].astype(float))
        ]
        skipped += len(group) - len(ok)
        if ok.empty:
            continue
        label = f"{dataset} | {threat_label(norm, group['eps_label'].iloc[0])} | {direction}"
        ax.scatter(
            ok["srocc_clean"].astype(float),
            ok["effect"].astype(float),
            marker=markers[i % len(markers)],
            label=label.replace("$", r"\$"),
        )
        for _, r in ok.iterrows():
            ax.annotate(
                _printable(r["model"], 28),
                (float(r["srocc_clean"]), float(r["effect"])),
                xytext=(4, 3),
                textcoords="offset points",
                fontsize=7,
                parse_math=False,
            )
        plotted += len(ok)
    ax.set_xlabel("clean SROCC (higher = more accurate)")
    ax.set_ylabel("worst-case gain in attacked direction\n(lower = more robust)")
    ax.set_title("Robustness / accuracy trade-off")
    ax.grid(True, alpha=0.3)
    if plotted:
        ax.legend(fontsize=7, loc="best")
    else:
        ax.text(
            0.5,
            0.5,
            "no ranked model with clean SROCC",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
    if skipped:
        fig.text(0.01, 0.01, f"{skipped} ranked row(s) without clean SROCC not shown", fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


# ---------------------------------------------------------------------------------------
# provenance


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value


def provenance(cells: Sequence[CellResult], tables: LeaderboardTables) -> list[tuple[str, str]]:
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


def attack_matrices(tables: LeaderboardTables) -> list[dict[str, Any]]:
    """One model x attack table of absolute gains per (dataset, norm, eps, direction)."""
    cells = tables.cells
    if cells.empty:
        return []
    out = []
    for (dataset, norm, _eps, direction), group in cells.groupby(GROUP_KEYS, sort=True):
        attacks = sorted(group["attack"].astype(str).unique())
        counted = group[group["outcome"] == "counted"]["effect"].abs()
        scale = float(counted.max()) if len(counted) and counted.max() > 0 else 1.0
        rows = []
        for model, mg in group.groupby("model", sort=True):
            by_attack = {str(r["attack"]): r for _, r in mg.iterrows()}
            row_cells = []
            for a in attacks:
                r = by_attack.get(a)
                if r is None:
                    row_cells.append({"text": "", "colour": "#fff", "title": "not run"})
                elif r["outcome"] != "counted":
                    row_cells.append(
                        {"text": r["outcome"].replace("_", " "), "colour": "#e8e8e8",
                         "title": str(r["outcome_reason"])}
                    )  # fmt: skip
                else:
                    level = min(1.0, max(0.0, float(r["effect"]) / scale))
                    red = f"rgb(255, {int(255 - 150 * level)}, {int(255 - 150 * level)})"
                    row_cells.append(
                        {"text": fmt_ci(r["abs_gain"], r["abs_gain_low"], r["abs_gain_high"], 3),
                         "colour": red, "title": f"PSNR {fmt_num(r['mean_psnr'], 2)} dB"}
                    )  # fmt: skip
            rows.append({"model": str(model), "cells": row_cells})
        title = f"{dataset} | {threat_label(norm, group['eps_label'].iloc[0])} | {direction}"
        out.append({"title": title, "attacks": attacks, "rows": rows})
    return out


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def extra_plots(tables: LeaderboardTables, cells: Sequence[CellResult]) -> list[tuple[str, bytes]]:
    """Gain vs eps per model, and clean vs attacked score distributions of the worst attack."""
    plots: list[tuple[str, bytes]] = []
    ranked = tables.ranked
    if not ranked.empty and ranked["eps"].nunique() > 1:
        fig = _figure(7.5, 4.5)
        ax = fig.add_subplot()
        for (model, norm, direction), g in ranked.groupby(["model", "norm", "direction"]):
            g = g.sort_values("eps")
            ax.plot(
                g["eps"] * 255, g["abs_gain"], marker="o", label=f"{model} ({norm}, {direction})"
            )
        ax.set_xlabel("eps (x/255)")
        ax.set_ylabel("worst-case absolute gain")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        plots.append(("Gain vs budget", _png(fig)))
    by_key = {c.key: c for c in cells}
    worst = []
    for _, r in ranked.iterrows():
        key = next(
            (k for k in by_key if k.model == r["model"] and k.dataset == r["dataset"]
             and k.attack == r["worst_attack"] and np.isclose(k.eps, r["eps"])
             and k.direction == r["direction"]),
            None,
        )  # fmt: skip
        if key is not None:
            worst.append(by_key[key])
    examples = [c for c in cells if c.example_delta is not None and c.status == "done"][:16]
    if examples:
        cols = min(4, len(examples))
        nrows = math.ceil(len(examples) / cols)
        fig = _figure(2.6 * cols, 2.8 * nrows)
        for i, cell in enumerate(examples):
            ax = fig.add_subplot(nrows, cols, i + 1)
            ax.imshow(cell.example_delta)
            ax.set_title(
                f"{cell.key.attack} on {cell.key.model[:20]}\n{cell.key.eps_label}", fontsize=8
            )
            ax.axis("off")
        fig.tight_layout()
        plots.append(
            ("Learned perturbations (trained attacks; grey = 0, full colour = +-eps)", _png(fig))
        )
    worst = worst[:12]
    if worst:
        cols = min(4, len(worst))
        nrows = math.ceil(len(worst) / cols)
        fig = _figure(3.2 * cols, 2.4 * nrows)
        for i, cell in enumerate(worst):
            ax = fig.add_subplot(nrows, cols, i + 1)
            clean = cell.clean[np.isfinite(cell.clean)]
            adv = cell.attacked[np.isfinite(cell.attacked)]
            bins = np.histogram_bin_edges(np.concatenate([clean, adv]), bins=20)
            ax.hist(clean, bins=bins, alpha=0.6, label="clean")
            ax.hist(adv, bins=bins, alpha=0.6, label="attacked")
            ax.set_title(
                f"{cell.key.model[:24]}\n{cell.key.attack} {cell.key.eps_label}", fontsize=8
            )
            ax.tick_params(labelsize=7)
            if i == 0:
                ax.legend(fontsize=7)
        fig.tight_layout()
        plots.append(("Score distributions, clean vs attacked (worst attack)", _png(fig)))
    return plots


def export_tables(tables: LeaderboardTables, html_path: Path) -> list[Path]:
    """CSV and JSON of the ranking rows and per-cell scores beside the HTML file."""
    stem = html_path.with_suffix("")
    html_path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for name, frame in (("ranking", tables.rows), ("cells", tables.cells)):
        frame = frame.drop(columns=["logistic_params"], errors="ignore")
        for ext in ("csv", "json"):
            path = Path(f"{stem}.{name}.{ext}")
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            if ext == "csv":
                frame.to_csv(tmp, index=False)
            else:
                frame.to_json(tmp, orient="records", indent=1, default_handler=str)
            os.replace(tmp, path)
            written.append(path)
    return written


# ---------------------------------------------------------------------------------------
# HTML

_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{{ title }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1300px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
caption { text-align: left; font-weight: bold; padding: 0.3em 0; }
.muted { color: #666; font-size: 0.9em; }
dt { font-weight: bold; margin-top: 0.4em; }
img { max-width: 100%; }
table.sortable th { cursor: pointer; user-select: none; }
table.sortable th.asc::after { content: " \25B2"; }
table.sortable th.desc::after { content: " \25BC"; }
td.heat { text-align: right; font-variant-numeric: tabular-nums; }
</style>
</head>
<body>
<h1>{{ title }}</h1>
<p class="muted">{{ n_cells }} cells, {{ n_models }} models, {{ n_groups }} ranked threat model(s).
Gains are measured in quality-up scores normalised to [0,1]; lower worst-case gain ranks first.</p>

<p class="muted">Click a column header to sort. Exports of these tables:
<code>{{ export_names }}</code> beside this file.</p>

{% for group in groups %}
<h2>{{ group.title }}</h2>
{{ table(group.headers, group.rows) }}
{% else %}
<p>No ranked model.</p>
{% endfor %}

<h2>Robustness / accuracy trade-off</h2>
<img alt="worst-case absolute gain vs clean SROCC per model"
     src="data:image/png;base64,{{ plot_b64 }}">
{% for plot in extra_plots %}
<h2>{{ plot.title }}</h2>
<img alt="{{ plot.title }}" src="data:image/png;base64,{{ plot.b64 }}">
{% endfor %}


<h2>Per-attack matrix</h2>
<p class="muted">Absolute gain of every attack on every model (colour: gain relative to the
largest in the table; grey: not applicable or failed).</p>
{% for m in matrices %}
<table class="sortable">
<caption>{{ m.title }}</caption>
<thead><tr><th>Model</th>{% for a in m.attacks %}<th>{{ a }}</th>{% endfor %}</tr></thead>
<tbody>
{% for row in m.rows %}<tr><td>{{ row.model }}</td>{% for c in row.cells -%}
<td class="heat" style="background: {{ c.colour }}" title="{{ c.title }}">{{ c.text }}</td>{% endfor %}</tr>
{% endfor %}</tbody>
</table>
{% endfor %}

<h2>Not ranked ({{ no_gradient_reason }})</h2>
<p class="muted">These rows had no attack that could run on the model; they are not robust by
default and are never shown with a gain of 0.</p>
{% if not_ranked.rows %}{{ table(not_ranked.headers, not_ranked.rows) }}
{% else %}<p>None.</p>{% endif %}

<h2>Failed cells</h2>
{% if failed.rows %}{{ table(failed.headers, failed.rows) }}{% else %}<p>None.</p>{% endif %}

<h2>All cells</h2>
{{ table(all_cells.headers, all_cells.rows) }}

<h2>Column definitions</h2>
<dl>
{% for name, text in definitions %}<dt>{{ name }}</dt><dd>{{ text }}</dd>
{% endfor %}
</dl>

<h2>Provenance</h2>
<table>
{% for key, value in provenance %}<tr><th>{{ key }}</th><td>{{ value }}</td></tr>
{% endfor %}
</table>
<script>
// Sort a table by the clicked column: numbers (the first one in a cell) numerically, else text.
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("thead th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var asc = !th.classList.contains("asc");
      table.querySelectorAll("thead th").forEach(function (h) { h.classList.remove("asc", "desc"); });
      th.classList.add(asc ? "asc" : "desc");
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      function key(row) {
        var text = row.cells[col] ? row.cells[col].textContent.trim() : "";
        var m = text.match(/^-?\\d+(\\.\\d+)?(e-?\\d+)?/);
        return m ? parseFloat(m[0]) : text.toLowerCase();
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        var bothNum = typeof x === "number" && typeof y === "number";
        var c = bothNum ? x - y : (typeof x === "number" ? -1 : typeof y === "number" ? 1 : (x < y ? -1 : x > y ? 1 : 0));
        return asc ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
</script>
</body>
</html>
"""

_TABLE_MACRO = """<table class="sortable">
<thead><tr>{% for h in headers %}<th>{{ h }}</th>{% endfor %}</tr></thead>
<tbody>
{% for row in rows %}<tr>{% for value, numeric in row -%}
<td{% if numeric %} class="num"{% endif %}>{{ value }}</td>{% endfor %}</tr>
{% endfor %}</tbody>
</table>"""


def _ranked_rows(group: pd.DataFrame) -> list[list[tuple[str, bool]]]:
    out = []
    for _, r in group.iterrows():
        out.append(
            [
                (fmt_num(r["rank"]), True),
                (str(r["model"]), False),
                (str(r["source"]), False),
                (str(r["kind"]), False),
                (str(r["gradient"]), False),
                (fmt_params(r["params"]), True),
                (fmt_ci(r["srocc_clean"], r["srocc_clean_low"], r["srocc_clean_high"]), True),
                (
                    fmt_ci(
                        r["plcc_logistic_clean"],
                        r["plcc_logistic_clean_low"],
                        r["plcc_logistic_clean_high"],
                    ),
                    True,
                ),
                (str(r["worst_attack"]), False),
                (fmt_ci(r["abs_gain"], r["abs_gain_low"], r["abs_gain_high"], 4), True),
                (fmt_num(r["certified_gain"], 4), True),
                (fmt_num(r["rel_gain"], 4), True),
                (fmt_num(r["robustness"], 2), True),
                (fmt_num(r["wasserstein"], 4), True),
                (fmt_num(r["srocc_attacked"]), True),
                (fmt_num(r["n_images"]), True),
                (fmt_num(r["n_attacks_run"]), True),
                (fmt_num(r["n_not_applicable"]), True),
                (fmt_num(r["n_failed"]), True),
                (str(r["note"]), False),
            ]
        )
    return out


_RANKED_HEADERS = [
    "Rank", "Model", "Source", "Kind", "Gradient", "Params", "Clean SROCC", "Clean PLCC",
    "Worst attack", "Abs gain", "Certified cap", "Rel gain", "R", "W1", "Attacked SROCC", "Images",
    "Attacks run", "N/A", "Failed", "Note",
]  # fmt: skip


def render_html(
    cells: Sequence[CellResult],
    out_path: str | os.PathLike[str],
    title: str = "IQA adversarial-robustness leaderboard",
    *,
    n_boot: int = 1000,
    seed: int = 0,
    tables: LeaderboardTables | None = None,
) -> Path:
    """Write the leaderboard as ONE self-contained HTML file (no network, no external files).

    Every user-supplied string goes through jinja2 autoescaping; the plot is an inline
    base64 PNG. Pass `tables` to reuse an earlier `build_tables` result. Written atomically.
    """
    import jinja2
    import markupsafe

    tables = tables if tables is not None else build_tables(cells, n_boot=n_boot, seed=seed)
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    table_tpl = env.from_string(_TABLE_MACRO)

    def table(headers: Sequence[str], rows: Sequence[Sequence[tuple[str, bool]]]) -> Any:
        return markupsafe.Markup(table_tpl.render(headers=headers, rows=rows))

    groups = []
    for (dataset, norm, _eps, direction), group in tables.threat_groups():
        groups.append(
            {
                "title": " | ".join(
                    [
                        dataset,
                        threat_label(norm, group["eps_label"].iloc[0]),
                        f"direction {direction}",
                    ]
                ),
                "headers": _RANKED_HEADERS,
                "rows": _ranked_rows(group),
            }
        )

    nr = tables.not_ranked
    not_ranked_rows = [
        [
            (str(r["model"]), False),
            (str(r["dataset"]), False),
            (threat_label(r["norm"], r["eps_label"]), False),
            (str(r["direction"]), False),
            (str(r["source"]), False),
            (str(r["kind"]), False),
            (str(r["gradient"]), False),
            (fmt_ci(r["srocc_clean"], r["srocc_clean_low"], r["srocc_clean_high"]), True),
            (
                fmt_ci(
                    r["plcc_logistic_clean"],
                    r["plcc_logistic_clean_low"],
                    r["plcc_logistic_clean_high"],
                ),
                True,
            ),
            (fmt_num(r["n_not_applicable"]), True),
            (fmt_num(r["n_failed"]), True),
            (str(r["reason"]), False),
        ]
        for _, r in nr.iterrows()
    ]
    fl = tables.failed
    failed_rows = [
        [
            (str(r["model"]), False),
            (str(r["dataset"]), False),
            (str(r["attack"]), False),
            (threat_label(r["norm"], r["eps_label"]), False),
            (str(r["direction"]), False),
            (str(r["outcome_reason"]), False),
        ]
        for _, r in fl.iterrows()
    ]
    all_rows = (
        [
            [
                (str(r["model"]), False),
                (str(r["dataset"]), False),
                (str(r["attack"]), False),
                (threat_label(r["norm"], r["eps_label"]), False),
                (str(r["direction"]), False),
                (str(r["status"]), False),
                (str(r["outcome"]), False),
                (fmt_ci(r["abs_gain"], r["abs_gain_low"], r["abs_gain_high"], 4), True),
                (fmt_num(r["robustness"], 2), True),
                (fmt_num(r["srocc_attacked"]), True),
                (fmt_num(r["mean_psnr"], 2), True),
                (fmt_num(r["max_linf"], 4), True),
                (fmt_num(r["n_pairs"]), True),
                (str(r["outcome_reason"] or r["notes"]), False),
            ]
            for _, r in tables.cells.iterrows()
        ]
        if len(tables.cells)
        else []
    )

    out = Path(out_path)
    exports = export_tables(tables, out)
    page = env.from_string(_TEMPLATE).render(
        title=title,
        export_names=", ".join(p.name for p in exports),
        matrices=attack_matrices(tables),
        extra_plots=[
            {"title": t, "b64": base64.b64encode(png).decode("ascii")}
            for t, png in extra_plots(tables, cells)
        ],
        table=table,
        n_cells=len(tables.cells),
        n_models=int(tables.cells["model"].nunique()) if len(tables.cells) else 0,
        n_groups=len(groups),
        plot_b64=base64.b64encode(tradeoff_png(tables)).decode("ascii"),
        groups=groups,
        no_gradient_reason=NO_GRADIENT_REASON,
        not_ranked={
            "headers": [
                "Model",
                "Dataset",
                "Threat",
                "Direction",
                "Source",
                "Kind",
                "Gradient",
                "Clean SROCC",
                "Clean PLCC",
                "N/A",
                "Failed",
                "Reason",
            ],
            "rows": not_ranked_rows,
        },
        failed={
            "headers": ["Model", "Dataset", "Attack", "Threat", "Direction", "Reason"],
            "rows": failed_rows,
        },
        all_cells={
            "headers": [
                "Model",
                "Dataset",
                "Attack",
                "Threat",
                "Direction",
                "Status",
                "Outcome",
                "Abs gain",
                "R",
                "Attacked SROCC",
                "PSNR",
                "max Linf",
                "Images",
                "Reason / notes",
            ],
            "rows": all_rows,
        },
        definitions=list(COLUMN_DEFINITIONS.items()),
        provenance=provenance(cells, tables),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    return out


# ---------------------------------------------------------------------------------------
# terminal


def terminal_table(
    cells: Sequence[CellResult],
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
    tail_head = ["worst attack", "abs gain [95% CI]", "R"]
    lines: list[tuple[list[str], list[str] | str]] = []
    for _, r in pd.concat([tables.ranked, tables.not_ranked], ignore_index=True).iterrows():
        common = [
            _printable(r["dataset"], 20),
            threat_label(r["norm"], r["eps_label"]),
            str(r["direction"]),
            fmt_num(r["rank"]) if r["ranked"] else "-",
            _printable(r["model"], 32),
            fmt_num(r["srocc_clean"]),
        ]
        if r["ranked"]:
            tail: list[str] | str = [
                _printable(r["worst_attack"], 20),
                fmt_ci(r["abs_gain"], r["abs_gain_low"], r["abs_gain_high"], 4),
                fmt_num(r["robustness"], 2),
            ]
        else:  # free text that may run past the gain columns
            tail = f"not ranked: {_printable(r['reason'], 90)}"
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
                f"  {_printable(r['model'], 32)} | {_printable(r['dataset'], 20)}"
                f" | {_printable(r['attack'], 20)} @ {threat_label(r['norm'], r['eps_label'])}"
                f" {r['direction']}: {_printable(r['outcome_reason'], 100)}"
            )
    return "\n".join(out)
