"""Parsimonious black-box attack (Moon, An, Song, ICML 2019), L_inf, on the score alone.

The perturbation lives on the vertices of the eps ball: every pixel of every channel is +eps
or -eps, organised in square blocks per channel that flip sign together. Starting from -eps
everywhere, the attack visits the blocks in random mini-batches of `batch_blocks` and runs
the paper's lazy-greedy local search on each: an insertion phase (flip blocks from -eps to
+eps) then a deletion phase (back), each scanning every candidate flip once (batched
queries), accepting the best one, then re-evaluating candidates in order of their stale gain
and accepting one while its fresh gain beats every stale one (insertion stops at a loss,
deletion at no gain). When all blocks are visited, blocks halve (down to one pixel) and the
visit restarts in a new random order, until the query budget is spent.

Unlike the paper's classifier setting there is no success to stop at: every image spends
its budget. The output is the best perturbation evaluated, or the clean image where that
scores higher (the last query). Blocks cut at the image border where the side does not
divide it. One generator per image (keyed by the seed and its pixels) orders the blocks.
"""

from __future__ import annotations

import heapq
from typing import Any, ClassVar, NamedTuple

import torch

from benchmark.attacks.base import AttackInfo, Direction
from benchmark.attacks.scorebased import ScoreAttack, ScoreOracle
from benchmark.attacks.utils import positive_int
from benchmark.models.base import IQAModel


class Block(NamedTuple):
    channel: int
    top: int
    left: int
    size: int


def blocks_of(c: int, h: int, w: int, size: int) -> list[Block]:
    return [Block(ch, t, left, size)
            for t in range(0, h, size) for left in range(0, w, size) for ch in range(c)]  # fmt: skip


class _Exhausted(Exception):
    """The image's query budget is spent (one query kept for the clean check)."""


class _Search:
    """One image's state: the current noise and its objective, and the best seen."""

    def __init__(self, oracle: ScoreOracle, x: torch.Tensor, index: int, eps: float) -> None:
        self.oracle, self.x, self.index = oracle, x, index
        self.noise = torch.full_like(x, -eps)
        self.best_value, self.best_noise = float("-inf"), self.noise
        self.value = self.evaluate([self.noise])[0]

    def evaluate(self, noises: list[torch.Tensor]) -> list[float]:
        """Objectives of `noises`; raises `_Exhausted` after evaluating what the budget
        affords (one query always kept for the clean check)."""
        affordable = self.oracle.left(self.index) - 1
        part = noises[: max(affordable, 0)]
        if part:
            images = torch.stack([(self.x + n).clamp(0, 1) for n in part])
            out = self.oracle(images, self.index).double().cpu().tolist()
            k = max(range(len(out)), key=out.__getitem__)
            if out[k] > self.best_value:
                self.best_value, self.best_noise = out[k], part[k]
        if len(part) < len(noises):
            raise _Exhausted
        return out

    def flipped(self, block: Block) -> torch.Tensor:
        noise = self.noise.clone()
        ch, t, left, s = block
        noise[ch, t : t + s, left : left + s] *= -1
        return noise

    def positive(self, block: Block) -> bool:
        return bool(self.noise[block.channel, block.top, block.left] > 0)

    def phase(self, batch: list[Block], insert: bool) -> None:
        """Lazy-greedy insertion (flip - to +) or deletion (+ to -) over `batch`."""
        candidates = [b for b in batch if self.positive(b) != insert]
        if not candidates:
            return
        gains = self.evaluate([self.flipped(b) for b in candidates])
        heap = [(-(g - self.value), k) for k, g in enumerate(gains)]
        heapq.heapify(heap)
        margin, k = heapq.heappop(heap)  # the best flip, accepted as in the paper
        self.noise, self.value = self.flipped(candidates[k]), self.value - margin
        while heap:
            _, k = heapq.heappop(heap)
            fresh = self.flipped(candidates[k])
            value = self.evaluate([fresh])[0]
            margin = -(value - self.value)
            if not heap or margin <= heap[0][0]:  # still the best: accept, or stop
                if margin > 0 or (margin == 0 and not insert):
                    break
                self.noise, self.value = fresh, value
            else:
                heapq.heappush(heap, (margin, k))


class Parsimonious(ScoreAttack):
    """Lazy-greedy flips of +-eps blocks, coarse to fine."""

    norms: ClassVar[tuple[str, ...]] = ("linf",)
    defaults: ClassVar[dict[str, Any]] = {"queries": 1000, "block_size": 32, "batch_blocks": 64}

    def __init__(
        self,
        info: AttackInfo,
        eps: float,
        direction: Direction = "up",
        seed: int = 0,
        **params: Any,
    ) -> None:
        super().__init__(info, eps, direction, seed, **params)
        self.block_size = positive_int(self.params["block_size"], f"{self.where}: block_size")
        self.batch_blocks = positive_int(self.params["batch_blocks"], f"{self.where}: batch_blocks")

    def _search(
        self, oracle: ScoreOracle, x: torch.Tensor, i: int, g: torch.Generator
    ) -> tuple[torch.Tensor, float]:
        """Image `i`'s best perturbed image within its budget (less the clean check), and its
        objective."""
        c, h, w = x.shape
        if oracle.left(i) < 2:
            return x, float("-inf")
        search = _Search(oracle, x, i, self.eps)
        size = min(self.block_size, max(h, w))
        try:
            while True:
                blocks = blocks_of(c, h, w, size)
                order = torch.randperm(len(blocks), generator=g).tolist()
                for start in range(0, len(order), self.batch_blocks):
                    batch = [blocks[j] for j in order[start : start + self.batch_blocks]]
                    search.phase(batch, insert=True)
                    search.phase(batch, insert=False)
                size = max(size // 2, 1)
        except _Exhausted:
            pass
        return (x + search.best_noise).clamp(0, 1), search.best_value

    def _perturb(self, model: IQAModel, x: torch.Tensor, ref: torch.Tensor | None) -> torch.Tensor:
        oracle = self.oracle(model, x, ref)
        found = [self._search(oracle, x[i], i, g) for i, g in enumerate(self.generators(x))]
        adv = torch.stack([image for image, _ in found])
        best = torch.tensor([value for _, value in found], dtype=torch.float64)
        clean = oracle(x, list(range(x.shape[0]))).double().cpu()  # the query kept for it
        keep = (clean >= best).to(x.device).view(-1, 1, 1, 1)
        self.finish(oracle)
        return torch.where(keep, x, adv)
