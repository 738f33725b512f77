"""Norm-preserving / non-expansive building blocks that go with `OrthConv2d`.

Every block here has a known L2 Lipschitz constant (`lipschitz()`), which is what makes the
certified bound of a converted model an exact product instead of an estimate.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.robust.linalg import inverse_checked
from benchmark.robust.orthconv import space_to_depth

__all__ = ["GroupSort", "MaxMin", "OrthLinear", "SpaceToDepth", "cayley_semi_orthogonal"]


class GroupSort(nn.Module):
    """Sort values within groups of `group_size` along `dim` (default: channels of 4-D input,
    last dim otherwise).

    A permutation of each group, so it preserves the norm and the gradient norm exactly (ReLU
    halves it on average), and is 1-Lipschitz. A trailing incomplete group gets ReLU, which is
    still 1-Lipschitz and keeps a non-negative output where the base model relied on ReLU.
    """

    def __init__(self, group_size: int = 2, dim: int | None = None) -> None:
        super().__init__()
        if group_size < 2:
            raise ValueError("GroupSort: group_size must be >= 2")
        self.group_size = group_size
        self.dim = dim

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, dim={self.dim}"

    @staticmethod
    def lipschitz() -> float:
        return 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dim = self.dim if self.dim is not None else (1 if x.dim() == 4 else -1)
        dim = dim % x.dim()
        n = x.shape[dim]
        g = self.group_size
        full = (n // g) * g
        head = x.narrow(dim, 0, full)
        shape = list(head.shape)
        grouped = head.reshape(shape[:dim] + [full // g, g] + shape[dim + 1 :])
        out = self._sort(grouped, dim + 1).reshape(shape)
        if full == n:
            return out
        return torch.cat([out, F.relu(x.narrow(dim, full, n - full))], dim=dim)

    def _sort(self, grouped: torch.Tensor, dim: int) -> torch.Tensor:
        return grouped.sort(dim=dim, descending=True).values


class MaxMin(GroupSort):
    """GroupSort with groups of two: `(a, b) -> (max, min)`; cheaper than a sort."""

    def __init__(self, dim: int | None = None) -> None:
        super().__init__(2, dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"

    def _sort(self, grouped: torch.Tensor, dim: int) -> torch.Tensor:
        a, b = grouped.unbind(dim)
        return torch.stack([torch.maximum(a, b), torch.minimum(a, b)], dim=dim)


def cayley_semi_orthogonal(weight: torch.Tensor) -> torch.Tensor:
    """Map any real (..., out, in) matrix to one with orthonormal columns (out >= in) or rows.

    Block-eliminated Cayley transform (Trockman & Kolter): only a min(out, in)-sized system
    is solved. Leading dimensions are a batch.
    """
    out_f, in_f = weight.shape[-2:]
    if out_f < in_f:
        return cayley_semi_orthogonal(weight.mT).mT
    u, v = weight[..., :in_f, :], weight[..., in_f:, :]
    eye = torch.eye(in_f, dtype=weight.dtype, device=weight.device)
    a = u - u.mT + v.mT @ v
    inv = inverse_checked(eye + a)
    return torch.cat([2 * inv - eye, -2 * v @ inv], dim=-2)


class OrthLinear(nn.Module):
    """Linear layer with a (semi-)orthogonal weight via the Cayley transform, times `scale`.

    `scale` is a fixed 1 unless `learn_scale`: a model's last layer may need it to reach the
    target score range; it then enters the Lipschitz constant as |scale|.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        learn_scale: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **kw))
        self.bias = nn.Parameter(torch.zeros(out_features, **kw)) if bias else None
        scale = torch.ones((), **kw)
        if learn_scale:
            self.scale = nn.Parameter(scale)
        else:
            self.register_buffer("scale", scale)
        nn.init.uniform_(self.weight, -1 / math.sqrt(in_features), 1 / math.sqrt(in_features))

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"

    def orthogonal_weight(self) -> torch.Tensor:
        return cayley_semi_orthogonal(self.weight)

    def lipschitz(self) -> float:
        return abs(float(self.scale.detach()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.orthogonal_weight() * self.scale, self.bias)


class SpaceToDepth(nn.Module):
    """Norm-preserving downsampling: fold s x s blocks into channels (zero-pad to fit)."""

    def __init__(self, stride: int = 2) -> None:
        super().__init__()
        self.stride = stride

    @staticmethod
    def lipschitz() -> float:
        return 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return space_to_depth(x, self.stride)
