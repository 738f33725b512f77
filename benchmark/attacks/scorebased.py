"""What every score-based black-box attack shares: the model seen as an oracle of scores only,
with each evaluation counted against the image it attacks.

Why one oracle: a score-based attack's budget is its number of queries, and the benchmark
stores that number per image. Routing every model evaluation through `ScoreOracle` makes the
count exact (nothing evaluated outside it), enforces the budget (an attack that asks for more
than its card allows is a bug and raises), and evaluates under `torch.no_grad`, so these
attacks run on models without input gradient (pyiqa's `piqe`, `entropy`) and cannot use one
by accident.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from benchmark.attacks.base import Attack, AttackInfo, Direction
from benchmark.attacks.utils import image_keys, positive_int
from benchmark.models.base import IQAModel

# Candidates scored per forward pass: populations and block scans can hold hundreds of images.
CHUNK = 64


class ScoreOracle:
    """`attack.objective` of candidate images, no gradient, counted per attacked image."""

    def __init__(
        self,
        attack: Attack,
        model: IQAModel,
        ref: torch.Tensor | None,
        n_images: int,
        budget: int,
    ) -> None:
        self.attack, self.model, self.ref, self.budget = attack, model, ref, budget
        self.counts = np.zeros(n_images, dtype=np.int64)

    def left(self, image: int) -> int:
        """Queries image `image` may still spend."""
        return self.budget - int(self.counts[image])

    def __call__(self, candidates: torch.Tensor, owners: Sequence[int] | int) -> torch.Tensor:
        """Objective (sign * quality) of each candidate; `owners[i]` is the index of the image
        candidate i is an attack on (its reference, for FR models, and its query count)."""
        if isinstance(owners, int):
            owners = [owners] * candidates.shape[0]
        idx = np.asarray(owners, dtype=np.int64)
        np.add.at(self.counts, idx, 1)
        if (self.counts > self.budget).any():  # a bug in the attack, never data
            raise RuntimeError(
                f"attack {self.attack.info.name} exceeded its budget of {self.budget} queries"
            )
        where = torch.as_tensor(idx, device=candidates.device)
        out = []
        with torch.no_grad():
            for start in range(0, candidates.shape[0], CHUNK):
                part = slice(start, start + CHUNK)
                ref = None if self.ref is None else self.ref[where[part]]
                out.append(self.attack.objective(self.model, candidates[part], ref).detach())
        return torch.cat(out) if out else candidates.new_zeros(0)


class ScoreAttack(Attack):
    """Base of the score-based attacks: a `queries` budget per image (a card parameter), one
    random generator per image keyed by the seed and the image's pixels (results do not depend
    on batching), and the per-image query counts handed to the runner."""

    defaults: ClassVar[dict[str, Any]] = {"queries": 1000}

    def __init__(
        self,
        info: AttackInfo,
        eps: float,
        direction: Direction = "up",
        seed: int = 0,
        **params: Any,
    ) -> None:
        super().__init__(info, eps, direction, seed, **params)
        self.where = f"attack {info.name!r}"
        self.queries = positive_int(self.params["queries"], f"{self.where}: queries")

    def generators(self, x: torch.Tensor) -> list[torch.Generator]:
        return [torch.Generator().manual_seed(k) for k in image_keys(x, self.seed)]

    def oracle(self, model: IQAModel, x: torch.Tensor, ref: torch.Tensor | None) -> ScoreOracle:
        return ScoreOracle(self, model, ref, x.shape[0], self.queries)

    def finish(self, oracle: ScoreOracle) -> None:
        """Record what `oracle` counted as this batch's queries per image."""
        self.query_counts = oracle.counts.copy()
