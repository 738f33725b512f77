"""`python -m benchmark train`: train an NR model on a dataset with MOS, ship it as a zoo card.

Why this recipe: on a few thousand images and 2 CPU cores, whole-image training of a
small CNN overfits the content and learns little about distortion. What works is
sampling many random patches per image (each labelled with the image's MOS), L1 loss,
Adam with a cosine schedule, flips as augmentation, and scoring whole images at test
time by averaging over patches inside the model (`archs.PatchAverage`, or global
pooling for fully convolutional nets) so that the zoo model stays differentiable.

The best epoch on the validation split is kept (early stopping); the checkpoint is
written as safetensors, reloaded, and the *reloaded* model is evaluated on the held-out
split, so the numbers on the card are those of the shipped file.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import shlex
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from benchmark.datasets.base import IQADataset
from benchmark.errors import CheckpointError, ConfigError, DataError, NonFiniteScore

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "model.safetensors"
SROCC_BAR = 0.70  # every shipped zoo model (issue 4); the best one must reach 0.80

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


# ---------------------------------------------------------------------------------------
# data


@dataclass
class InMemory:
    """One split held in memory as uint8 (a 2350-image 192x192 split is 260 MB)."""

    images: list[torch.Tensor]  # (3, H, W) uint8 each
    mos: torch.Tensor  # (n,) float32

    def __len__(self) -> int:
        return len(self.images)


def load_split(dataset: IQADataset, progress: bool = False) -> InMemory:
    images, mos = [], []
    for sample in tqdm(
        dataset,
        total=len(dataset),
        desc=f"load {dataset.info.split}",
        disable=not progress,
        leave=False,
    ):
        if sample.mos is None or not math.isfinite(sample.mos):
            continue
        images.append((sample.image.clamp(0, 1) * 255).round().to(torch.uint8))
        mos.append(float(sample.mos))
    if len(images) < 2:
        raise DataError(
            f"dataset {dataset.name!r} split {dataset.info.split!r} has fewer than 2 images with a MOS"
        )
    return InMemory(images, torch.tensor(mos, dtype=torch.float32))


def _batches(
    data: InMemory, cfg: TrainConfig, gen: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch: `patches` random crops of every image, shuffled, randomly flipped."""
    order = torch.arange(len(data)).repeat(cfg.patches)
    order = order[torch.randperm(order.numel(), generator=gen)]
    for start in range(0, order.numel(), cfg.batch_size):
        idx = order[start : start + cfg.batch_size]
        crops = []
        for i in idx.tolist():
            img = data.images[i]
            h, w = img.shape[-2:]
            if cfg.crop:
                if h < cfg.crop or w < cfg.crop:
                    raise DataError(f"image {i} is {h}x{w}, smaller than --crop {cfg.crop}")
                y = int(torch.randint(0, h - cfg.crop + 1, (1,), generator=gen))
                x = int(torch.randint(0, w - cfg.crop + 1, (1,), generator=gen))
                img = img[:, y : y + cfg.crop, x : x + cfg.crop]
            flips = torch.rand(2, generator=gen)
            if flips[0] < 0.5:
                img = img.flip(-1)
            if flips[1] < 0.5:
                img = img.flip(-2)
            crops.append(img)
        if len({c.shape for c in crops}) > 1:
            raise DataError("images differ in size: train on random patches (--crop S)")
        yield torch.stack(crops).float().div_(255.0), data.mos[idx]


# ---------------------------------------------------------------------------------------
# initialisation from pyiqa weights


