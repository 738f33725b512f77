"""Gradient-estimation attacks, L_inf, on the score alone: NES (Ilyas et al., ICML 2018) and
SPSA (Uesato et al., ICML 2018). Both estimate the input gradient from antithetic pairs of
queries, f(x + c u) - f(x - c u), and step along the estimate, projected onto the eps ball and
[0, 1]; they differ in the directions u and the step:

- NES: Gaussian u, sigma 0.001, step `alpha * sign(g)` (PGD on the estimate), as the paper's
  ImageNet setting (n = 50 samples per estimate = 25 antithetic pairs, lr 0.01 at eps 0.05);
- SPSA: Rademacher u (entries +-1), delta 0.01, Adam with lr 0.01 on the estimate.

Every query is an objective evaluation through the oracle (counted per image). Per step:
`2 * samples` queries for the estimate and one for the new iterate, so each image returns the
best iterate it saw, never one below its clean score (the clean image is the first query):
steps = (queries - 1) // (2 * samples + 1). Random directions come from a generator per image
keyed by the seed and the image's pixels, so results do not depend on batching.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar

import torch

from benchmark.attacks.base import AttackInfo, Direction
from benchmark.attacks.scorebased import ScoreAttack, ScoreOracle
from benchmark.attacks.utils import positive_float, positive_int, resolve_step
from benchmark.errors import ConfigError
from benchmark.models.base import IQAModel


class _Estimation(ScoreAttack):
    """Shared loop: estimate, step, project, keep the best iterate."""

    norms: ClassVar[tuple[str, ...]] = ("linf",)
    smoothing: ClassVar[str]  # the parameter naming the finite-difference radius

    def __init__(
        self,
        info: AttackInfo,
        eps: float,
        direction: Direction = "up",
        seed: int = 0,
        **params: Any,
    ) -> None:
        super().__init__(info, eps, direction, seed, **params)
        self.samples = positive_int(self.params["samples"], f"{self.where}: samples")
        self.radius = positive_float(self.params[self.smoothing], f"{self.where}: {self.smoothing}")
        if self.radius > 0.5:
            raise ConfigError(f"{self.where}: {self.smoothing} must be <= 0.5, got {self.radius}")
        self.steps = (self.queries - 1) // (2 * self.samples + 1)
        if self.steps < 1:
            raise ConfigError(
                f"{self.where}: queries {self.queries} leave no step; one step needs "
                f"{2 * self.samples + 2} (2 * samples + 2)"
            )

    @abstractmethod
    def _directions(self, shape: torch.Size, gens: list[torch.Generator]) -> torch.Tensor:
        """One random direction per image (the estimator's distribution)."""

    @abstractmethod
    def _step(self, adv: torch.Tensor, grad: torch.Tensor, t: int) -> torch.Tensor:
        """The next iterate from the estimated gradient (before projection)."""

    def _reset(self) -> None:
        """Clear per-batch optimiser state."""

    def _estimate(
        self, oracle: ScoreOracle, adv: torch.Tensor, gens: list[torch.Generator]
    ) -> torch.Tensor:
        owners = list(range(adv.shape[0]))
        grad = torch.zeros_like(adv)
        c = self.radius
        for _ in range(self.samples):
            u = self._directions(adv.shape[1:], gens).to(adv.device, adv.dtype)
            plus = oracle((adv + c * u).clamp(0, 1), owners)
            minus = oracle((adv - c * u).clamp(0, 1), owners)
            grad += ((plus - minus) / (2 * c)).view(-1, 1, 1, 1) * u
        return grad / self.samples

    def _perturb(self, model: IQAModel, x: torch.Tensor, ref: torch.Tensor | None) -> torch.Tensor:
        oracle = self.oracle(model, x, ref)
        owners = list(range(x.shape[0]))
        gens = self.generators(x)
        lo, hi = (x - self.eps).clamp(0, 1), (x + self.eps).clamp(0, 1)
        self._reset()
        best_x, best = x.clone(), oracle(x, owners)
        adv = x.clone()
        for t in range(self.steps):
            grad = self._estimate(oracle, adv, gens)
            adv = torch.minimum(torch.maximum(self._step(adv, grad, t), lo), hi)
            value = oracle(adv, owners)
            better = value > best
            best_x = torch.where(better.view(-1, 1, 1, 1), adv, best_x)
            best = torch.where(better, value, best)
        self.finish(oracle)
        return best_x


class NES(_Estimation):
    """Natural-evolution-strategies gradient estimate (Gaussian, antithetic) + signed steps."""

    smoothing = "sigma"
    defaults: ClassVar[dict[str, Any]] = {
        "queries": 1000,
        "samples": 25,
        "sigma": 0.001,
        "alpha": "eps/5",
    }

    def __init__(
        self,
        info: AttackInfo,
        eps: float,
        direction: Direction = "up",
        seed: int = 0,
        **params: Any,
    ) -> None:
        super().__init__(info, eps, direction, seed, **params)
        self.alpha = resolve_step(self.params["alpha"], self.eps)

    def _directions(self, shape: torch.Size, gens: list[torch.Generator]) -> torch.Tensor:
        return torch.stack([torch.randn(shape, generator=g) for g in gens])

    def _step(self, adv: torch.Tensor, grad: torch.Tensor, t: int) -> torch.Tensor:
        return adv + self.alpha * grad.sign()


class SPSA(_Estimation):
    """Simultaneous-perturbation gradient estimate (Rademacher, antithetic) + Adam steps."""

    smoothing = "delta"
    defaults: ClassVar[dict[str, Any]] = {
        "queries": 1000,
        "samples": 16,
        "delta": 0.01,
        "lr": 0.01,
    }

    def __init__(
        self,
        info: AttackInfo,
        eps: float,
        direction: Direction = "up",
        seed: int = 0,
        **params: Any,
    ) -> None:
        super().__init__(info, eps, direction, seed, **params)
        self.lr = positive_float(self.params["lr"], f"{self.where}: lr")
        self._point: torch.Tensor | None = None
        self._adam: torch.optim.Adam | None = None

    def _reset(self) -> None:
        self._point = self._adam = None

    def _directions(self, shape: torch.Size, gens: list[torch.Generator]) -> torch.Tensor:
        return torch.stack([torch.randint(0, 2, shape, generator=g) for g in gens]).float() * 2 - 1

    def _step(self, adv: torch.Tensor, grad: torch.Tensor, t: int) -> torch.Tensor:
        """One step of torch's Adam (ascent) on the estimated gradient, from the projected
        iterate; the moments persist across steps of the batch."""
        if self._point is None or self._adam is None:
            self._point = adv.clone()
            self._adam = torch.optim.Adam([self._point], lr=self.lr, maximize=True)
        with torch.no_grad():
            self._point.copy_(adv)
        self._point.grad = grad
        self._adam.step()
        return self._point.detach().clone()
