"""The RobustBlock pipeline on zoo models: convert -> train -> prune -> fine-tune -> card.

`python -m benchmark robustify --base <zoo model> [--tau T | --prune-fraction F] -o
models/robust-<base>` takes a shipped zoo model, converts its network to RobustBlocks
(`robustify`, orthogonal layers initialised from the nearest orthogonal projection of the
trained weights), trains it with the zoo recipe, prunes output channels whose mean |w| is
below tau, fine-tunes, and writes a checkpoint plus a card that records every step's
held-out SROCC/PLCC, parameter counts, the exact command and the certified Lipschitz bound.

The card stores no architecture beyond the base's: the loader converts the base
architecture again and reads the pruned widths from the checkpoint's tensor shapes
(`resize_to_state`), so a card can never disagree with its file.
"""

from __future__ import annotations

import logging
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from benchmark.errors import ConfigError
from benchmark.models.robust_net import convert_network, core_parent, layer_widths
from benchmark.params import count_parameters
from benchmark.robust.prune import prune
from benchmark.train.card import SCORE_RANGE, model_card, training_table, write_card
from benchmark.train.config import TrainConfig
from benchmark.train.loop import open_splits, save_and_evaluate, train_model

if TYPE_CHECKING:
    from benchmark.datasets.base import IQADataset

log = logging.getLogger(__name__)

__all__ = [
    "RobustifyConfig",
    "run_robustify",
]


def prune_input_side(net: nn.Module, crop: int, image_side: int) -> int:
    """Side of the example image on which pruning traces channel couplings: one patch.

    Patch models see one training crop. Models that cut images into patches on the batch
    axis (WaDIQaM: 32 px, and pyiqa drops the last row and column of patches, so 64 px gives
    exactly one) are traced on one patch: the couplings are the same and it is far cheaper.
    """
    if crop:
        return crop
    size = getattr(core_parent(net)[2], "patch_size", None)
    if isinstance(size, int) and 0 < 2 * size <= image_side:
        return 2 * size
    return image_side


# ---------------------------------------------------------------------------------------
# the pipeline


@dataclass
class RobustifyConfig:
    """One convert -> train -> prune -> fine-tune run; defaults follow the base's recipe."""

    base: str
    out: str
    name: str | None = None
    dataset: str | None = None  # default: the dataset the base was trained on
    data_root: str | None = None
    tau: float | None = None
    prune_fraction: float | None = None
    epochs: int = 10  # training after conversion
    finetune_epochs: int = 5  # after pruning
    lr: float = 1e-3
    finetune_lr: float = 3e-4
    patience: int = 4
    crop: int | None = None  # default: the base card's training crop
    patches: int | None = None
    batch_size: int | None = None
    init_from_base: bool = True
    orth: str = "fourier"  # "explicit": ExplicitOrthConv2d instead of OrthConv2d
    save_dtype: str = "float32"
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    progress: bool = True

    def validate(self) -> None:
        if self.tau is not None and self.prune_fraction is not None:
            raise ConfigError("give --tau or --prune-fraction, not both")
        if self.tau is not None and not self.tau >= 0:
            raise ConfigError(f"--tau must be >= 0, got {self.tau}")
        if self.prune_fraction is not None and not 0 <= self.prune_fraction < 1:
            raise ConfigError(f"--prune-fraction must be in [0, 1), got {self.prune_fraction}")
        for key in ("epochs", "finetune_epochs", "patience"):
            if getattr(self, key) < 0 or (key == "patience" and self.patience < 1):
                raise ConfigError(f"--{key.replace('_', '-')} must be positive")
        if self.orth not in ("fourier", "explicit"):
            raise ConfigError(f"--orth must be fourier or explicit, got {self.orth!r}")
        if self.save_dtype not in ("float32", "float16"):
            raise ConfigError("--save-dtype must be float32 or float16")
        if not (self.lr > 0 and self.finetune_lr > 0):
            raise ConfigError("learning rates must be positive")

    @property
    def model_name(self) -> str:
        return self.name or Path(self.out).name


