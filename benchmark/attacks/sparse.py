"""Sparse score-based attacks under an L0 budget (eps = pixels changed, e.g. 10px): one-pixel
(Su, Vargas, Sakurai 2019) and Patch-RS (Croce et al. 2022, the patch threat model of
Sparse-RS). Neither bounds the size of a change, only where it may happen: a changed pixel
takes any colour in [0, 1]. Both evaluate the score only (through the counting oracle), and
both end with the clean image where nothing they found scores higher (one query), as Square
does: for a full-reference metric in the "up" direction any change may hurt.

One-pixel: each candidate is k = eps pixels, each (row, column, r, g, b), searched by
`scipy.optimize.differential_evolution` (DE/rand/1, F = 0.5, no crossover, as the paper; the
population evaluated as one vectorised batch). `population` candidates per generation
(rounded up to a multiple of the 5k parameters, scipy's `popsize` times 5k); generations
= (queries - 1) // population - 1, so the budget holds however scipy stops.

Patch-RS: one square patch of side floor(sqrt(eps)) (so its area never exceeds the budget),
content and location found by random search as in the authors' Sparse-RS code: the patch
starts as random coloured squares of colour-cube corners at a random place; each query
changes either a random sub-square of it (side shrinking with Square's schedule, then single
channel flips) or, every 4th query while the shift radius is positive, moves it by up to
0.75 * (1 - t/queries) * H pixels; a change is kept when the objective increases.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch
from scipy.optimize import differential_evolution

from benchmark.attacks.base import AttackInfo, Direction
from benchmark.attacks.query import square_fraction
from benchmark.attacks.scorebased import ScoreAttack, ScoreOracle
from benchmark.attacks.utils import image_keys, positive_float, positive_int
from benchmark.errors import ConfigError
from benchmark.models.base import IQAModel


def _keep_clean(
    oracle: ScoreOracle, x: torch.Tensor, adv: torch.Tensor, best: torch.Tensor
) -> torch.Tensor:
    """`adv`, or the clean image where it scores at least as high (one query per image)."""
    clean = oracle(x, list(range(x.shape[0])))
    keep = clean >= best
    return torch.where(keep.view(-1, 1, 1, 1), x, adv)


class OnePixel(ScoreAttack):
    """Differential evolution over k pixels' positions and colours (k = the L0 budget)."""

    norms: ClassVar[tuple[str, ...]] = ("l0",)
    defaults: ClassVar[dict[str, Any]] = {"queries": 3000, "population": 300}

    def __init__(
        self,
        info: AttackInfo,
        eps: float,
        direction: Direction = "up",
        seed: int = 0,
        **params: Any,
    ) -> None:
        super().__init__(info, eps, direction, seed, **params)
        self.pixels = int(self.eps)
        n_params = 5 * self.pixels
        wanted = positive_int(self.params["population"], f"{self.where}: population")
        self.popsize = max(1, math.ceil(wanted / n_params))  # scipy's multiplier
        self.population = self.popsize * n_params
        self.generations = (self.queries - 1) // self.population - 1
        if self.generations < 0:
            raise ConfigError(
                f"{self.where}: queries {self.queries} cannot pay for one population of "
                f"{self.population} ({self.pixels} pixels x 5 parameters) plus the clean check"
            )

    @staticmethod
    def _apply(image: torch.Tensor, genes: np.ndarray) -> torch.Tensor:
        """Candidates (S, 3, H, W) from genes (5k, S): per pixel (row, col, r, g, b)."""
        _, h, w = image.shape
        s = genes.shape[1]
        g = genes.reshape(-1, 5, s)  # (k, 5, S)
        rows = np.clip(np.floor(g[:, 0]), 0, h - 1).astype(np.int64)  # (k, S)
        cols = np.clip(np.floor(g[:, 1]), 0, w - 1).astype(np.int64)
        out = image.unsqueeze(0).repeat(s, 1, 1, 1)
        which = np.broadcast_to(np.arange(s), rows.shape)
        colours = torch.as_tensor(np.clip(g[:, 2:], 0, 1), dtype=image.dtype)  # (k, 3, S)
        colours = colours.permute(0, 2, 1).reshape(-1, 3).to(image.device)  # (k*S, 3)
        flat = [torch.from_numpy(np.ascontiguousarray(a).ravel()) for a in (which, rows, cols)]
        # later pixels of a candidate overwrite earlier ones at the same place (still <= k)
        out[flat[0], :, flat[1], flat[2]] = colours
        return out

    def _perturb(self, model: IQAModel, x: torch.Tensor, ref: torch.Tensor | None) -> torch.Tensor:
        n, _, h, w = x.shape
        oracle = self.oracle(model, x, ref)
        bounds = [(0, h), (0, w), (0, 1), (0, 1), (0, 1)] * self.pixels
        adv = x.clone()
        best = torch.empty(n, dtype=x.dtype, device=x.device)
        for i, key in enumerate(image_keys(x, self.seed)):
            image = x[i]

            def energy(genes: np.ndarray, image: torch.Tensor = image, i: int = i) -> np.ndarray:
                values = oracle(self._apply(image, genes), i)
                return -values.double().cpu().numpy()  # DE minimises

            result = differential_evolution(
                energy,
                bounds,
                strategy="rand1bin",
                maxiter=self.generations,
                popsize=self.popsize,
                mutation=0.5,
                recombination=1.0,
                tol=0.0,
                atol=0.0,
                polish=False,
                init="latinhypercube",
                updating="deferred",
                vectorized=True,
                rng=np.random.default_rng(key),
            )
            adv[i] = self._apply(image, np.asarray(result.x).reshape(-1, 1))[0]
            best[i] = -float(result.fun)
        adv = _keep_clean(oracle, x, adv, best)
        self.finish(oracle)
        return adv


