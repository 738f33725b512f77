"""Example defense plugin: a 3x3 median-filter purification in front of a zoo model.

    python -m benchmark compare --defense examples/median_defense.py:MedianDefense

The class needs no arguments; `base` names the baseline the report compares against.
The median filter is differentiable almost everywhere, so gradient attacks see through it
(an adaptive attack); for a non-differentiable step use BPDA (see
benchmark/models/purified.py), or the built-in form `median3+<model>`.
"""

import torch
import torch.nn.functional as F

from benchmark.models.registry import create_model


class MedianDefense(torch.nn.Module):
    """3x3 median filter, then the base model."""

    base = "cnniqa-builtin"
    kind = "NR"
    lower_better = False
    score_range = (0.0, 1.0)

    def __init__(self, base: str | None = None) -> None:
        super().__init__()
        self.model = create_model(base or self.base)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = F.pad(x, (1, 1, 1, 1), mode="reflect").unfold(2, 3, 1).unfold(3, 3, 1)
        filtered = patches.reshape(*patches.shape[:4], 9).median(dim=-1).values
        return self.model.score(filtered)
