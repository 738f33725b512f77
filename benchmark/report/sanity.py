"""Checks that an attack's optimisation worked, so a failing attacker never reads as robustness.

Used by `compare` (warnings) and the leaderboard (a note beside the ranked gain).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import pandas as pd

from benchmark.report.scores import paired_difference
from benchmark.store.cell import Cell, CellKey

CellGroup = tuple[str, str, str, float, str]  # model, dataset, norm, eps, direction


def _group(cell: Cell) -> CellGroup:
    k = cell.key
    return (k.model, k.dataset, str(cell.attack_config.get("norm", "linf")), k.eps, k.direction)


def _steps(cell: Cell) -> int | None:
    """Steps of a signed-gradient attack (1 for a one-step one); None for other families."""
    cfg = cell.attack_config
    if cfg.get("family") != "gradient" or cfg.get("trainable") or not cell.uses_gradient:
        return None
    return int((cfg.get("params") or {}).get("steps", 1))


def _surely_not_less(one: Cell, many: Cell, gains: dict[CellKey, Any]) -> bool:
    """True when per-cell summaries already show the iterations found at least as much.

    Why: the paired bootstrap reads both cells' arrays; on a leaderboard of thousands of
    cells it is run only where it can find something. With every image scored in both
    cells (same split, limit and sample, none dropped) the paired mean difference is the difference of the
    mean gains, and a 95% CI cannot lie above zero when that mean is not above it (`effect`:
    the gain signed by the attack's direction).
    """
    a, b = gains.get(one.key), gains.get(many.key)
    if a is None or b is None:
        return False
    same_images = all(one.meta.get(k) == many.meta.get(k) for k in ("split", "limit", "sample"))
    return (
        same_images
        and a["n_dropped"] == 0 == b["n_dropped"]
        and a["n_pairs"] == len(one) == len(many) == b["n_pairs"]
        and a["effect"] <= b["effect"]
    )


def failing_iterations(
    cells: Sequence[Cell], summaries: pd.DataFrame | None = None
) -> dict[CellGroup, list[str]]:
    """Iterative attacks that find significantly less than one step of the same kind.

    Why: k projected steps can always retrace a single step's direction, so on a model with
    honest gradients they find at least as much (Carlini et al. 2019, "On Evaluating
    Adversarial Robustness"). When they find less, the optimisation is failing (a stochastic
    defense whose EOT gradient is too noisy, or obfuscated gradients) and every gradient
    attack's gain on this model is a lower bound, not a measure of its robustness.
    """
    gains: dict[CellKey, Any] = {}
    if summaries is not None and len(summaries):
        for row in summaries[["model", "dataset", "attack", "eps", "direction", "effect",
                              "n_dropped", "n_pairs"]].itertuples(index=False):  # fmt: skip
            key = CellKey(row.model, row.dataset, row.attack, float(row.eps), row.direction)
            gains[key] = {"effect": row.effect, "n_dropped": row.n_dropped,
                          "n_pairs": row.n_pairs}  # fmt: skip
    groups: dict[CellGroup, list[tuple[int, Cell]]] = defaultdict(list)
    for cell in cells:
        steps = _steps(cell)
        if cell.status == "done" and steps is not None:
            groups[_group(cell)].append((steps, cell))
    out: dict[CellGroup, list[str]] = {}
    for group, members in groups.items():
        for one in (c for k, c in members if k == 1):
            losers = []
            for steps, many in members:
                if steps <= 1 or _surely_not_less(one, many, gains):
                    continue
                diff, (low, high), _, n = paired_difference(one.load(), many.load())
                if one.key.direction == "down":  # there "less" means less negative
                    diff, low = -diff, -high
                if n and low > 0:
                    losers.append(f"{many.key.attack} ({steps} steps, -{diff:.3f})")
            if losers:
                out.setdefault(group, []).append(
                    f"at {one.key.eps_label} {', '.join(sorted(losers))} gain significantly less "
                    f"than one-step {one.key.attack} (paired 95% CIs): the iterations are failing "
                    "(stochastic or obfuscated gradients); treat every gradient-attack gain on "
                    "this model as a lower bound"
                )
    return out