def command_line(cfg: RobustifyConfig) -> str:
    """The canonical command that reproduces this run (recorded on the card)."""
    parts = ["python", "-m", "benchmark", "robustify", "--base", cfg.base]
    if cfg.dataset:
        parts += ["--dataset", cfg.dataset]
    if cfg.tau is not None:
        parts += ["--tau", f"{cfg.tau:g}"]
    if cfg.prune_fraction is not None:
        parts += ["--prune-fraction", f"{cfg.prune_fraction:g}"]
    parts += ["--epochs", str(cfg.epochs), "--finetune-epochs", str(cfg.finetune_epochs)]
    parts += ["--lr", f"{cfg.lr:g}", "--finetune-lr", f"{cfg.finetune_lr:g}"]
    parts += ["--patience", str(cfg.patience)]
    for key in ("crop", "patches", "batch_size"):
        if getattr(cfg, key) is not None:
            parts += [f"--{key.replace('_', '-')}", str(getattr(cfg, key))]
    if not cfg.init_from_base:
        parts += ["--random-init"]
    if cfg.orth != "fourier":
        parts += ["--orth", cfg.orth]
    if cfg.save_dtype != "float32":
        parts += ["--save-dtype", cfg.save_dtype]
    parts += ["--seed", str(cfg.seed), "--device", cfg.device]
    if cfg.threads:
        parts += ["--threads", str(cfg.threads)]
    if cfg.name and cfg.name != Path(cfg.out).name:
        parts += ["--name", cfg.name]
    parts += ["-o", cfg.out]
    return shlex.join(parts)


def _train_config(
    cfg: RobustifyConfig, base: dict[str, Any], epochs: int, lr: float
) -> TrainConfig:
    tr = base.get("training", {})
    crop = cfg.crop if cfg.crop is not None else int(tr.get("crop", 32))
    return TrainConfig(
        arch=base["arch"],
        out=cfg.out,
        arch_params=dict(base.get("arch_params", {})),
        name=cfg.model_name,
        dataset=cfg.dataset or tr.get("dataset", "builtin"),
        data_root=cfg.data_root,
        epochs=max(epochs, 1),
        crop=crop,
        patches=cfg.patches if cfg.patches is not None else int(tr.get("patches_per_image", 8)),
        batch_size=(
            cfg.batch_size if cfg.batch_size is not None else int(tr.get("batch_size", 64))
        ),
        lr=lr,
        patience=cfg.patience,
        seed=cfg.seed,
        device=cfg.device,
        threads=cfg.threads,
        save_dtype=cfg.save_dtype,
        progress=cfg.progress,
    )


