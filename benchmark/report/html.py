"""The leaderboard as ONE self-contained HTML page (no network, no external files).

The page is `templates/leaderboard.html.j2`; this module turns the tables into the rows of
text it shows. Every user-supplied string goes through jinja2 autoescaping; plots are inline
base64 PNGs.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from benchmark.paths import atomic_write
from benchmark.report import jinja
from benchmark.report.export import export_tables
from benchmark.report.formatting import (
    fmt_ci,
    fmt_images,
    fmt_num,
    fmt_params,
    fmt_rank,
    threat_label,
)
from benchmark.report.plots import extra_plots, tradeoff_png
from benchmark.report.provenance import provenance
from benchmark.report.scores import UNITS
from benchmark.report.tables import (
    GROUP_KEYS,
    NO_GRADIENT_REASON,
    LeaderboardTables,
    build_tables,
)
from benchmark.store.cell import Cell

Row = list[tuple[str, bool]]  # (text, right-aligned number?) per column

COLUMN_DEFINITIONS: dict[str, str] = {
    "Rank": "Position within one dataset and threat model by worst-case absolute gain "
    "(lower gain ranks first; ties share a rank). '~' marks a model whose gain interval "
    "overlaps the next better model's: the data do not separate the two.",
    "Model": "Registered model name.",
    "Source": "Where the model comes from: pyiqa, zoo (trained here), robustblock, plugin.",
    "Kind": "NR (no-reference) or FR (full-reference).",
    "Gradient": "ok: the model has a usable input gradient; none: its gradient was absent, "
    "zero or non-finite on the first batch, so gradient attacks are not applicable.",
    "Params": "Number of trainable parameters.",
    "Clean SROCC": "Spearman correlation of clean scores with MOS, with a 95% bootstrap "
    "interval over source photographs (then images within them) where the images share "
    "photographs, else over images.",
    "Clean PLCC": "Pearson correlation of clean scores with MOS after the VQEG 4-parameter "
    "logistic mapping fitted on clean scores (plain PLCC where the fit failed), 95% CI.",
    "Worst attack": "The attack with the largest score inflation in the attacked direction "
    "among those that ran on this model.",
    "Abs gain": "G_abs = mean(q' - q) of the worst attack, q and q' the clean and attacked "
    "scores in quality-up orientation normalised to [0,1] by the declared score range "
    "(else min-max of the clean scores); 95% bootstrap CI over source photographs (then "
    "images) where they share photographs, else over images. Not clipped: values "
    "beyond the range show inflation beyond it.",
    "Certified cap": "Provable upper bound on the absolute gain of ANY perturbation within the "
    "budget: L * eps * sqrt(3HW) / (score range), with L the model's certified L2 Lipschitz "
    "bound from its card (RobustBlock models); for a smoothed model (rs/ms), the largest "
    "certified gain of its images (upper bound of the smoothed score minus its clean value, "
    "within the L2 ball that contains the budget, confidence 1 - alpha per image); '-' where "
    "no bound is known. A gain above it is flagged in Note as a bug.",
    "[score range] / [MSU min-max]": "The units of the gain columns. Score range (the "
    "default): scores normalised by the model's declared range. MSU min-max (`leaderboard "
    "--units msu`): by the min and max of each cell's clean scores, as the MSU metrics "
    "robustness benchmark does, so gains compare with its published figures.",
    "Rel gain": "G_rel = mean((q' - q) / (q + 1)) of the worst attack.",
    "R": "Robustness score mean(log10(max(1-q, q) / (|q - q'| + 1e-6))) of the worst attack; "
    "higher is more robust, about 6 for an unchanged score.",
    "W1": "Wasserstein-1 distance between clean and attacked score distributions, signed by "
    "the mean shift.",
    "Attacked SROCC": "Spearman correlation of attacked scores with MOS.",
    "Images": "Images with finite clean and attacked scores in the worst-attack cell, and "
    "the source photographs they were cut from where intervals resample those.",
    "Attacks run": "Attack cells that ran and count for this model.",
    "N/A": "Attack cells that do not apply to this model (e.g. gradient attacks on a model "
    "without input gradient).",
    "Failed": "Attack cells that failed or produced no finite score (see the failures table).",
    "Note": "Caveats of the row: for a purified model, how gradient attacks reached it (BPDA "
    "and its stand-in for a non-differentiable purifier, EOT draws for a random one or a "
    "smoothed model); a gain above the certified bound (BUG) and certificate abstentions.",
}


GAIN_HEADERS = frozenset({"Abs gain", "Rel gain", "R", "W1"})

_RANKED_HEADERS = [
    "Rank", "Model", "Source", "Kind", "Gradient", "Params", "Clean SROCC", "Clean PLCC",
    "Worst attack", "Abs gain", "Certified cap", "Rel gain", "R", "W1", "Attacked SROCC", "Images",
    "Attacks run", "N/A", "Failed", "Note",
]  # fmt: skip

_NOT_RANKED_HEADERS = [
    "Model", "Dataset", "Threat", "Direction", "Source", "Kind", "Gradient", "Clean SROCC",
    "Clean PLCC", "N/A", "Failed", "Reason",
]  # fmt: skip
_FAILED_HEADERS = ["Model", "Dataset", "Attack", "Threat", "Direction", "Reason"]
_ALL_CELLS_HEADERS = [
    "Model", "Dataset", "Attack", "Threat", "Direction", "Status", "Outcome", "Abs gain", "R",
    "Attacked SROCC", "PSNR", "max Linf", "Images", "Reason / notes",
]  # fmt: skip


def _ranked_rows(group: pd.DataFrame) -> list[Row]:
    out = []
    for r in group.to_dict("records"):
        out.append(
            [
                (fmt_rank(r["rank"], r.get("tied_with")), True),
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
                (fmt_images(r["n_images"], r.get("n_groups"), r.get("ci_unit")), True),
                (fmt_num(r["n_attacks_run"]), True),
                (fmt_num(r["n_not_applicable"]), True),
                (fmt_num(r["n_failed"]), True),
                (str(r["note"]), False),
            ]
        )
    return out


def _not_ranked_rows(frame: pd.DataFrame) -> list[Row]:
    return [
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
        for r in frame.to_dict("records")
    ]


def _failed_rows(frame: pd.DataFrame) -> list[Row]:
    return [
        [
            (str(r["model"]), False),
            (str(r["dataset"]), False),
            (str(r["attack"]), False),
            (threat_label(r["norm"], r["eps_label"]), False),
            (str(r["direction"]), False),
            (str(r["outcome_reason"]), False),
        ]
        for r in frame.to_dict("records")
    ]


def _all_cell_rows(frame: pd.DataFrame) -> list[Row]:
    if not len(frame):
        return []
    return [
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
        for r in frame.to_dict("records")
    ]


def attack_matrices(tables: LeaderboardTables) -> list[dict[str, Any]]:
    """One model x attack table of absolute gains per (dataset, norm, eps, direction)."""
    cells = tables.cells
    if cells.empty:
        return []
    cols = ["attack", "model", "outcome", "outcome_reason", "effect", "abs_gain",
            "abs_gain_low", "abs_gain_high", "mean_psnr", "eps_label"]  # fmt: skip
    out = []
    for (dataset, norm, _eps, direction), group in cells.groupby(GROUP_KEYS, sort=True):
        records = group[cols].to_dict("records")
        attacks = sorted({str(r["attack"]) for r in records})
        counted = [abs(r["effect"]) for r in records if r["outcome"] == "counted"]
        scale = max(counted) if counted and max(counted) > 0 else 1.0
        by_cell = {(str(r["model"]), str(r["attack"])): r for r in records}
        rows = []
        for model in sorted({str(r["model"]) for r in records}):
            row_cells = []
            for a in attacks:
                r = by_cell.get((model, a))
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
            rows.append({"model": model, "cells": row_cells})
        title = f"{dataset} | {threat_label(norm, records[0]['eps_label'])} | {direction}"
        out.append({"title": title, "attacks": attacks, "rows": rows})
    return out


def with_units(headers: list[str], units: str) -> list[str]:
    """Headers with the gain columns naming their units ("Abs gain [score range]")."""
    return [f"{h} [{UNITS[units]}]" if h in GAIN_HEADERS else h for h in headers]


def render_html(
    cells: Sequence[Cell],
    out_path: str | os.PathLike[str],
    title: str = "IQA adversarial-robustness leaderboard",
    *,
    n_boot: int = 1000,
    seed: int = 0,
    tables: LeaderboardTables | None = None,
) -> Path:
    """Write the page, and its CSV/JSON exports beside it, atomically.

    Pass `tables` to reuse an earlier `build_tables` result.
    """
    tables = tables if tables is not None else build_tables(cells, n_boot=n_boot, seed=seed)
    units = f"gains in {UNITS[tables.units]} units"
    groups = [
        {
            "title": " | ".join(
                [
                    dataset,
                    threat_label(norm, group["eps_label"].iloc[0]),
                    f"direction {direction}",
                    units,
                ]
            ),
            "headers": with_units(_RANKED_HEADERS, tables.units),
            "rows": _ranked_rows(group),
        }
        for (dataset, norm, _eps, direction), group in tables.threat_groups()
    ]
    out = Path(out_path)
    exports = export_tables(tables, out)
    page = jinja.render(
        "leaderboard.html.j2",
        title=title,
        export_names=", ".join(p.name for p in exports),
        matrices=attack_matrices(tables),
        extra_plots=[
            {"title": t, "b64": base64.b64encode(png).decode("ascii")}
            for t, png in extra_plots(tables, cells)
        ],
        n_cells=len(tables.cells),
        n_models=int(tables.cells["model"].nunique()) if len(tables.cells) else 0,
        n_groups=len(groups),
        plot_b64=base64.b64encode(tradeoff_png(tables)).decode("ascii"),
        groups=groups,
        no_gradient_reason=NO_GRADIENT_REASON,
        not_ranked={"headers": _NOT_RANKED_HEADERS, "rows": _not_ranked_rows(tables.not_ranked)},
        failed={"headers": _FAILED_HEADERS, "rows": _failed_rows(tables.failed)},
        all_cells={
            "headers": with_units(_ALL_CELLS_HEADERS, tables.units),
            "rows": _all_cell_rows(tables.cells),
        },
        definitions=list(COLUMN_DEFINITIONS.items()),
        provenance=provenance(cells, tables),
    )
    atomic_write(out, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return out
