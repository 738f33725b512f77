"""What a training run is given (`TrainConfig`) and what it gives back (`TrainResult`).

Why a module of its own: the loop (`benchmark.train.loop`) and the card writer
(`benchmark.train.card`) both need these types, and the loop writes cards; keeping the
types below both lets the card writer stay one module without an import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from benchmark.errors import ConfigError

CHECKPOINT_NAME = "model.safetensors"

# Per-architecture defaults: the recipes of the shipped zoo cards (see each card's command).
RECIPES: dict[str, dict[str, Any]] = {
    "cnniqa": {
        "arch_params": {"patch": 32},
        "crop": 32,
        "patches": 8,
        "batch_size": 128,
    },
    "wadiqam_nr": {
        "arch_params": {"train_patch_num": 4},
        "crop": 0,
        "patches": 1,
        "batch_size": 32,
        "lr": 3e-4,
    },
    "resnet_small": {
        "arch_params": {"mscn": True, "patch": 64},
        "crop": 64,
        "patches": 4,
        "batch_size": 64,
    },
}
DEFAULT_RECIPE: dict[str, Any] = {"arch_params": {}, "crop": 0, "patches": 1, "batch_size": 16}


@dataclass
class TrainConfig:
    arch: str
    out: str
    arch_params: dict[str, Any] = field(default_factory=dict)
    name: str | None = None
    dataset: str = "builtin"
    data_root: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    epochs: int = 30
    crop: int = 32  # training patch side; 0 = whole images
    patches: int = 8  # random patches per image per epoch
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 6  # epochs without a better val SROCC before stopping
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    init: str | None = None
    save_dtype: str = "float32"
    eval_batch: int = 32
    progress: bool = True

    def validate(self) -> None:
        for key in ("epochs", "patches", "batch_size", "eval_batch"):
            if getattr(self, key) < 1:
                raise ConfigError(f"--{key.replace('_', '-')} must be at least 1")
        if self.crop < 0:
            raise ConfigError("--crop must be >= 0 (0 = whole images)")
        if self.patience < 1:
            raise ConfigError("--patience must be at least 1")
        if not self.lr > 0:
            raise ConfigError("--lr must be positive")
        if self.save_dtype not in ("float32", "float16"):
            raise ConfigError("--save-dtype must be float32 or float16")
        if self.init is not None and not self.init.startswith("pyiqa:"):
            raise ConfigError(f"--init must look like pyiqa:<metric>, got {self.init!r}")

    @property
    def model_name(self) -> str:
        return self.name or Path(self.out).name


@dataclass
class TrainResult:
    net: nn.Module
    history: list[dict[str, float]]
    best_epoch: int
    best_val_srocc: float
    epochs_run: int
    minutes: float  # wall clock, training loop only
    cpu_minutes: float  # CPU time of this process (all threads): comparable on a busy machine
    losses: list[float]  # per-step training loss


__all__ = ["CHECKPOINT_NAME", "DEFAULT_RECIPE", "RECIPES", "TrainConfig", "TrainResult"]
