"""The one model interface every source (pyiqa, zoo, robustblock, plugin) is wrapped into."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from benchmark.errors import ConfigError

Source = Literal["pyiqa", "zoo", "robustblock", "plugin", "defense"]


@dataclass(frozen=True)
class ModelInfo:
    """Metadata as numbers and enums, never free text that code has to parse."""

    name: str
    kind: Literal["NR", "FR"]
    lower_better: bool
    score_range: tuple[float, float] | None
    source: Source
    differentiable: bool = True
    params: int | None = None
    base: str | None = None
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in ("NR", "FR"):
            raise ConfigError(f"model {self.name!r}: kind must be 'NR' or 'FR', got {self.kind!r}")
        if self.score_range is not None:
            lo, hi = self.score_range
            if not lo < hi:
                raise ConfigError(f"model {self.name!r}: score_range {self.score_range} is empty")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["score_range"] = list(self.score_range) if self.score_range else None
        return d


class IQAModel(nn.Module):
    """Wraps a network that maps images in [0,1] to one score per image.

    `score` is the raw model output; `quality` is the same in quality-up orientation
    (higher = better) so that "inflation" always means an increase. Both stay
    differentiable with respect to the input: no hidden no_grad, no range asserts.
    """

    def __init__(self, net: nn.Module | Any, info: ModelInfo) -> None:
        super().__init__()
        if isinstance(net, nn.Module):
            self.net = net
        else:
            self.net = None
            self._fn = net
        self.info = info

    @property
    def name(self) -> str:
        return self.info.name

    def _call(self, x: torch.Tensor, ref: torch.Tensor | None) -> torch.Tensor:
        fn = self.net if self.net is not None else self._fn
        return fn(x, ref) if self.info.kind == "FR" else fn(x)

    def score(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ConfigError(
                f"model {self.name!r}: expected images of shape (N,3,H,W), got {tuple(x.shape)}"
            )
        if self.info.kind == "FR" and ref is None:
            raise ConfigError(f"model {self.name!r} is full-reference and needs a reference image")
        out = self._call(x, ref)
        if not isinstance(out, torch.Tensor):
            out = torch.as_tensor(out, dtype=x.dtype, device=x.device)
        out = out.reshape(out.shape[0], -1).mean(dim=1) if out.ndim > 1 else out.reshape(-1)
        if out.shape[0] != x.shape[0]:
            raise ConfigError(
                f"model {self.name!r} returned {out.shape[0]} scores for a batch of {x.shape[0]}"
            )
        return out

    def quality(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        s = self.score(x, ref)
        return -s if self.info.lower_better else s

    def forward(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        return self.score(x, ref)
