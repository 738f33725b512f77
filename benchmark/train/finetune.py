"""Defenses by fine-tuning a zoo model: adversarial training (AT) and gradient-norm
regularisation (NT). `python -m benchmark train --defense at|nt --base MODEL -o models/at-MODEL`.

Why fine-tuning, not training from scratch: the question the benchmark asks is what a
defense buys *for a given model*, so each defense starts from the shipped base checkpoint,
sees the same data and patch recipe, and is scored by the same evaluation and attacks.
Both methods only change the loss (`benchmark.train.loop.train_model(net=..., objective=...)`);
the training loop, checkpointing, evaluation and card writing are the zoo's.

- **AT** (Madry et al. 2018; for IQA metrics Chistyakova et al. 2024): in each batch a
  fraction `--at-mix` of the training patches is replaced by an attacked version crafted
  on the *current* model (L_inf PGD from a uniform random start, or one FGSM step), and
  the L1 target stays the clean MOS: the model learns to not move under the perturbation.
  The attack maximises the training loss itself, |f(x') - mos| (`--at-objective loss`,
  the min-max formulation): it pushes each patch in whichever direction it already errs,
  so it trains against both inflation and deflation. `--at-objective up` instead inflates
  f(x'), the benchmark's default threat (`run --direction up`); on cnniqa-builtin it mostly
  taught the model to score everything lower (I-FGSM gain 0.148 -> 0.143 on 32 val images,
  against 0.075 with `loss`), so `loss` is the default.
- **NT** (gradient-norm regularisation; Liu et al., CVPR 2024): L1 + lambda * ||d f(x)/dx||_2^2
  per training patch (mean over the batch). A first-order view of why it helps: an L_inf
  attack of budget eps moves the score by about eps * ||grad||_1, so a flatter score
  surface gives the attacker less to climb. `--nt-grad double` (default) differentiates the
  penalty exactly by double backpropagation; `--nt-grad fd` uses a finite difference along
  the unit gradient instead (Liu et al.'s trick), for architectures whose second
  derivative is undefined somewhere (resnet_small). Batch-norm layers run in eval mode
  during NT, so the penalised gradient is the deployed model's (`batchnorm_frozen`).

Model selection is the zoo's: the epoch with the best *clean* validation SROCC is kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmark.budget import budget_label, parse_budget
from benchmark.errors import ConfigError, NonFiniteScore, UnknownNameError
from benchmark.train.card import (
    bar_evaluation,
    command_line,
    model_card,
    training_table,
    write_card,
)
from benchmark.train.config import TrainConfig, TrainResult
from benchmark.train.loop import (
    l1_objective,
    open_splits,
    predict,
    save_and_evaluate,
    train_model,
)

METHODS = {"at": "adversarial training", "nt": "gradient-norm regularisation"}
AT_ATTACKS = ("pgd", "fgsm")
AT_OBJECTIVES = ("loss", "up")
NT_GRADS = ("double", "fd")
FD_STEP = 1e-3  # L2 length of the finite-difference step along the unit input gradient
BASE_SOURCES = ("zoo",)
DEFAULT_EPOCHS = 5
DEFAULT_LR = 1e-4  # 10x below the base recipes' 1e-3: fine-tuning, not retraining
DEFAULT_AT_STEPS = 3
DEFAULT_NT_WEIGHT = 1.0


# ---------------------------------------------------------------------------------------
# configuration


@dataclass
class DefenseConfig:
    """What the defense adds to a zoo training run; `validate` gives ConfigErrors."""

    method: str
    base: str
    at_attack: str = "pgd"
    at_eps: float = 4 / 255
    at_steps: int | None = None  # None: 3 for pgd, 1 for fgsm
    at_alpha: str | None = None  # a step like "1/255" or "eps/2"; None: 2.5 * eps / steps
    at_mix: float = 0.5
    at_objective: str = "loss"
    nt_weight: float = DEFAULT_NT_WEIGHT
    nt_grad: str = "double"

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"--defense must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.at_attack not in AT_ATTACKS:
            raise ConfigError(
                f"--at-attack must be one of {', '.join(AT_ATTACKS)}, got {self.at_attack!r}"
            )
        parse_budget(self.at_eps, "--at-eps")
        if self.at_attack == "fgsm" and self.at_steps not in (None, 1):
            raise ConfigError(f"--at-attack fgsm is one step; got --at-steps {self.at_steps}")
        if self.at_attack == "fgsm" and self.at_alpha is not None:
            raise ConfigError("--at-attack fgsm steps by eps; leave out --at-alpha")
        if self.at_steps is not None and self.at_steps < 1:
            raise ConfigError(f"--at-steps must be at least 1, got {self.at_steps}")
        if not self.alpha > 0:  # resolving it checks --at-alpha
            raise ConfigError(f"--at-alpha must be positive, got {self.alpha_text!r}")
        if not 0 < self.at_mix <= 1:
            raise ConfigError(f"--at-mix must lie in (0, 1], got {self.at_mix}")
        if self.at_objective not in AT_OBJECTIVES:
            raise ConfigError(
                f"--at-objective must be one of {', '.join(AT_OBJECTIVES)}, got {self.at_objective!r}"
            )
        if not 0 <= self.nt_weight < math.inf:
            raise ConfigError(f"--nt-weight must be a finite number >= 0, got {self.nt_weight}")
        if self.nt_grad not in NT_GRADS:
            raise ConfigError(
                f"--nt-grad must be one of {', '.join(NT_GRADS)}, got {self.nt_grad!r}"
            )

    @property
    def steps(self) -> int:
        if self.at_attack == "fgsm":
            return 1
        return DEFAULT_AT_STEPS if self.at_steps is None else self.at_steps

    @property
    def alpha_text(self) -> str:
        """The step size as written on the command line: given, or Madry's 2.5 * eps / steps."""
        if self.at_attack == "fgsm":
            return "eps"
        return self.at_alpha or f"eps*{Fraction(5, 2) / self.steps}"

    @property
    def alpha(self) -> float:
        from benchmark.attacks.utils import resolve_step

        return resolve_step(self.alpha_text, self.at_eps, "--at-alpha")

    def cli_args(self) -> list[str]:
        """The options that reproduce this defense (every one spelled out, defaults too)."""
        parts = ["--defense", self.method, "--base", self.base]
        if self.method == "at":
            parts += ["--at-attack", self.at_attack, "--at-eps", budget_label(self.at_eps)]
            if self.at_attack == "pgd":
                parts += ["--at-steps", str(self.steps), "--at-alpha", self.alpha_text]
            parts += ["--at-mix", f"{self.at_mix:g}", "--at-objective", self.at_objective]
        else:
            parts += ["--nt-weight", f"{self.nt_weight:g}", "--nt-grad", self.nt_grad]
        return parts

    def table(self) -> dict[str, Any]:
        """The card's `[defense]` table (what was done; measured values are added later)."""
        if self.method == "nt":
            return {
                "method": "nt",
                "weight": self.nt_weight,
                "gradient": NT_GRAD_MEANING[self.nt_grad],
                "penalty": "squared L2 norm of the input gradient of the score per training "
                "patch, mean over the batch (double backprop), added to the L1 loss",
            }
        return {
            "method": "at",
            "attack": self.at_attack,
            "norm": "linf",
            "eps": self.at_eps,
            "eps_label": budget_label(self.at_eps),
            "steps": self.steps,
            "alpha": self.alpha,
            "alpha_rule": self.alpha_text,
            "random_start": self.at_attack == "pgd",
            "mix": self.at_mix,
            "attack_objective": self.at_objective,
            "attack_objective_means": AT_OBJECTIVE_MEANING[self.at_objective],
            "target": "clean MOS",
            "crafted_on": "the current model at each step, in eval mode",
        }