def certify(net: nn.Module, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """Certified L2 Lipschitz bound at `input_shape` (or why there is none) and a lower check."""
    from benchmark.robust.lipschitz import empirical_lipschitz, lipschitz_analysis

    analysis = lipschitz_analysis(net, input_shape)
    empirical = empirical_lipschitz(net, input_shape, n=8)
    out: dict[str, Any] = {
        "input_shape": list(input_shape),
        "empirical_lower": round(empirical, 6),
        "method": "traced product of exact per-layer L2 operator norms (upper bound)",
    }
    if analysis.bound is None:
        out["unavailable"] = "; ".join(analysis.reasons)[:400]
    else:
        out["lipschitz"] = float(f"{analysis.bound:.6g}")
    return out


def run_robustify(
    cfg: RobustifyConfig,
    open_split: Callable[[str], IQADataset] | None = None,
    base_card: Path | None = None,
) -> dict[str, Any]:
    """Run every step, write `<out>/model.safetensors` and `<out>/card.toml`, return the card.

    `open_split(split)` opens the data (default: the registered dataset) and `base_card` the
    base's card (default: the registered zoo model `cfg.base`).
    """
    from benchmark.models.registry import model_registry
    from benchmark.models.zoo import build_network, read_model_card
    from benchmark.report.evaluation import evaluate_model

    cfg.validate()
    if cfg.tau is None and cfg.prune_fraction is None:
        cfg.prune_fraction = 0.25
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if base_card is None:
        entry = model_registry().get(cfg.base)
        if "card" not in entry.meta:
            raise ConfigError(f"--base {cfg.base!r} is not a zoo model (it has no card to convert)")
        base_card = Path(entry.meta["card"])
    base = read_model_card(base_card)
    if base["kind"] != "NR":
        raise ConfigError(f"--base {cfg.base!r} is {base['kind']}; only NR zoo models train here")
    train_cfg = _train_config(cfg, base, cfg.epochs, cfg.lr)
    tune_cfg = _train_config(cfg, base, cfg.finetune_epochs, cfg.finetune_lr)
    tune_cfg.seed = cfg.seed + 1
    train_cfg.validate()
    train, val, test_ds = open_splits(train_cfg, open_split)
    img_shape = (1, *train.images[0].shape)
    steps: list[dict[str, Any]] = []

    def record(step: str, net: nn.Module, minutes: float, **extra: Any) -> None:
        rep = evaluate_model(net, test_ds, device=cfg.device, n_boot=200, seed=cfg.seed)
        bound = certify(net.cpu(), img_shape)
        net.to(cfg.device)
        row = {
            "step": step,
            "srocc": rep["srocc"],
            "plcc": rep["plcc"],
            "parameters": count_parameters(net),
            "minutes": round(minutes, 2),
            "lipschitz": bound.get("lipschitz", "unavailable"),
            **extra,
        }
        steps.append(row)
        log.info("%s: %s", step, row)

    t_all, c_all = time.time(), time.process_time()
    base_net = build_network(base).to(cfg.device)
    record("base", base_net, 0.0)

    t0 = time.time()
    net, report = convert_network(base_net.cpu(), init_from_base=cfg.init_from_base, orth=cfg.orth)
    net.to(cfg.device)
    record(
        "convert", net, (time.time() - t0) / 60, fully_converted=report.fully_converted,
        unconverted=[f"{n}: {why}" for n, why in report.unconverted],
    )  # fmt: skip

    trained = train_model(train_cfg, train, val, net=net)
    net = trained.net
    record(
        "train", net, trained.minutes, epochs_run=trained.epochs_run, best_epoch=trained.best_epoch
    )

    t0 = time.time()
    patch = prune_input_side(net, train_cfg.crop, img_shape[-1])
    example = torch.rand(
        (1, img_shape[1], patch, patch), generator=torch.Generator().manual_seed(0)
    )
    net, prune_report = prune(
        net.cpu(), tau=cfg.tau, fraction=cfg.prune_fraction, example_input=example
    )
    net.to(cfg.device)
    record(
        "prune", net, (time.time() - t0) / 60, removed=prune_report.removed,
        tau=cfg.tau if cfg.tau is not None else "none",
        fraction=cfg.prune_fraction if cfg.prune_fraction is not None else "none",
    )  # fmt: skip

    if cfg.finetune_epochs > 0:
        tuned = train_model(tune_cfg, train, val, net=net)
        net = tuned.net
        record(
            "finetune", net, tuned.minutes, epochs_run=tuned.epochs_run, best_epoch=tuned.best_epoch
        )

    reloaded, evaluation = save_and_evaluate(train_cfg, net, test_ds, robust={"orth": cfg.orth})
    certified = certify(reloaded.cpu(), img_shape)
    robust = {
        "orth": cfg.orth,
        "init_from_base": cfg.init_from_base,
        "fully_converted": report.fully_converted,
        "conversion": [f"{n}: {a} -> {b}" for n, a, b in report.converted],
        "unconverted": [f"{n}: {why}" for n, why in report.unconverted],
        "tau": cfg.tau if cfg.tau is not None else "none",
        "prune_fraction": cfg.prune_fraction if cfg.prune_fraction is not None else "none",
        "widths": layer_widths(net),
    }
    conv_kind = "Fourier" if cfg.orth == "fourier" else "explicit-kernel (BCOP)"
    description = (
        f"RobustBlock version of {cfg.base}: orthogonal {conv_kind} convolutions, MaxMin, orthogonal "
        f"linear layers; trained, pruned ({steps[-2 if cfg.finetune_epochs else -1]['parameters']:,}"
        f" parameters), fine-tuned on {train_cfg.dataset}/{train_cfg.train_split}"
        + ("" if "lipschitz" in certified else "; NO certified Lipschitz bound (see certified)")
    )
    training = training_table(
        train_cfg,
        command_line(cfg),
        count_parameters(reloaded) or 0,
        (time.time() - t_all) / 60,
        (time.process_time() - c_all) / 60,
        base_parameters=steps[0]["parameters"],
    )
    card = model_card(
        train_cfg,
        source="robustblock",
        base=cfg.base,
        score_range=base.get("score_range", SCORE_RANGE),
        description=description,
        sections={"robust": robust, "steps": steps},
        training=training,
        evaluation={**evaluation, "base_srocc": steps[0]["srocc"]},
        certified=certified,
    )
    path = write_card(cfg.out, card)
    log.info("wrote %s (test SROCC %.4f)", path, evaluation["srocc"])
    return card