def _safe_torch_load() -> tuple[Callable[..., Any], Callable[..., Any]]:
    """A torch.load that never unpickles code (pyiqa's own loader would allow full unpickling)."""
    original = torch.load

    def load(*args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        return original(*args, **kwargs)

    return original, load


def pyiqa_pretrained_state(metric: str) -> dict[str, torch.Tensor]:
    """The weights of pyiqa metric `metric`, from pyiqa's cache only (never downloaded)."""
    from benchmark.models.archs import pyiqa_arch_class
    from benchmark.models.offline import MissingFile, no_downloads
    from benchmark.models.pyiqa_adapter import pyiqa_configs
    from benchmark.registry import unknown_name_message

    configs = pyiqa_configs()
    if metric not in configs:
        raise ConfigError(unknown_name_message("pyiqa metric", metric, configs))
    opts = dict(configs[metric]["metric_opts"])
    cls = pyiqa_arch_class(opts.pop("type"))
    original, safe = _safe_torch_load()
    torch.load = safe
    try:
        with no_downloads():
            net = cls(**opts)
    except MissingFile as exc:
        raise CheckpointError(f"--init pyiqa:{metric}: {exc}") from exc
    except Exception as exc:
        raise CheckpointError(
            f"--init pyiqa:{metric}: cannot load its weights safely: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        torch.load = original
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def init_from_pyiqa(net: nn.Module, metric: str) -> None:
    """Copy pyiqa weights into `net`, directly or into the network a PatchAverage wraps."""
    from benchmark.models.archs import core_module
    from benchmark.models.zoo import load_into

    state = pyiqa_pretrained_state(metric)
    load_into(core_module(net), state, Path(f"pyiqa:{metric}"))


# ---------------------------------------------------------------------------------------
# checkpoints


def save_checkpoint(net: nn.Module, path: Path, dtype: str = "float32") -> None:
    """safetensors, written atomically; float16 halves the size of large models."""
    from safetensors.torch import save_file

    state = {}
    for k, v in net.state_dict().items():
        v = v.detach().cpu()
        if dtype == "float16" and v.is_floating_point():
            v = v.half()
        state[k] = v.contiguous().clone()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.chmod(tmp, 0o644)  # safetensors creates the file 0600; a shipped model is world-readable
    os.replace(tmp, path)


def reload_checkpoint(arch: str, arch_params: dict[str, Any], path: Path) -> nn.Module:
    """Build the architecture and load `path` strictly, as the zoo loader does."""
    from benchmark.models.archs import build_arch
    from benchmark.models.zoo import load_into, load_state

    net = build_arch(arch, **arch_params)
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_state(path).items()}
    load_into(net, state, path)
    return net.eval()


# ---------------------------------------------------------------------------------------
# training


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


def _val_srocc(net: nn.Module, val: InMemory, cfg: TrainConfig) -> float:
    from benchmark.report.scores import srocc

    net.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(val), cfg.eval_batch):
            x = torch.stack(val.images[start : start + cfg.eval_batch]).float().div_(255.0)
            out.append(predict(net, x.to(cfg.device)).double().cpu())
    net.train()
    scores = torch.cat(out).numpy()
    if not np.all(np.isfinite(scores)):
        raise NonFiniteScore(
            "the model produced NaN/inf scores on the validation split; lower --lr"
        )
    return srocc(scores, val.mos.numpy())


Objective = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
"""(net, images, mos) -> scalar loss: what one training step minimises."""


