"""The attack interface. An attack turns clean images into attacked images under an
L_inf, L2 or L0 (pixels changed) budget for one model, in the requested direction of the
quality score."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from benchmark.attacks.utils import finite_grad, frozen_eval, seeded_rng
from benchmark.budget import budget_label
from benchmark.errors import ConfigError, DataError
from benchmark.image_stats import changed_pixels, perturbation_norms
from benchmark.models.base import IQAModel

Direction = Literal["up", "down"]
NORM_LABELS = {"linf": "L_inf", "l2": "L2", "l0": "L0"}


@dataclass(frozen=True)
class AttackInfo:
    name: str
    family: str  # "gradient", "query", "universal", "generative" ("plugin" for uncarded plugins)
    norm: Literal["linf", "l2", "l0"] = "linf"  # l0: eps is a whole number of pixels
    gradient_free: bool = False
    trainable: bool = False
    description: str = ""
    reference: str = ""  # the paper the preset follows


class Attack(ABC):
    """Base class. Subclasses implement `_perturb`; `perturb` adds the checks.

    Params come from the attack card (`[params]`) and may be overridden on the CLI.
    The objective is `sign * model.quality(x, ref)` with sign +1 for "up" (inflate)
    and -1 for "down", so every attack maximises `objective`.
    """

    info: AttackInfo
    # The card parameters a class accepts, with their defaults; None accepts any (plugins).
    defaults: ClassVar[dict[str, Any] | None] = None
    norms: ClassVar[tuple[str, ...]] = ("linf", "l2")  # budget norms the algorithm supports
    # Per-image model evaluations of the last `perturb` call, for attacks that count them
    # (score-based ones); None for attacks that do not. The runner stores them per image.
    query_counts: np.ndarray | None = None

    def __init__(
        self,
        info: AttackInfo,
        eps: float,
        direction: Direction = "up",
        seed: int = 0,
        **params: Any,
    ) -> None:
        if direction not in ("up", "down"):
            raise ConfigError(f"direction must be 'up' or 'down', got {direction!r}")
        if info.norm not in self.norms:
            raise ConfigError(
                f"attack {info.name!r} supports {'/'.join(NORM_LABELS[n] for n in self.norms)} "
                f"budgets only, its card says {info.norm!r}"
            )
        if info.norm == "l0":
            if not (eps >= 1 and float(eps).is_integer()):
                raise ConfigError(
                    f"attack {info.name!r} has an L0 budget: a whole number of pixels >= 1 "
                    f"(e.g. --eps 10px), got {eps:g}"
                )
        elif not (0.0 < eps <= 1.0):
            hint = " (a count of pixels is an L0 budget; this attack's is not)" if eps > 1 else ""
            raise ConfigError(f"eps must lie in (0, 1], got {eps}{hint}")
        if self.defaults is not None:
            unknown = sorted(set(params) - set(self.defaults))
            if unknown:
                allowed = ", ".join(sorted(self.defaults)) or "none"
                raise ConfigError(
                    f"attack {info.name!r}: unknown param(s) {', '.join(unknown)}; allowed: {allowed}"
                )
            params = {**self.defaults, **params}
        self.info = info
        self.eps = float(eps)
        self.direction: Direction = direction
        self.seed = int(seed)
        self.params = params

    @property
    def sign(self) -> float:
        return 1.0 if self.direction == "up" else -1.0

    def objective(self, model: IQAModel, x: torch.Tensor, ref: torch.Tensor | None) -> torch.Tensor:
        """Per-image value the attack maximises.

        Non-finite input-gradient entries are zeroed on the way back (`finite_grad`): FR
        metrics have such points (NLPD/MAD at x == ref, where the score is already optimal),
        and one NaN would otherwise poison the signed step of the whole image.
        """
        return self.sign * model.quality(finite_grad(x), ref)

    def config(self) -> dict[str, Any]:
        """Everything that determines the attack's output (recorded beside each result)."""
        return {
            "name": self.info.name,
            "class": f"{type(self).__module__}:{type(self).__qualname__}",
            "eps": self.eps,
            "norm": self.info.norm,
            "direction": self.direction,
            "seed": self.seed,
            "params": dict(self.params),
        }

    def fit(
        self,
        model: IQAModel,
        train_batches: Iterable[tuple[torch.Tensor, torch.Tensor | None]],
        artifact_dir: Path,
        data_id: str | None = None,
    ) -> None:
        """Trainable attacks (UAP, FACPA) learn here; per-image attacks need nothing.

        `data_id` names the training data (dataset, split, ids, version) so a cached
        artifact is found without reading the data."""
        return None

    def perturb(
        self, model: IQAModel, x: torch.Tensor, ref: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Attack a batch; checks inputs and the budget, and isolates the model and RNG state.

        `_perturb` runs with the model in eval mode and its parameters frozen (restored after),
        gradients enabled even under a caller's `no_grad`, and the global RNG seeded with
        `seed` inside a fork, so results are reproducible and the caller's RNG is untouched.
        """
        _check_images(x, "images")
        if ref is not None:
            _check_images(ref, "reference images")
            if ref.shape != x.shape:
                raise DataError(
                    f"reference images have shape {tuple(ref.shape)}, images {tuple(x.shape)}"
                )
        x = x.detach()
        ref = None if ref is None else ref.detach()
        self.query_counts = None
        with frozen_eval(model), seeded_rng(self.seed, x.device), torch.enable_grad():
            x_adv = self._perturb(model, x, ref).detach()
        self._check_result(x, x_adv)
        return x_adv

    def _check_result(self, x: torch.Tensor, x_adv: torch.Tensor) -> None:
        """The budget contract (every attacked image within its own budget): a violation is a bug in the attack, never data."""
        name = self.info.name
        if x_adv.shape != x.shape or x_adv.device != x.device:
            raise RuntimeError(f"attack {name} changed the image shape or device")
        if not _in_unit_range(x_adv):
            if not torch.isfinite(x_adv).all():
                raise RuntimeError(f"attack {name} returned non-finite pixels")
            raise RuntimeError(f"attack {name} returned pixels outside [0, 1]")
        norm = self.info.norm
        if norm == "l0":
            size, tolerance = changed_pixels(x, x_adv), 0.0  # whole pixels: no rounding slack
        else:
            linf, l2 = perturbation_norms(x, x_adv)
            size = linf if norm == "linf" else l2
            tolerance = 1e-6 + 2 * torch.finfo(x.dtype).eps
        if (size > self.eps + tolerance).any():
            raise RuntimeError(
                f"attack {name} exceeded its {NORM_LABELS[norm]} budget "
                f"{budget_label(self.eps, norm)}: largest perturbation {size.max().item():.6g}"
            )
        counts = self.query_counts
        if counts is not None and np.shape(counts) != (x.shape[0],):
            raise RuntimeError(f"attack {name} counted queries for {np.shape(counts)} images")

    @abstractmethod
    def _perturb(self, model: IQAModel, x: torch.Tensor, ref: torch.Tensor | None) -> torch.Tensor:
        """Return attacked images in [0,1] within `eps` of `x`."""


def _check_images(x: torch.Tensor, what: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise DataError(f"{what} must be a float tensor of shape (N,3,H,W), got {shape}")
    if not x.is_floating_point():
        raise DataError(f"{what} must be a float tensor in [0,1], got dtype {x.dtype}")
    if not _in_unit_range(x):
        raise DataError(f"{what} must be finite and lie in [0,1]")


def _in_unit_range(x: torch.Tensor) -> bool:
    """Finite and inside [0, 1], in one pass over the pixels (a NaN fails both comparisons);
    every attack call checks its input and output, so this runs on every image twice."""
    lo, hi = torch.aminmax(x)
    return bool(lo >= 0) and bool(hi <= 1)