# Sparse-RS "patches" schedule of the sub-square's fraction: Square's, from p_init 0.8.
P_INIT = 0.8
LOCATION_PERIOD = 4  # every 4th query moves the patch (while the shift radius is positive)
INIT_SQUARES = 1000  # random squares painted into the initial patch


class PatchRS(ScoreAttack):
    """Random search over one square patch's content and location (area <= the L0 budget)."""

    norms: ClassVar[tuple[str, ...]] = ("l0",)
    defaults: ClassVar[dict[str, Any]] = {"queries": 1000, "p_init": P_INIT}

    def __init__(
        self,
        info: AttackInfo,
        eps: float,
        direction: Direction = "up",
        seed: int = 0,
        **params: Any,
    ) -> None:
        super().__init__(info, eps, direction, seed, **params)
        self.side = math.isqrt(int(self.eps))
        p = positive_float(self.params["p_init"], f"{self.where}: p_init")
        if p > 1:
            raise ConfigError(f"{self.where}: p_init must lie in (0, 1], got {p!r}")
        self.p_init = p

    def _sub_side(self, it: int, side: int) -> int:
        return int(max(math.sqrt(square_fraction(self.p_init, it, self.queries)) * side, 1))

    def _init_patch(self, c: int, s: int, g: torch.Generator) -> torch.Tensor:
        patch = torch.zeros(c, s, s)
        high = max(math.ceil(math.sqrt(s)), 2)
        for _ in range(INIT_SQUARES):
            size = int(torch.randint(1, high, (1,), generator=g))
            top, left = (int(v) for v in torch.randint(0, s - size + 1, (2,), generator=g))
            patch[:, top : top + size, left : left + size] = _corner(c, g)
        return patch

    def _perturb(self, model: IQAModel, x: torch.Tensor, ref: torch.Tensor | None) -> torch.Tensor:
        n, c, h, w = x.shape
        s = min(self.side, h, w)
        oracle = self.oracle(model, x, ref)
        owners = list(range(n))
        gens = self.generators(x)
        patches = [self._init_patch(c, s, g).to(x.device, x.dtype) for g in gens]
        locs = [
            [int(torch.randint(0, h - s + 1, (1,), generator=g)),
             int(torch.randint(0, w - s + 1, (1,), generator=g))]
            for g in gens
        ]  # fmt: skip
        best = oracle(_paste(x, patches, locs, s), owners)
        # single-channel flips start halfway between the sub-square reaching one pixel and the end
        start_cu = next((t for t in range(self.queries) if self._sub_side(t, s) == 1), self.queries)
        start_cu += (self.queries - start_cu) // 2
        for it in range(1, self.queries - 1):  # the last query checks the clean image
            side = self._sub_side(it, s)
            shift = int(max(0.75 * (1 - it / self.queries) * h, 0))
            move = it % LOCATION_PERIOD == 0 and shift > 0
            new_patches, new_locs = [], []
            for i, g in enumerate(gens):
                patch, loc = patches[i].clone(), list(locs[i])
                if move:
                    d = torch.randint(-shift, shift + 1, (2,), generator=g)
                    loc = [min(max(loc[0] + int(d[0]), 0), h - s),
                           min(max(loc[1] + int(d[1]), 0), w - s)]  # fmt: skip
                else:
                    top, left = (int(v) for v in torch.randint(0, s - side + 1, (2,), generator=g))
                    window = (slice(None), slice(top, top + side), slice(left, left + side))
                    if it >= start_cu:  # flip one channel of one pixel
                        ch = int(torch.randint(0, c, (1,), generator=g))
                        patch[ch, top, left] = 1 - patch[ch, top, left]
                    elif side > 1:
                        patch[window] = (patch[window] + _signs(c, g).to(patch)).clamp(0, 1)
                    else:  # a colour different from the pixel's
                        old = patch[window].clone()
                        while torch.equal(patch[window], old):
                            patch[window] = _corner(c, g).to(patch)
                new_patches.append(patch)
                new_locs.append(loc)
            value = oracle(_paste(x, new_patches, new_locs, s), owners)
            for i in torch.nonzero(value > best).flatten().tolist():
                patches[i], locs[i] = new_patches[i], new_locs[i]
            best = torch.maximum(best, value)
        adv = _paste(x, patches, locs, s)
        if self.queries > 1:
            adv = _keep_clean(oracle, x, adv, best)
        self.finish(oracle)
        return adv


def _signs(c: int, g: torch.Generator) -> torch.Tensor:
    return (torch.randint(0, 2, (c, 1, 1), generator=g) * 2 - 1).float()


def _corner(c: int, g: torch.Generator) -> torch.Tensor:
    """A random corner of the colour cube (each channel 0 or 1), as Sparse-RS's colours."""
    return torch.randint(0, 2, (c, 1, 1), generator=g).float()


def _paste(
    x: torch.Tensor, patches: list[torch.Tensor], locs: list[list[int]], s: int
) -> torch.Tensor:
    out = x.clone()
    for i, (patch, (top, left)) in enumerate(zip(patches, locs, strict=True)):
        out[i, :, top : top + s, left : left + s] = patch
    return out
