"""Universal adversarial perturbations: one perturbation per target model, trained on the
attack's training split and added to every test image.

- `uap`: the perturbation itself is optimised with Adam on the mean objective over training
  batches, clipped to `train_eps` after every step (MSU benchmark, `methods/uap`).
- `cumulative-uap`: per training batch, the sign of the mean-objective gradient w.r.t. the
  perturbation is accumulated with step `alpha`, then clipped (signed-gradient accumulation).
- `generative-uap`: a U-Net (the FACPA generator) maps one fixed noise image to the
  perturbation `tanh * train_eps`; the generator is trained, the perturbation is its output.

All three store a `size` x `size` (default 256) perturbation. It is tiled over an image
(repeated, then cropped at the top-left) to cover any size, in training exactly as at test
time. On images smaller than `size` (192 on the built-in set) only the top-left part of the
pattern is trained and used; the rest keeps its initial value. `random_shift = true` instead
applies the pattern at a random cyclic shift per training batch, so every pixel is trained
and the pattern works at any tiling phase (for test images larger than the training ones);
that costs strength: on a random-init CNNIQA the shifted UAP reached a third of the gain.

Evaluation at the cell's eps: the perturbation is trained once at `train_eps` (10/255) and
scaled by `eps / train_eps` (the MSU benchmark's amplitude scaling), so its L_inf is at most
eps and one trained artifact serves every budget of a model.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from benchmark.attacks.artifacts import (
    TrainedAttack,
    TrainingData,
    _model_device,
    require_gradient,
    training_batches,
)
from benchmark.attacks.base import AttackInfo, Direction
from benchmark.attacks.facpa import (
    UNetGenerator,
    generator_params,
    load_state,
    sanitize_grads,
    state_tensors,
)
from benchmark.attacks.iterative import finite_mean
from benchmark.attacks.utils import positive_float, positive_int, resolve_step, zero_nonfinite
from benchmark.errors import CheckpointError, ConfigError
from benchmark.models.base import IQAModel


def tile_to(delta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Repeat a (1,3,S,S) pattern to cover height x width, cropped at the top-left."""
    s_h, s_w = delta.shape[-2:]
    reps = (1, 1, -(-height // s_h), -(-width // s_w))
    return delta.repeat(*reps)[..., :height, :width]


class UniversalAttack(TrainedAttack):
    """Shared training loop and application of the UAP family."""

    defaults: ClassVar[dict[str, Any]] = {
        "train_eps": "10/255",
        "size": 256,
        "epochs": 5,
        "batch_size": 8,
        "train_images": 256,
        "random_shift": False,
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
        where = f"attack {info.name!r}"
        self.size = positive_int(self.params["size"], f"{where}: size")
        self.epochs = positive_int(self.params["epochs"], f"{where}: epochs")
        self.batch_size = positive_int(self.params["batch_size"], f"{where}: batch_size")
        self.train_images = positive_int(self.params["train_images"], f"{where}: train_images")
        if not isinstance(self.params["random_shift"], bool):
            raise ConfigError(f"{where}: random_shift must be true or false")
        self.random_shift: bool = self.params["random_shift"]
        self.train_eps  # noqa: B018 -- validates the budget string now

    def train_limit(self) -> int | None:
        return self.train_images

    # the per-family part ------------------------------------------------------------------

    def _setup(self, device: torch.device, rng: torch.Generator) -> None:
        """Create the trainable state."""

    @abstractmethod
    def _current(self) -> torch.Tensor:
        """The perturbation as a differentiable (1,3,S,S) tensor within train_eps."""

    @abstractmethod
    def _step(self, delta: torch.Tensor, loss: torch.Tensor) -> None:
        """Update the trainable state from the loss (negated mean objective)."""

    def _extra_tensors(self) -> dict[str, torch.Tensor]:
        return {}

    # -------------------------------------------------------------------------------------

    def _train(self, model: IQAModel, data: TrainingData) -> dict[str, torch.Tensor]:
        device = _model_device(model)
        rng = torch.Generator().manual_seed(self.seed)
        self._setup(device, rng)
        checked = False
        for _ in range(self.epochs):
            # whole images (the crop is capped at each image's size)
            for x, ref in training_batches(data, self.batch_size, 1 << 30, rng, device):
                delta = self._current()
                shifted = delta
                if self.random_shift:
                    dy, dx = (int(v) for v in torch.randint(0, self.size, (2,), generator=rng))
                    shifted = torch.roll(delta, shifts=(dy, dx), dims=(2, 3))
                adv = (x + tile_to(shifted, x.shape[2], x.shape[3])).clamp(0, 1)
                value = self.objective(model, adv, ref)
                if not checked:
                    require_gradient(self, model, value)
                    checked = True
                mean = finite_mean(value)
                if mean is not None:  # a batch where the metric is NaN everywhere: no step
                    self._step(delta, -mean)
        with torch.no_grad():
            final = self._current().detach().clamp(-self.train_eps, self.train_eps)
        return {"delta": final, **self._extra_tensors()}

    def _check_artifact(self, tensors: Mapping[str, torch.Tensor]) -> None:
        delta = tensors.get("delta")
        if delta is None or tuple(delta.shape) != (1, 3, self.size, self.size):
            raise CheckpointError(f"no (1,3,{self.size},{self.size}) 'delta' tensor")
        if not torch.isfinite(delta).all() or delta.abs().max() > self.train_eps + 1e-6:
            raise CheckpointError("'delta' is not finite or exceeds train_eps")

    def _perturb(self, model: IQAModel, x: torch.Tensor, ref: torch.Tensor | None) -> torch.Tensor:
        assert self.artifact is not None
        delta = self.artifact["delta"].to(x.device, x.dtype) * self.scale
        delta = delta.clamp(-self.eps, self.eps)  # rounding of the scale only
        return (x + tile_to(delta, x.shape[2], x.shape[3])).clamp(0, 1)

    def perturbation(self) -> torch.Tensor:
        """The trained pattern at this attack's eps (for plots and transfer)."""
        if self.artifact is None:
            raise ConfigError(f"attack {self.info.name!r}: call fit() first")
        return (self.artifact["delta"] * self.scale).clamp(-self.eps, self.eps)


class UAP(UniversalAttack):
    """Adam on the pattern itself, clipped to train_eps after each step."""

    defaults: ClassVar[dict[str, Any]] = {**UniversalAttack.defaults, "lr": 1e-3}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lr = positive_float(self.params["lr"], f"attack {self.info.name!r}: lr")

    def _setup(self, device: torch.device, rng: torch.Generator) -> None:
        # the MSU code starts from a constant 1e-4 (not 0, where |x|-like scores have no slope)
        self._delta = torch.full((1, 3, self.size, self.size), 1e-4, device=device)
        self._delta.requires_grad_(True)
        self._optimizer = torch.optim.Adam([self._delta], lr=self.lr)

    def _current(self) -> torch.Tensor:
        return self._delta

    def _step(self, delta: torch.Tensor, loss: torch.Tensor) -> None:
        self._optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._delta.grad = zero_nonfinite(self._delta.grad)
        self._optimizer.step()
        with torch.no_grad():
            self._delta.clamp_(-self.train_eps, self.train_eps)


class CumulativeUAP(UniversalAttack):
    """Accumulates `alpha * sign(gradient)` of each batch into the pattern, then clips."""

    defaults: ClassVar[dict[str, Any]] = {**UniversalAttack.defaults, "alpha": "eps/10"}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # relative alphas ("eps/10") follow train_eps, not the cell's eps: training is shared
        self.alpha = resolve_step(
            self.params["alpha"], self.train_eps, f"attack {self.info.name!r}: alpha"
        )

    def _setup(self, device: torch.device, rng: torch.Generator) -> None:
        self._delta = torch.zeros((1, 3, self.size, self.size), device=device)

    def _current(self) -> torch.Tensor:
        return self._delta.detach().requires_grad_(True)

    def _step(self, delta: torch.Tensor, loss: torch.Tensor) -> None:
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            self._delta = (self._delta - self.alpha * zero_nonfinite(grad).sign()).clamp(
                -self.train_eps, self.train_eps
            )


class GenerativeUAP(UniversalAttack):
    """A U-Net maps a fixed noise image (drawn from the seed) to the pattern tanh * train_eps."""

    defaults: ClassVar[dict[str, Any]] = {
        **UniversalAttack.defaults,
        "lr": 1e-3,
        "depth": 6,
        "width": 16,
        "max_width": 128,
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        where = f"attack {self.info.name!r}"
        self.lr = positive_float(self.params["lr"], f"{where}: lr")
        self.depth, self.width, self.max_width = generator_params(self.params, where)
        if self.size % 2**self.depth:
            raise ConfigError(
                f"{where}: size {self.size} must be a multiple of 2**depth = {2**self.depth}"
            )

    def _setup(self, device: torch.device, rng: torch.Generator) -> None:
        self._noise = torch.rand((1, 3, self.size, self.size), generator=rng).to(device)
        self._generator = UNetGenerator(3, 3, self.depth, self.width, self.max_width).to(device)
        self._optimizer = torch.optim.Adam(self._generator.parameters(), lr=self.lr)

    def _current(self) -> torch.Tensor:
        return self._generator(self._noise) * self.train_eps

    def _step(self, delta: torch.Tensor, loss: torch.Tensor) -> None:
        self._optimizer.zero_grad(set_to_none=True)
        loss.backward()
        sanitize_grads(self._generator)
        self._optimizer.step()

    def _extra_tensors(self) -> dict[str, torch.Tensor]:
        return {"noise": self._noise.detach(), **state_tensors(self._generator, "generator.")}

    def _check_artifact(self, tensors: Mapping[str, torch.Tensor]) -> None:
        super()._check_artifact(tensors)
        generator = UNetGenerator(3, 3, self.depth, self.width, self.max_width)
        load_state(generator, tensors, "generator.")
