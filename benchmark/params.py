"""Parameter counts, one rule for every caller (model metadata, cards, pruning reports)."""

from __future__ import annotations

from typing import Any

from torch import nn


def count_parameters(module: Any) -> int | None:
    """Elements in every parameter of `module`; None for a callable that is not a module."""
    if not isinstance(module, nn.Module):
        return None
    return sum(p.numel() for p in module.parameters())