NT_GRAD_MEANING = {
    "double": "exact, by double backpropagation",
    "fd": f"finite difference of the score along the unit input gradient, step {FD_STEP:g}",
}
AT_OBJECTIVE_MEANING = {
    "loss": "maximise |f(x') - mos| (the L1 training loss)",
    "up": "maximise the quality f(x') (inflation)",
}


# ---------------------------------------------------------------------------------------
# objectives: (net, x, mos) -> loss, for train_model


def linf_pgd(
    attack_loss: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    eps: float,
    steps: int,
    alpha: float,
    random_start: bool,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Signed-gradient ascent of `attack_loss` (a per-image vector) in the L_inf ball.

    The benchmark's own PGD (`attacks.gradient.PGD`) needs an `IQAModel` and draws its start
    per image from a pixel hash; during training the patches change at every step and the
    loss is not the score, so this is the plain loop, with the same update and projection.
    """
    x = x.detach()
    if random_start:
        noise = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        adv = (x + (2 * noise - 1) * eps).clamp(0, 1)
    else:
        adv = x.clone()
    for _ in range(steps):
        adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(attack_loss(adv).sum(), adv)
        adv = adv.detach() + alpha * grad.sign()
        adv = (x + (adv - x).clamp(-eps, eps)).clamp(0, 1)
    return adv.detach()


@dataclass
class AdversarialObjective:
    """AT's loss: L1 to the clean MOS on a batch whose first `mix` share is attacked.

    The batches of `train_model` are shuffled, so the first share is a random subset.
    `max_linf` records the largest perturbation ever used (the card states it).
    """

    cfg: DefenseConfig
    lower_better: bool = False
    seed: int = 0
    max_linf: float = 0.0
    attacked: int = 0
    generator: torch.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.generator = torch.Generator().manual_seed(self.seed)

    def attack_loss(
        self, net: nn.Module, y: torch.Tensor
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        if self.cfg.at_objective == "loss":
            return lambda adv: (predict(net, adv) - y).abs()
        sign = -1.0 if self.lower_better else 1.0
        return lambda adv: sign * predict(net, adv)

    def perturb(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Attacked versions of `x` against `net` (eval mode, frozen weights, restored after)."""
        from benchmark.attacks.utils import frozen_eval

        with frozen_eval(net), torch.enable_grad():
            adv = linf_pgd(
                self.attack_loss(net, y),
                x,
                self.cfg.at_eps,
                self.cfg.steps,
                self.cfg.alpha,
                random_start=self.cfg.at_attack == "pgd",
                generator=self.generator,
            )
        self.max_linf = max(self.max_linf, float((adv - x).abs().max()))
        self.attacked += x.shape[0]
        return adv

    def __call__(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        k = min(x.shape[0], max(1, round(self.cfg.at_mix * x.shape[0])))
        x = torch.cat([self.perturb(net, x[:k], y[:k]), x[k:]])
        return l1_objective(net, x, y)


def input_gradient_sq_norm(
    net: nn.Module, x: torch.Tensor, create_graph: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, ||d score_i / d x_i||_2^2 per image), differentiable w.r.t. the weights.

    The gradient of the summed scores is each image's own gradient as long as images do
    not interact (eval mode, or no batch-norm). A network that ignores its input gets a
    zero penalty rather than an autograd error.
    """
    x = x.detach().requires_grad_(True)
    scores = predict(net, x)
    zero = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
    if not scores.requires_grad:
        return scores, zero
    (grad,) = torch.autograd.grad(scores.sum(), x, create_graph=create_graph, allow_unused=True)
    if grad is None:
        return scores, zero
    return scores, grad.pow(2).flatten(1).sum(dim=1)


def _same_randomness(x: torch.Tensor) -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
    """A `predict` whose calls all draw the same random numbers (dropout masks): a finite
    difference between two calls then measures the input change, not two masks."""
    seed = int(torch.randint(2**62, (1,)))  # from the training stream: runs stay seeded
    devices = [x.device.index or 0] if x.device.type == "cuda" else []

    def forward(net: nn.Module, inp: torch.Tensor) -> torch.Tensor:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            return predict(net, inp)

    return forward


def input_gradient_sq_norm_fd(
    net: nn.Module, x: torch.Tensor, step: float = FD_STEP
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, ||d score_i / d x_i||_2^2 per image) without a second backward pass.

    With u the unit input gradient (held constant), (f(x + step*u) - f(x)) / step is the
    directional derivative along u, i.e. the gradient norm, and its weight gradient is that
    of the norm as step -> 0 (Liu et al. 2024 use the same trick). Why it exists: double
    backprop needs second derivatives everywhere, and some layers do not have them where
    the forward and first derivative are fine (resnet_small's std pooling of a dead channel
    gives 0 * inf = NaN weight gradients).
    """
    forward = _same_randomness(x)
    x = x.detach().requires_grad_(True)
    scores = forward(net, x)
    zero = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
    if not scores.requires_grad:
        return scores, zero
    (grad,) = torch.autograd.grad(scores.sum(), x, retain_graph=True, allow_unused=True)
    if grad is None:
        return scores, zero
    norm = grad.flatten(1).norm(dim=1).view(-1, *([1] * (x.dim() - 1)))
    unit = torch.where(norm > 0, grad / norm.clamp_min(1e-30), torch.zeros_like(grad))
    directional = (forward(net, x.detach() + step * unit) - scores) / step
    return scores, directional.pow(2)


@contextlib.contextmanager
def batchnorm_frozen(net: nn.Module) -> Iterator[None]:
    """Batch-norm layers in eval mode (running statistics, not updated) for the block.

    Why, for NT: in training mode a batch-norm couples the images of a batch, and the input
    gradient it gives is not the one an attacker of the deployed (eval-mode) model follows:
    on resnet-small-builtin the train-mode penalty was a fifth of the eval-mode one, and
    penalising it left the attack gain unchanged. Dropout keeps its training mode.
    """
    layers = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    modes = [m.training for m in layers]
    for m in layers:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(layers, modes, strict=True):
            m.train(mode)


@dataclass
class GradientNormObjective:
    """NT's loss: L1 to the MOS + weight * mean squared input-gradient norm, batch-norm
    frozen (`batchnorm_frozen`).

    `grad` chooses how the penalty is differentiated: "double" (exact) or "fd"
    (`input_gradient_sq_norm_fd`). Weights that became non-finite (a NaN second derivative
    on the previous step) stop the run with that hint rather than a bare NaN loss.
    """

    weight: float
    grad: str = "double"
    penalties: list[float] = field(default_factory=list)  # batch mean, per step

    def __call__(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with batchnorm_frozen(net):
            return self._loss(net, x, y)

    def _loss(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.penalties and not all(torch.isfinite(p).all() for p in net.parameters()):
            raise NonFiniteScore(
                f"NT: the weights became non-finite after step {len(self.penalties)}: the "
                "double-backprop gradient of the penalty is undefined somewhere in this "
                "architecture; use --nt-grad fd (finite differences)"
            )
        if self.grad == "fd":
            scores, penalty = input_gradient_sq_norm_fd(net, x)
        else:
            scores, penalty = input_gradient_sq_norm(net, x)
        self.penalties.append(float(penalty.detach().mean()))
        return nn.functional.l1_loss(scores, y) + self.weight * penalty.mean()


def make_objective(
    dcfg: DefenseConfig, lower_better: bool, seed: int
) -> AdversarialObjective | GradientNormObjective:
    if dcfg.method == "at":
        return AdversarialObjective(dcfg, lower_better=lower_better, seed=seed)
    return GradientNormObjective(dcfg.nt_weight, dcfg.nt_grad)


# ---------------------------------------------------------------------------------------
# the base model


def zoo_base_card(name: str) -> dict[str, Any]:
    """The card of zoo model `name`; UnknownNameError / ConfigError say what is wrong."""
    from benchmark.models.zoo import read_model_card, zoo_entries
    from benchmark.registry import unknown_name_message

    entries = {n: meta for n, _, meta in zoo_entries()}
    if name not in entries:
        raise UnknownNameError(
            unknown_name_message("model", name, entries)
            + "; --base must be one of the project's zoo models"
        )
    card = read_model_card(Path(entries[name]["card"]))
    if card["source"] not in BASE_SOURCES:
        raise ConfigError(
            f"--base {name!r} is a {card['source']} model; AT/NT fine-tune a model with source "
            f"{', '.join(BASE_SOURCES)} (a plain zoo checkpoint)"
        )
    return card


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------
# the run


def defense_card(
    dcfg: DefenseConfig,
    cfg: TrainConfig,
    base: dict[str, Any],
    result: TrainResult,
    report: dict[str, Any],
    objective: AdversarialObjective | GradientNormObjective,
    params: int,
) -> dict[str, Any]:
    """The zoo card of the run, made a defense card of `base`: the base's orientation and
    range, a [defense] table, and the loss, init and base checkpoint in [training]."""
    defense = dcfg.table()
    if isinstance(objective, AdversarialObjective):
        defense["max_linf_used"] = objective.max_linf
        defense["attacked_patches"] = objective.attacked
        loss = f"L1 to the clean MOS, {dcfg.at_mix:g} of each batch attacked"
    else:
        per_epoch = max(1, math.ceil(len(objective.penalties) / max(result.epochs_run, 1)))
        first, last = objective.penalties[:per_epoch], objective.penalties[-per_epoch:]
        defense["penalty_first_epoch"] = round(sum(first) / max(len(first), 1), 6)
        defense["penalty_last_epoch"] = round(sum(last) / max(len(last), 1), 6)
        loss = f"L1 + {dcfg.nt_weight:g} * squared input-gradient L2 norm"
    base_ckpt = base["_path"].parent / base["checkpoint"]
    defense["base_test_srocc"] = base.get("evaluation", {}).get("srocc")
    defense = {k: v for k, v in defense.items() if v is not None}
    training = training_table(
        cfg,
        command_line(cfg, head=dcfg.cli_args()),
        params,
        result.minutes,
        result.cpu_minutes,
        result,
        loss=loss,
        init=f"zoo:{dcfg.base}",
        base_checkpoint_sha256=file_sha256(base_ckpt),
    )
    description = (
        f"{METHODS[dcfg.method]} ({dcfg.method.upper()}) fine-tuning of {dcfg.base} "
        f"({base['arch']}) on {cfg.dataset}/{cfg.train_split}"
    )
    if dcfg.method == "at":
        description += f", {dcfg.at_attack} at eps {budget_label(dcfg.at_eps)}"
    else:
        description += f", weight {dcfg.nt_weight:g}"
    return model_card(
        cfg,
        source="defense",
        base=dcfg.base,
        kind=base["kind"],
        lower_better=base["lower_better"],
        score_range=base.get("score_range"),
        description=description,
        sections={"defense": defense},
        training=training,
        evaluation=bar_evaluation(report),
    )


def run_defense_training(
    dcfg: DefenseConfig,
    cfg: TrainConfig,
    open_split: Callable[[str], Any] | None = None,
    max_steps: int | None = None,
) -> dict[str, Any]:
    """Fine-tune `dcfg.base` into the defense; write checkpoint + card under `cfg.out`.

    `open_split(split)` opens the data (default: `cfg.dataset`); `max_steps` cuts the run
    short (tests).
    """
    from benchmark.models.zoo import build_network
    from benchmark.params import count_parameters

    dcfg.validate()
    cfg.validate()
    base = zoo_base_card(dcfg.base)
    if (cfg.arch, cfg.arch_params) != (base["arch"], base.get("arch_params", {})):
        raise ConfigError(
            f"the run's architecture ({cfg.arch} {cfg.arch_params}) is not --base "
            f"{dcfg.base}'s ({base['arch']} {base.get('arch_params', {})}): the card would "
            "describe another network than its checkpoint"
        )
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    net = build_network(base)
    train, val, test_ds = open_splits(cfg, open_split)
    objective = make_objective(dcfg, base["lower_better"], cfg.seed)
    result = train_model(cfg, train, val, max_steps=max_steps, net=net, objective=objective)
    reloaded, report = save_and_evaluate(cfg, result.net, test_ds)
    params = count_parameters(reloaded) or 0
    card = defense_card(dcfg, cfg, base, result, report, objective, params)
    write_card(cfg.out, card)
    return card


__all__ = [
    "AdversarialObjective",
    "DefenseConfig",
    "GradientNormObjective",
    "input_gradient_sq_norm",
    "input_gradient_sq_norm_fd",
    "linf_pgd",
    "run_defense_training",
]
