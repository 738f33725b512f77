"""The ranking rules: per-cell scores -> one row per model, dataset, threat model and direction.

Data flow: `CellResult`s -> `summarize_cells` (one row of scores per cell) -> `build_tables`
(one row per model, dataset, threat model (norm, eps) and direction, ranked by the worst
attack) -> the HTML page, the exports and the terminal table. Later views read the same two
frames (`LeaderboardTables.cells` keeps every per-cell score), not new computations.

Ranking rules (docs/architecture.md, "The gradient check" and "The leaderboard"):
- within one (dataset, norm, eps, direction) the worst attack of a model is the one with the
  largest inflation in the attack's direction (largest gain for "up", most negative gain for
  "down"); models are ranked by that worst-case absolute gain, lower is better;
- only cells that really ran count. A model without input gradient is never ranked on
  gradient attacks (a zero gain there means "could not attack", not "robust"): with no
  gradient-free attack it goes to the "not ranked" table with its clean correlations;
- failed cells are listed with their reason; a model with some failed attacks is ranked on
  the rest and flagged as incomplete;
- where an iterative signed-gradient attack finds significantly less than one FGSM step
  (`sanity.failing_iterations`), the ranked gain is noted as a lower bound.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd

from benchmark.errors import StoreError
from benchmark.report import certified, scores
from benchmark.report.certified import certificate_note
from benchmark.report.sanity import CellGroup, failing_iterations
from benchmark.report.scores import check_units, summarize_cell
from benchmark.store.cell import Cell
from benchmark.store.hdf5 import json_default

GROUP_KEYS = ["dataset", "norm", "eps", "direction"]
FAILING_ITERATIONS_NOTE = (
    "iterative attacks found less than one FGSM step (iterations failing: stochastic or "
    "obfuscated gradients): the gain is a lower bound"
)
NO_GRADIENT_REASON = "no input gradient; gradient attacks not applicable"


def _outcome(cell: Cell, summary: Mapping[str, Any]) -> tuple[str, str]:
    """("counted" | "not_applicable" | "failed", why) for one cell."""
    if cell.status == "failed":
        return "failed", cell.reason or "failed (no reason recorded)"
    if cell.status == "not_applicable":
        return "not_applicable", cell.reason or "not applicable"
    if cell.gradient == "none" and cell.uses_gradient:
        return "not_applicable", "gradient attack on a model without input gradient"
    if not np.isfinite(summary["abs_gain"]):
        return "failed", summary["notes"] or "no finite gain"
    return "counted", ""


# The scoring code's fingerprint: a summary stored by other code is recomputed, never reused.
SCORES_CODE = hashlib.sha1(
    b"".join(Path(m.__file__).read_bytes() for m in (scores, certified))
).hexdigest()[:16]


def _summary_of(n_boot: int, seed: int, units: str) -> dict[str, Any]:
    """What a summary depends on besides the cell. Units other than the default are named,
    so summaries stored before units existed still match the default."""
    out: dict[str, Any] = {"n_boot": n_boot, "seed": seed, "code": SCORES_CODE}
    return out if units == "range" else out | {"units": units}


def cell_summary(
    cell: Cell, n_boot: int = 1000, seed: int = 0, units: str = "range"
) -> dict[str, Any]:
    """`scores.summarize_cell`, stamped with what it depends on (bootstrap, scoring code).

    The runner stores it beside the cell when the cell is written, so a leaderboard of many
    cells reads it instead of recomputing (`stored_summary`)."""
    out = summarize_cell(cell, n_boot=n_boot, seed=seed, units=units)
    out["summary_of"] = _summary_of(n_boot, seed, units)
    # as it reads back from the file, so a fresh and a stored summary render the same
    return json.loads(json.dumps(out, default=json_default))


def stored_summary(
    cell: Cell, n_boot: int = 1000, seed: int = 0, units: str = "range"
) -> dict[str, Any]:
    """The cell's stored summary when it was computed the same way, else a fresh one."""
    stored = cell.summary
    if stored and stored.get("summary_of") == _summary_of(n_boot, seed, units):
        return dict(stored)
    return cell_summary(cell, n_boot=n_boot, seed=seed, units=units)


def summarize_cells(
    cells: Iterable[Cell], n_boot: int = 1000, seed: int = 0, units: str = "range"
) -> pd.DataFrame:
    """One row of scores per cell (see `scores.summarize_cell`) plus its ranking outcome."""
    rows = []
    seen: set[Any] = set()
    for cell in cells:
        if cell.key in seen:
            raise StoreError(f"duplicate cell in results: {cell.key}")
        seen.add(cell.key)
        summary = stored_summary(cell, n_boot=n_boot, seed=seed, units=units)
        summary.pop("summary_of", None)
        summary["outcome"], summary["outcome_reason"] = _outcome(cell, summary)
        summary["uses_gradient"] = cell.uses_gradient
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
    "n_groups": "n_groups",
    "ci_unit": "ci_unit",
    "certified_gain": "certified_gain",
    "effect": "effect",
}


