"""Checks that an attack's optimisation worked, so a failing attacker never reads as robustness.

Used by `compare` (warnings) and the leaderboard (a note beside the ranked gain).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from benchmark.report.scores import paired_difference
from benchmark.store.cell import CellResult

CellGroup = tuple[str, str, str, float, str]  # model, dataset, norm, eps, direction


def _group(cell: CellResult) -> CellGroup:
    k = cell.key
    return (k.model, k.dataset, str(cell.attack_config.get("norm", "linf")), k.eps, k.direction)


def _steps(cell: CellResult) -> int | None:
    """Steps of a signed-gradient attack (1 for a one-step one); None for other families."""
    cfg = cell.attack_config
    if cfg.get("family") != "gradient" or cfg.get("trainable") or not cell.uses_gradient:
        return None
    return int((cfg.get("params") or {}).get("steps", 1))


def failing_iterations(cells: Sequence[CellResult]) -> dict[CellGroup, list[str]]:
    """Iterative attacks that find significantly less than one step of the same kind.

    Why: k projected steps can always retrace a single step's direction, so on a model with
    honest gradients they find at least as much (Carlini et al. 2019, "On Evaluating
    Adversarial Robustness"). When they find less, the optimisation is failing (a stochastic
    defense whose EOT gradient is too noisy, or obfuscated gradients) and every gradient
    attack's gain on this model is a lower bound, not a measure of its robustness.
    """
    groups: dict[CellGroup, list[tuple[int, CellResult]]] = defaultdict(list)
    for cell in cells:
        steps = _steps(cell)
        if cell.status == "done" and steps is not None:
            groups[_group(cell)].append((steps, cell))
    out: dict[CellGroup, list[str]] = {}
    for group, members in groups.items():
        for one in (c for k, c in members if k == 1):
            losers = []
            for steps, many in members:
                if steps <= 1:
                    continue
                diff, (low, _), _, n = paired_difference(one, many)
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
