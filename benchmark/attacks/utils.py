"""Helpers every attack shares: the model state an attack runs under, private seeded RNG,
per-image random keys and step sizes written relative to the budget."""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import torch
from torch import nn

from benchmark.budget import parse_budget
from benchmark.errors import ConfigError


class _FiniteGrad(torch.autograd.Function):
    """Identity forward; backward replaces NaN and inf gradient entries by 0."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        return zero_nonfinite(grad)


def zero_nonfinite(grad: torch.Tensor) -> torch.Tensor:
    """A gradient with NaN/inf entries set to 0 (where a metric's gradient is undefined)."""
    return torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)


def finite_grad(x: torch.Tensor) -> torch.Tensor:
    """`x` unchanged, but gradients flowing back into it are made finite."""
    return _FiniteGrad.apply(x) if x.requires_grad else x


@contextlib.contextmanager
def frozen_eval(model: nn.Module) -> Iterator[None]:
    """Run `model` in eval mode with frozen parameters, then restore every flag exactly.

    Eval mode makes dropout/batch-norm deterministic and per-image (a batch-norm in training
    mode would mix images of a batch and update its running statistics); frozen parameters
    keep autograd from building weight-gradient graphs. Flags are restored module by module,
    so a caller's mix of train/eval submodules survives the attack.
    """
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in grads:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
        for p, requires_grad in grads:
            p.requires_grad_(requires_grad)


@contextlib.contextmanager
def seeded_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed the global CPU generator (and `device`'s) for the block, then restore the caller's.

    Attacks and stochastic models that draw from the global RNG become deterministic under
    `seed` without changing the random stream of the code that called them.
    """
    if device.type == "cpu":
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            yield
        return
    module = torch.get_device_module(device.type)
    index = device.index if device.index is not None else module.current_device()
    with torch.random.fork_rng(devices=[index], device_type=device.type):
        torch.default_generator.manual_seed(seed)
        if device.type == "cuda":
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        else:
            module.manual_seed(seed)
        yield


def image_keys(x: torch.Tensor, seed: int) -> list[int]:
    """One 64-bit RNG seed per image, derived from the attack seed and the image's pixels.

    Random starts drawn from these keys depend on the image alone, not on its position in the
    batch or on the batch size, so an image attacked alone or in any batch starts the same.
    """
    pixels = x.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()
    salt = int(seed).to_bytes(16, "little", signed=True)
    keys = []
    for image in pixels:
        digest = hashlib.blake2b(image.tobytes(), digest_size=8, salt=salt).digest()
        keys.append(int.from_bytes(digest, "little"))
    return keys


def resolve_step(value: str | float | int, eps: float, what: str = "alpha") -> float:
    """A step size as an absolute number ("1/255", 0.004) or relative to eps ("eps/4", "eps",
    "eps*0.5", "2*eps"); relative steps follow the budget when eps is overridden."""
    if isinstance(value, str) and "eps" in value:
        text = value.replace(" ", "")
        try:
            if text == "eps":
                factor = Fraction(1)
            elif text.startswith("eps/"):
                factor = 1 / Fraction(text[4:])
            elif text.startswith("eps*"):
                factor = Fraction(text[4:])
            elif text.endswith("*eps"):
                factor = Fraction(text[:-4])
            else:
                raise ValueError(text)
        except (ValueError, ZeroDivisionError):
            raise ConfigError(
                f"{what} {value!r} is not a step size; write an absolute value like '1/255' "
                "or one relative to the budget like 'eps', 'eps/4', 'eps*0.5', '2*eps'"
            ) from None
        if factor <= 0:
            raise ConfigError(f"{what} {value!r} must be positive")
        step = float(factor) * eps
        if step > 1.0:
            raise ConfigError(f"{what} {value!r} is {step:.4g} at eps {eps:.4g}; it must be <= 1")
        return step
    return parse_budget(value, what)


# -- card parameter validation (one message style for every attack) -----------------------


def positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{what} must be a positive integer, got {value!r}")
    return value


def positive_float(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise ConfigError(f"{what} must be a positive number, got {value!r}")
    return float(value)


def non_negative(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
        raise ConfigError(f"{what} must be a finite number >= 0, got {value!r}")
    return float(value)


def boolean(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{what} must be true or false, got {value!r}")
    return value