def l1_objective(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The zoo's loss: L1 between the (patch-averaged) prediction and the image's MOS."""
    return nn.functional.l1_loss(predict(net, x), y)


def predict(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One score per image, whatever shape the network returns."""
    return net(x).reshape(x.shape[0], -1).mean(dim=1)


def train_model(
    cfg: TrainConfig,
    train: InMemory,
    val: InMemory,
    max_steps: int | None = None,
    net: nn.Module | None = None,
    objective: Objective = l1_objective,
) -> TrainResult:
    """Train from the seed; return the network at its best validation epoch.

    `net` continues training a given network (fine-tuning: RobustBlock steps, defenses)
    instead of building `cfg.arch` afresh; `objective` replaces the L1 loss (adversarial
    training, gradient-norm penalties). `max_steps` cuts each run short (tests); the
    schedule still spans the full run.
    """
    from benchmark.models.archs import build_arch

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    if net is None:
        net = build_arch(cfg.arch, **cfg.arch_params)
        if cfg.init:
            init_from_pyiqa(net, cfg.init.split(":", 1)[1])
    for p in net.parameters():
        p.requires_grad_(True)
    net.to(cfg.device).train()
    gen = torch.Generator().manual_seed(cfg.seed)
    steps_per_epoch = math.ceil(len(train) * cfg.patches / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total, eta_min=cfg.lr * 0.01)
    best_state, best_epoch, best_val = copy.deepcopy(net.state_dict()), 0, -math.inf
    history: list[dict[str, float]] = []
    losses: list[float] = []
    t0, c0 = time.time(), time.process_time()
    bar = tqdm(total=total, desc=f"train {cfg.model_name}", unit="step", disable=not cfg.progress)
    step = 0
    epoch = 0
    try:
        for epoch in range(1, cfg.epochs + 1):
            running = 0.0
            n = 0
            for x, y in _batches(train, cfg, gen):
                loss = objective(net, x.to(cfg.device), y.to(cfg.device))
                if not torch.isfinite(loss):
                    raise NonFiniteScore(
                        f"training loss became {loss.item()} at step {step}; lower --lr"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                losses.append(loss.item())
                running += loss.item() * x.shape[0]
                n += x.shape[0]
                step += 1
                bar.update(1)
                if max_steps is not None and step >= max_steps:
                    break
            val_srocc = _val_srocc(net, val, cfg)
            history.append(
                {"epoch": epoch, "train_loss": running / max(n, 1), "val_srocc": val_srocc}
            )
            bar.set_postfix(loss=f"{running / max(n, 1):.4f}", val_srocc=f"{val_srocc:.4f}")
            log.info(
                "epoch %d: train loss %.4f, val SROCC %.4f", epoch, running / max(n, 1), val_srocc
            )
            if val_srocc > best_val:
                best_val, best_epoch = val_srocc, epoch
                best_state = copy.deepcopy(net.state_dict())
            elif epoch - best_epoch >= cfg.patience:
                log.info("early stop: no better val SROCC for %d epochs", cfg.patience)
                break
            if max_steps is not None and step >= max_steps:
                break
    finally:
        bar.close()
    net.load_state_dict(best_state)
    net.eval()
    return TrainResult(
        net,
        history,
        best_epoch,
        best_val,
        epoch,
        (time.time() - t0) / 60,
        (time.process_time() - c0) / 60,
        losses,
    )


# ---------------------------------------------------------------------------------------
# the command


def command_line(cfg: TrainConfig, head: list[str] | None = None) -> str:
    """The canonical command that reproduces this run (recorded on the card).

    `head` replaces `--arch A --arch-param ...`: a defense fine-tuning run names its base
    model instead, whose card fixes the architecture (`benchmark.train.finetune`).
    """
    parts = ["python", "-m", "benchmark", "train", *(head or ["--arch", cfg.arch])]
    parts += ["--dataset", cfg.dataset]
    if head is None:
        for key, value in sorted(cfg.arch_params.items()):
            parts += ["--arch-param", f"{key}={json.dumps(value)}"]
    parts += ["--epochs", str(cfg.epochs), "--crop", str(cfg.crop), "--patches", str(cfg.patches)]
    parts += [
        "--batch-size",
        str(cfg.batch_size),
        "--lr",
        f"{cfg.lr:g}",
        "--patience",
        str(cfg.patience),
    ]
    if cfg.weight_decay:
        parts += ["--weight-decay", f"{cfg.weight_decay:g}"]
    parts += ["--seed", str(cfg.seed), "--device", cfg.device]
    if cfg.threads:
        parts += ["--threads", str(cfg.threads)]
    if cfg.init:
        parts += ["--init", cfg.init]
    if cfg.save_dtype != "float32":
        parts += ["--save-dtype", cfg.save_dtype]
    if cfg.name and cfg.name != Path(cfg.out).name:
        parts += ["--name", cfg.name]
    parts += ["-o", cfg.out]
    return shlex.join(parts)


def build_card(
    cfg: TrainConfig, result: TrainResult, report: dict[str, Any], params: int
) -> dict[str, Any]:
    srocc = report["srocc"]
    meets = bool(srocc >= SROCC_BAR)
    evaluation = {**report, "bar_srocc": SROCC_BAR, "meets_bar": meets}
    description = f"{cfg.arch} trained from {'pyiqa:' + cfg.init if cfg.init else 'scratch'} on {cfg.dataset}/{cfg.train_split}"
    if not meets:
        description += (
            f"; FALLS SHORT of the SROCC bar {SROCC_BAR} on {cfg.dataset}/{cfg.test_split}"
        )
    import benchmark.provenance as prov

    return {
        "name": cfg.model_name,
        "source": "zoo",
        "arch": cfg.arch,
        "kind": "NR",
        "lower_better": False,
        "score_range": [0.0, 1.0],
        "checkpoint": CHECKPOINT_NAME,
        "description": description,
        "arch_params": cfg.arch_params,
        "training": {
            "command": command_line(cfg),
            "dataset": cfg.dataset,
            "train_split": cfg.train_split,
            "val_split": cfg.val_split,
            "test_split": cfg.test_split,
            "seed": cfg.seed,
            "epochs": cfg.epochs,
            "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch,
            "best_val_srocc": round(result.best_val_srocc, 4),
            "crop": cfg.crop,
            "patches_per_image": cfg.patches,
            "batch_size": cfg.batch_size,
            "loss": "L1",
            "optimizer": f"Adam lr {cfg.lr:g} weight_decay {cfg.weight_decay:g}, cosine to 1%",
            "augmentation": "random patches, horizontal and vertical flips",
            "early_stopping": f"best val SROCC, patience {cfg.patience}",
            "init": cfg.init or "random",
            "parameters": params,
            "checkpoint_dtype": cfg.save_dtype,
            "minutes": round(result.minutes, 2),
            "cpu_minutes": round(result.cpu_minutes, 2),
            "device": cfg.device,
            "threads": torch.get_num_threads(),
            "versions": prov.package_versions(),
            "history": [
                {k: round(v, 4) if isinstance(v, float) else v for k, v in h.items()}
                for h in result.history
            ],
        },
        "evaluation": evaluation,
    }


def open_splits(
    cfg: TrainConfig, open_split: Callable[[str], IQADataset] | None = None
) -> tuple[InMemory, InMemory, IQADataset]:
    """(train, val) in memory and the test split, checked to carry a MOS.

    `open_split(split)` opens the data (default: the registered dataset `cfg.dataset`).
    """
    if open_split is None:
        from benchmark.datasets.registry import create_dataset

        def open_split(split: str) -> IQADataset:
            return create_dataset(cfg.dataset, split, cfg.data_root)

    test_ds = open_split(cfg.test_split)
    if test_ds.info.mos_range is None:
        raise ConfigError(f"dataset {cfg.dataset!r} has no MOS: cannot train on it")
    train = load_split(open_split(cfg.train_split), cfg.progress)
    val = load_split(open_split(cfg.val_split), cfg.progress)
    return train, val, test_ds


def save_and_evaluate(
    cfg: TrainConfig, net: nn.Module, test_ds: IQADataset
) -> tuple[nn.Module, dict[str, Any]]:
    """Write the checkpoint, reload it, and evaluate the *reloaded* network on `test_ds`.

    Returns (reloaded network, report): the numbers a card states are those of its file.
    """
    from benchmark.report.evaluation import evaluate_model

    ckpt = Path(cfg.out) / CHECKPOINT_NAME
    save_checkpoint(net, ckpt, cfg.save_dtype)
    reloaded = reload_checkpoint(cfg.arch, cfg.arch_params, ckpt).to(cfg.device)
    report = evaluate_model(
        reloaded, test_ds, batch_size=cfg.eval_batch, device=cfg.device, progress=cfg.progress
    )
    return reloaded, report


def run_training(
    cfg: TrainConfig, open_split: Callable[[str], IQADataset] | None = None
) -> dict[str, Any]:
    """Train, save checkpoint + card under cfg.out, return the card.

    `open_split(split)` opens the data (default: the registered dataset `cfg.dataset`).
    """
    from benchmark.cards import write_toml
    from benchmark.models.base import count_parameters

    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    train, val, test_ds = open_splits(cfg, open_split)
    result = train_model(cfg, train, val)
    net, report = save_and_evaluate(cfg, result.net, test_ds)
    card = build_card(cfg, result, report, count_parameters(net) or 0)
    write_toml(Path(cfg.out) / "card.toml", card)
    return card


__all__ = ["TrainConfig", "run_training", "train_model"]
