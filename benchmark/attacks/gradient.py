"""Signed-gradient L_inf attacks on a regression score: FGSM, I-FGSM, MI-FGSM and PGD.

All four ascend `Attack.objective` (the quality score, oriented for direction and the
model's lower_better) with steps `alpha * sign(g)`, projected after every step onto the
L_inf ball of radius eps around the clean image and onto [0, 1].

FGSM, I-FGSM and MI-FGSM run torchattacks' `UPGD` (its custom-loss hook turns the
classifier attack into one on a score; see `_ObjectiveNet`). PGD runs its own loop: see `PGD`.
The loss handed to torchattacks is a *sum* of per-image objectives, so each image's input
gradient is that of its own score and, with the model in eval mode, an image's result does
not depend on the rest of its batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torchattacks
from torch import nn

from benchmark.attacks.base import Attack, AttackInfo, Direction
from benchmark.attacks.utils import boolean, image_keys, non_negative, positive_int, resolve_step
from benchmark.models.base import IQAModel

Objective = Callable[[torch.Tensor], torch.Tensor]


class SignedGradientAttack(Attack):
    """Shared parameter handling of the signed-gradient family.

    `defaults` lists the card parameters a preset may set (and their values when it does
    not); `fixed` pins the settings that define the algorithm (FGSM is one step of eps).
    """

    norms: ClassVar[tuple[str, ...]] = ("linf",)
    defaults: ClassVar[dict[str, Any]] = {}
    fixed: ClassVar[dict[str, Any]] = {}

    def __init__(
        self,
        info: AttackInfo,
        eps: float,
        direction: Direction = "up",
        seed: int = 0,
        **params: Any,
    ) -> None:
        super().__init__(info, eps, direction, seed, **params)
        settings = {**self.params, **self.fixed}
        where = f"attack {info.name!r}"
        self.steps = positive_int(settings["steps"], f"{where}: steps")
        self.alpha = resolve_step(settings["alpha"], self.eps, f"{where}: alpha")
        self.momentum = non_negative(settings["momentum"], f"{where}: momentum")
        self.random_start = boolean(settings["random_start"], f"{where}: random_start")

    def config(self) -> dict[str, Any]:
        """The card's params plus what they resolve to (alpha in absolute units)."""
        out = super().config()
        out["resolved"] = {
            "steps": self.steps,
            "alpha": self.alpha,
            "momentum": self.momentum,
            "random_start": self.random_start,
        }
        return out


class _ObjectiveNet(nn.Module):
    """The per-image objective dressed as the classifier torchattacks expects.

    The model and reference image live in the closure `fn`, not in submodules: torchattacks
    calls `eval()` on the module it attacks and afterwards `train()` whenever that module
    was in training mode (a fresh module is), which on a real submodule would leave an
    eval-mode IQA model in training mode. Model mode is handled by `Attack.perturb` instead.
    The empty `anchor` parameter tells torchattacks the device; with no parameter it prints
    "Failed to set device automatically" and leaves its device unset (pyiqa's classical FR
    metrics have none).
    """

    def __init__(self, fn: Objective, device: torch.device) -> None:
        super().__init__()
        self.fn = fn
        self.anchor = nn.Parameter(torch.empty(0, device=device), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


class _UPGDAttack(SignedGradientAttack):
    """FGSM / I-FGSM / MI-FGSM through torchattacks.UPGD.

    UPGD divides each image's gradient by its mean absolute value before adding momentum
    (MI-FGSM's L1 normalisation; it does not change the sign, so FGSM and I-FGSM are the
    plain algorithms). No random start is used here, so UPGD draws no random numbers.
    Known quirk, harmless here: an image whose gradient is exactly zero at some step gets
    NaN momentum (0/0); `sign(NaN)` is 0 in torch, so that image stops moving for the rest
    of the attack. Without momentum a zero gradient means the image is at a stationary
    point it could not leave anyway; with momentum MI-FGSM would coast on. Output is never NaN.
    """

    def _perturb(self, model: IQAModel, x: torch.Tensor, ref: torch.Tensor | None) -> torch.Tensor:
        net = _ObjectiveNet(lambda images: self.objective(model, images, ref), x.device)
        upgd = torchattacks.UPGD(
            net,
            eps=self.eps,
            alpha=self.alpha,
            steps=self.steps,
            random_start=False,
            loss=lambda images, labels, target_labels: net(images).sum(),
            decay=self.momentum,
        )
        labels = torch.zeros(x.shape[0], device=x.device)  # unused by our loss; UPGD needs a tensor
        return upgd(x, labels)


class FGSM(_UPGDAttack):
    """Fast Gradient Sign Method: one step of size eps along the gradient sign."""

    fixed: ClassVar[dict[str, Any]] = {
        "steps": 1,
        "alpha": "eps",
        "momentum": 0.0,
        "random_start": False,
    }


class IFGSM(_UPGDAttack):
    """Iterative FGSM (BIM): small signed steps, each projected onto the eps ball."""

    defaults: ClassVar[dict[str, Any]] = {"steps": 10, "alpha": "1/255"}
    fixed: ClassVar[dict[str, Any]] = {"momentum": 0.0, "random_start": False}


class MIFGSM(_UPGDAttack):
    """Momentum I-FGSM: accumulates L1-normalised gradients with decay `momentum`."""

    defaults: ClassVar[dict[str, Any]] = {"steps": 10, "alpha": "1/255", "momentum": 1.0}
    fixed: ClassVar[dict[str, Any]] = {"random_start": False}


class PGD(SignedGradientAttack):
    """Projected gradient ascent from a uniform random start in the eps ball.

    Own loop rather than torchattacks.UPGD(random_start=True): UPGD draws the start for the
    whole batch as one stream from the global RNG, so an image's start (and result) would
    change with its position in the batch and with the batch size. Here each image draws
    its start from its own generator keyed by the seed and its pixels (`image_keys`), so a
    result is reproducible whatever the batching. The update equals UPGD's without
    momentum (a test checks PGD with random_start = false against I-FGSM bit for bit).
    """

    defaults: ClassVar[dict[str, Any]] = {"steps": 20, "alpha": "eps/4", "random_start": True}
    fixed: ClassVar[dict[str, Any]] = {"momentum": 0.0}

    def _perturb(self, model: IQAModel, x: torch.Tensor, ref: torch.Tensor | None) -> torch.Tensor:
        adv = (x + self._random_start(x)).clamp(0, 1) if self.random_start else x.clone()
        for _ in range(self.steps):
            adv.requires_grad_(True)
            (grad,) = torch.autograd.grad(self.objective(model, adv, ref).sum(), adv)
            adv = adv.detach() + self.alpha * grad.sign()
            adv = (x + (adv - x).clamp(-self.eps, self.eps)).clamp(0, 1)
        return adv

    def _random_start(self, x: torch.Tensor) -> torch.Tensor:
        noise = torch.empty_like(x)
        for i, key in enumerate(image_keys(x, self.seed)):
            generator = torch.Generator(device=x.device).manual_seed(key)
            noise[i].uniform_(-self.eps, self.eps, generator=generator)
        return noise
