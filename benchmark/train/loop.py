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
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from benchmark.datasets.base import IQADataset
from benchmark.errors import CheckpointError, ConfigError, DataError, NonFiniteScore
from benchmark.paths import atomic_write
from benchmark.train.card import CARD_NAME, write_card, zoo_card
from benchmark.train.config import CHECKPOINT_NAME, TrainConfig, TrainResult

log = logging.getLogger(__name__)

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
    # atomic_write leaves the file 0644: a shipped model is world-readable
    atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))


def reload_checkpoint(
    arch: str, arch_params: dict[str, Any], path: Path, robust: bool | dict[str, Any] = False
) -> nn.Module:
    """`path` loaded by the zoo loader itself (`models.zoo.build_network`), so a card's
    numbers are those of the network `create_model` gives; `robust`: a RobustBlock card,
    whose pruned widths come from the checkpoint (a dict: the card's [robust] keys the
    loader reads, e.g. `orth`)."""
    from benchmark.models.zoo import build_network

    card: dict[str, Any] = {"arch": arch, "arch_params": arch_params, "checkpoint": path.name}
    if robust:
        card["robust"] = dict(robust) if isinstance(robust, dict) else {}
    return build_network({**card, "_path": path.parent / CARD_NAME})


# ---------------------------------------------------------------------------------------
# training


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
    cfg: TrainConfig, net: nn.Module, test_ds: IQADataset, robust: bool | dict[str, Any] = False
) -> tuple[nn.Module, dict[str, Any]]:
    """Write the checkpoint, reload it, and evaluate the *reloaded* network on `test_ds`.

    Returns (reloaded network, report): the numbers a card states are those of its file.
    `robust`: the network is a RobustBlock conversion of `cfg.arch` (`reload_checkpoint`).
    """
    from benchmark.report.evaluation import evaluate_model

    ckpt = Path(cfg.out) / CHECKPOINT_NAME
    save_checkpoint(net, ckpt, cfg.save_dtype)
    reloaded = reload_checkpoint(cfg.arch, cfg.arch_params, ckpt, robust).to(cfg.device)
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
    from benchmark.params import count_parameters

    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    train, val, test_ds = open_splits(cfg, open_split)
    result = train_model(cfg, train, val)
    net, report = save_and_evaluate(cfg, result.net, test_ds)
    card = zoo_card(cfg, result, report, count_parameters(net) or 0)
    write_card(cfg.out, card)
    return card


__all__ = [
    "CHECKPOINT_NAME",
    "TrainConfig",
    "TrainResult",
    "run_training",
    "save_and_evaluate",
    "train_model",
]
