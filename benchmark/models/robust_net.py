"""RobustBlock networks as zoo cards describe them: the base architecture converted again,
then shrunk to the pruned widths its checkpoint holds.

Why here: loading a `robust-*` card is a model-layer job; the pipeline that makes such a
card (`benchmark.train.robustify`) builds on these functions, never the other way round.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from benchmark.errors import CheckpointError
from benchmark.models.archs import PatchAverage, WithMSCN
from benchmark.robust.convert import RobustifyReport, robustify
from benchmark.robust.explicit import ExplicitOrthConv2d
from benchmark.robust.layers import OrthLinear
from benchmark.robust.orthconv import OrthConv2d
from benchmark.robust.prune import PRUNABLE, slice_layer

__all__ = ["convert_network", "core_parent", "layer_widths", "resize_to_state"]


def core_parent(net: nn.Module) -> tuple[nn.Module | None, str | None, nn.Module]:
    """(parent, attribute, core): the network inside the PatchAverage/MSCN wrappers.

    Why: the wrappers hold Python control flow on shapes that torch.fx cannot trace, and
    they carry no weights; converting the core alone lets fx rewrite its functional ReLUs.
    """
    parent, attr, cur = None, None, net
    while isinstance(cur, PatchAverage | WithMSCN):
        parent, attr = cur, ("net" if isinstance(cur, PatchAverage) else "body")
        cur = getattr(cur, attr)
    return parent, attr, cur


def convert_network(
    net: nn.Module,
    init_from_base: bool = True,
    fit_steps: int | None = None,
    orth: str = "fourier",
) -> tuple[nn.Module, RobustifyReport]:
    """RobustBlock copy of a zoo network (wrappers kept, their core converted); `orth` is
    the card's choice of orthogonal convolution ("fourier" or "explicit")."""
    outer = copy.deepcopy(net).eval()
    parent, attr, core = core_parent(outer)
    new_core, report = robustify(
        core, init_from_base=init_from_base, fit_steps=fit_steps, orth=orth
    )
    if parent is None:
        return new_core, report
    setattr(parent, attr, new_core)
    return outer, report


def resize_to_state(net: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Shrink prunable layers in place to the widths of the checkpoint's weights."""
    for name, layer in list(net.named_modules()):
        if not isinstance(layer, PRUNABLE) or f"{name}.weight" not in state:
            continue
        have, want = layer.weight.shape, state[f"{name}.weight"].shape
        if have == want:
            continue
        if len(have) != len(want) or have[2:] != want[2:]:
            raise CheckpointError(
                f"{path}: {name}.weight has shape {tuple(want)}, incompatible with the "
                f"architecture's {tuple(have)}"
            )
        s2 = layer.stride**2 if isinstance(layer, OrthConv2d | ExplicitOrthConv2d) else 1
        if want[0] > have[0] or want[1] > have[1] or want[1] % s2:
            raise CheckpointError(
                f"{path}: {name}.weight has shape {tuple(want)}, wider than the "
                f"architecture's {tuple(have)}"
            )
        keep_out = torch.arange(want[0]) if want[0] != have[0] else None
        keep_in = torch.arange(want[1] // s2) if want[1] != have[1] else None
        parent_name, _, attr = name.rpartition(".")
        parent = net.get_submodule(parent_name) if parent_name else net
        setattr(parent, attr, slice_layer(layer, keep_out, keep_in, fit_steps=0))


def layer_widths(net: nn.Module) -> dict[str, list[int]]:
    """[out, in] per RobustBlock layer: what the card shows of a pruned architecture."""
    out = {}
    for name, m in net.named_modules():
        if isinstance(m, OrthConv2d | ExplicitOrthConv2d):
            out[name] = [m.out_channels, m.in_channels]
        elif isinstance(m, OrthLinear):
            out[name] = [m.out_features, m.in_features]
    return out