def _model_rows(
    cells: pd.DataFrame, failing: Mapping[CellGroup, list[str]] = MappingProxyType({})
) -> pd.DataFrame:
    """Aggregate per-cell rows into one row per (dataset, norm, eps, direction, model).

    `failing`: groups whose iterative attacks found less than one FGSM step
    (`sanity.failing_iterations`); their gain is noted as a lower bound.
    """
    # Clean correlations are a property of (model, dataset): take the cell with most MOS pairs.
    best_clean = (
        cells.sort_values(["n_mos_clean"], ascending=False, kind="stable")
        .drop_duplicates(["model", "dataset"])
        .set_index(["model", "dataset"])
    )
    clean_of = dict(zip(best_clean.index, best_clean[_CLEAN_COLS].to_dict("records"), strict=True))
    # plain records grouped in Python: a pandas group per model and threat costs milliseconds,
    # which thousands of groups turn into minutes
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for rec in cells.to_dict("records"):
        groups.setdefault(tuple(rec[k] for k in [*GROUP_KEYS, "model"]), []).append(rec)
    rows = []
    for key in sorted(groups):
        group = groups[key]
        dataset, norm, eps, direction, model = key
        first = group[0]
        counted = [r for r in group if r["outcome"] == "counted"]
        n_na = sum(r["outcome"] == "not_applicable" for r in group)
        n_failed = sum(r["outcome"] == "failed" for r in group)
        gradient = "none" if any(r["gradient"] == "none" for r in group) else "ok"
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
            "attacks": ", ".join(sorted(str(r["attack"]) for r in group)),
        }
        row.update(clean_of[(model, dataset)])
        notes = [f"attacker: {first['adaptive']}"] if first.get("adaptive") else []
        if counted:
            worst = min(counted, key=lambda r: (-r["effect"], str(r["attack"])))
            row.update({dst: worst[src] for src, dst in _WORST_COLS.items()})
            row["ranked"] = True
            row["reason"] = ""
            if gradient == "none":
                notes.append("ranked on gradient-free attacks only")
            if n_failed:
                notes.append(f"{n_failed} attack(s) failed: worst case over the rest")
            if (model, dataset, norm, eps, direction) in failing:
                notes.append(FAILING_ITERATIONS_NOTE)
            notes += certificate_note(counted)
        else:
            row.update({dst: np.nan for dst in _WORST_COLS.values()})
            row["worst_attack"] = ""
            row["n_images"] = int(max(r["n_images"] for r in group))
            row["n_groups"], row["ci_unit"] = first.get("n_groups"), first.get("ci_unit", "image")
            row["ranked"] = False
            if gradient == "none" and n_na:
                reason = NO_GRADIENT_REASON
            elif n_na:
                reasons = sorted(
                    {r["outcome_reason"] for r in group if r["outcome"] == "not_applicable"}
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
        _mark_inseparable(frame)
    return frame


def _mark_inseparable(frame: pd.DataFrame) -> None:
    """`tied_with`: the next better model when the two gain intervals overlap, else "".

    Why: a rank is a point estimate; where the intervals (over source photographs, when the
    images share them) overlap, the data cannot order the two models, and the table says so
    instead of letting the rank speak."""
    frame["tied_with"] = ""
    ranked = frame[frame["ranked"].astype(bool)]
    for _, group in ranked.groupby(GROUP_KEYS, sort=False):
        above: Any = None
        for idx, row in group.sort_values(["rank", "model"], kind="stable").iterrows():
            # no interval: nothing separates them
            if above is not None and separation(row, above) in (None, "not separated"):
                frame.at[idx, "tied_with"] = above["model"]
            above = row


def separation(a: Mapping[str, Any], b: Mapping[str, Any]) -> str | None:
    """Where `a`'s worst-case gain interval lies against `b`'s: "lower", "higher", "not
    separated" (they overlap), or None when either has no interval."""
    vals = [a["abs_gain_low"], a["abs_gain_high"], b["abs_gain_low"], b["abs_gain_high"]]
    if not np.all(np.isfinite(np.asarray(vals, dtype=float))):
        return None
    if a["abs_gain_high"] < b["abs_gain_low"]:
        return "lower"
    if a["abs_gain_low"] > b["abs_gain_high"]:
        return "higher"
    return "not separated"


@dataclass
class LeaderboardTables:
    """`rows`: one row per (dataset, norm, eps, direction, model); `cells`: one per cell."""

    rows: pd.DataFrame
    cells: pd.DataFrame
    n_boot: int = 1000
    seed: int = 0
    units: str = "range"  # how gains are normalised (`scores.UNITS`)

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
    cells: Sequence[Cell], n_boot: int = 1000, seed: int = 0, units: str = "range"
) -> LeaderboardTables:
    """Score every cell and aggregate into ranking rows (see the module docstring for rules).

    `units`: "range" (the model's score range) or "msu" (min-max of each cell's clean
    scores, the MSU benchmark's scale), see `scores.UNITS`."""
    per_cell = summarize_cells(cells, n_boot=n_boot, seed=seed, units=check_units(units))
    failing = failing_iterations(cells, per_cell)
    rows = _model_rows(per_cell, failing) if len(per_cell) else pd.DataFrame()
    if len(rows):
        rows.insert(rows.columns.get_loc("abs_gain"), "units", units)
    return LeaderboardTables(rows=rows, cells=per_cell, n_boot=n_boot, seed=seed, units=units)
