"""Square attack (Andriushchenko et al., ECCV 2020), L_inf, on the score: gradient-free, so it
measures the robustness of models without input gradients and exposes gradient masking
(a defense that stops gradient attacks but not Square masks gradients rather than being
robust).

Per image: start from vertical stripes (each column of each channel at +-eps), or from the
clean image when the stripes score lower (one query; for full-reference metrics in the "up"
direction any stripes hurt, and the paper's classifier setting never meets that), then per
query draw a square window of side s and one +-eps value per channel, set the window of
the perturbation to it, and keep the change only when the objective increases. The side
follows the paper's schedule: s = round(sqrt(p * H * W)) with p halving from `p_init`
at fixed fractions of the query budget (its schedule for 10,000 queries, rescaled to the
budget). All queries of a batch run in one forward pass; randomness comes from a generator
per image keyed by the seed and the image's pixels, so results do not depend on batching.
The score is evaluated under `torch.no_grad`; no gradient is ever asked for.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch

from benchmark.attacks.base import Attack, AttackInfo, Direction
from benchmark.attacks.utils import image_keys, positive_int
from benchmark.errors import ConfigError
from benchmark.models.base import IQAModel

# (fraction of 10,000 iterations after which, divisor of p_init) from the paper's code
_SCHEDULE = ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64),
             (6000, 128), (8000, 256), (10000, 512))  # fmt: skip


_RESAMPLE = 10


def square_fraction(p_init: float, query: int, queries: int) -> float:
    """The fraction of pixels the square covers at `query` of `queries`."""
    it = int(query / queries * 10000)
    for limit, divisor in _SCHEDULE:
        if it <= limit:
            return p_init / divisor
    return p_init / 512


class Square(Attack):
    """Score-based Square attack; `queries` counts every model evaluation (the stripes' and
    the clean image's included), so the objective never ends below the clean one."""

    norms: ClassVar[tuple[str, ...]] = ("linf",)
    defaults: ClassVar[dict[str, Any]] = {"queries": 1000, "p_init": 0.05}

    def __init__(
        self,
        info: AttackInfo,
        eps: float,
        direction: Direction = "up",
        seed: int = 0,
        **params: Any,
    ) -> None:
        super().__init__(info, eps, direction, seed, **params)
        where = f"attack {info.name!r}"
        self.queries = positive_int(self.params["queries"], f"{where}: queries")
        p = self.params["p_init"]
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0 < p <= 1:
            raise ConfigError(f"{where}: p_init must lie in (0, 1], got {p!r}")
        self.p_init = float(p)

    def _value(self, model: IQAModel, x: torch.Tensor, ref: torch.Tensor | None) -> torch.Tensor:
        with torch.no_grad():
            return self.objective(model, x, ref).detach()

    def _perturb(self, model: IQAModel, x: torch.Tensor, ref: torch.Tensor | None) -> torch.Tensor:
        n, c, h, w = x.shape
        gens = [torch.Generator().manual_seed(k) for k in image_keys(x, self.seed)]
        signs = torch.stack([_signs((1, c, 1, w), g) for g in gens]).squeeze(1)
        delta = (self.eps * signs).to(x.device, x.dtype).expand(n, c, h, w)
        adv = (x + delta).clamp(0, 1)
        best = self._value(model, adv, ref)
        if self.queries > 1:  # keep the clean image where the stripes only hurt (FR metrics)
            clean = self._value(model, x, ref)
            keep = clean >= best
            adv = torch.where(keep.view(-1, 1, 1, 1), x, adv)
            best = torch.where(keep, clean, best)
        for q in range(2, self.queries):
            p = square_fraction(self.p_init, q, self.queries)
            side = min(max(int(round(math.sqrt(p * h * w))), 1), h - 1 if h > 1 else 1, w)
            candidate = adv.clone()
            for i, g in enumerate(gens):
                top = int(torch.randint(0, h - side + 1, (1,), generator=g))
                left = int(torch.randint(0, w - side + 1, (1,), generator=g))
                window = (i, slice(None), slice(top, top + side), slice(left, left + side))
                for _ in range(_RESAMPLE):  # as the paper: redraw a value that changes nothing
                    value = (self.eps * _signs((c, 1, 1), g)).to(x.device, x.dtype)
                    candidate[window] = (x[window] + value).clamp(0, 1)
                    if not torch.equal(candidate[window], adv[window]):
                        break
            score = self._value(model, candidate, ref)
            better = score > best
            adv = torch.where(better.view(-1, 1, 1, 1), candidate, adv)
            best = torch.where(better, score, best)
        self.query_counts = np.full(n, self.queries, dtype=np.int64)  # every image, every query
        return adv


def _signs(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=generator).float() * 2 - 1
