"""The one writer of zoo cards: plain zoo models (`train`), AT/NT defenses (`train --defense`)
and RobustBlock models (`robustify`).

Why one module: each command used to lay out its own card, so a shared field (a split, the
provenance) could drift between them. Here `model_card` and `training_table` lay out what
every card shares, in one order, and each command adds only its own section ([defense];
[robust], steps and certified). `write_card` checks the card against the schema the zoo
loader reads (`models.zoo.CARD_FIELDS`) before anything reaches the disk.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

import benchmark.provenance as prov
from benchmark.cards import check_fields, write_toml
from benchmark.train.config import CHECKPOINT_NAME, TrainConfig, TrainResult

CARD_NAME = "card.toml"
SROCC_BAR = 0.70  # every shipped zoo model (issue 4); the best one must reach 0.80
SCORE_RANGE = (0.0, 1.0)  # the zoo's models regress the MOS scaled to [0, 1]


def command_line(cfg: TrainConfig, head: list[str] | None = None) -> str:
    """The canonical `train` command that reproduces this run (recorded on the card).

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


def training_table(
    cfg: TrainConfig,
    command: str,
    parameters: int,
    minutes: float,
    cpu_minutes: float,
    result: TrainResult | None = None,
    *,
    loss: str = "L1",
    init: str = "random",
    base_parameters: int | None = None,
    base_checkpoint_sha256: str | None = None,
) -> dict[str, Any]:
    """The card's [training] table: how its checkpoint was made, and with which packages.

    `result` is the `train_model` run the checkpoint comes from (its epochs, recipe and
    history are recorded); a pipeline of several runs (robustify) passes none and records
    each run in its `steps` instead.
    """
    table: dict[str, Any] = {
        "command": command,
        "dataset": cfg.dataset,
        "train_split": cfg.train_split,
        "val_split": cfg.val_split,
        "test_split": cfg.test_split,
        "seed": cfg.seed,
    }
    if result is not None:
        table["epochs"] = cfg.epochs
        table["epochs_run"] = result.epochs_run
        table["best_epoch"] = result.best_epoch
        table["best_val_srocc"] = round(result.best_val_srocc, 4)
    table["crop"] = cfg.crop
    table["patches_per_image"] = cfg.patches
    table["batch_size"] = cfg.batch_size
    if result is not None:
        table["loss"] = loss
        table["optimizer"] = f"Adam lr {cfg.lr:g} weight_decay {cfg.weight_decay:g}, cosine to 1%"
        table["augmentation"] = "random patches, horizontal and vertical flips"
        table["early_stopping"] = f"best val SROCC, patience {cfg.patience}"
        table["init"] = init
    table["parameters"] = parameters
    table["checkpoint_dtype"] = cfg.save_dtype
    if base_parameters is not None:
        table["base_parameters"] = base_parameters
    table["minutes"] = round(minutes, 2)
    table["cpu_minutes"] = round(cpu_minutes, 2)
    table["device"] = cfg.device
    table["threads"] = torch.get_num_threads()
    table["versions"] = prov.package_versions()
    if result is not None:
        table["history"] = [
            {k: round(v, 4) if isinstance(v, float) else v for k, v in h.items()}
            for h in result.history
        ]
    if base_checkpoint_sha256 is not None:
        table["base_checkpoint_sha256"] = base_checkpoint_sha256
    return table


def bar_evaluation(report: dict[str, Any]) -> dict[str, Any]:
    """The held-out report with the zoo's SROCC bar and whether the model meets it."""
    return {**report, "bar_srocc": SROCC_BAR, "meets_bar": bool(report["srocc"] >= SROCC_BAR)}


def model_card(
    cfg: TrainConfig,
    *,
    source: str,
    description: str,
    training: dict[str, Any],
    evaluation: dict[str, Any],
    base: str | None = None,
    kind: str = "NR",
    lower_better: bool = False,
    score_range: tuple[float, float] | list[float] | None = SCORE_RANGE,
    sections: Mapping[str, Any] | None = None,
    certified: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A zoo card: the fields every kind shares, in one order.

    `sections` are the kind's own tables, placed before [training] ([defense]; [robust] and
    steps); `certified` (RobustBlock) comes last. `score_range=None` leaves the field out.
    """
    card: dict[str, Any] = {"name": cfg.model_name, "source": source}
    if base is not None:
        card["base"] = base
    card["arch"] = cfg.arch
    card["kind"] = kind
    card["lower_better"] = lower_better
    if score_range is not None:
        card["score_range"] = list(score_range)
    card["checkpoint"] = CHECKPOINT_NAME
    card["description"] = description
    card["arch_params"] = cfg.arch_params
    card.update(sections or {})
    card["training"] = training
    card["evaluation"] = evaluation
    if certified is not None:
        card["certified"] = certified
    return card


def zoo_card(
    cfg: TrainConfig, result: TrainResult, report: dict[str, Any], params: int
) -> dict[str, Any]:
    """The card of a plain `train` run."""
    evaluation = bar_evaluation(report)
    description = f"{cfg.arch} trained from {'pyiqa:' + cfg.init if cfg.init else 'scratch'} on {cfg.dataset}/{cfg.train_split}"
    if not evaluation["meets_bar"]:
        description += (
            f"; FALLS SHORT of the SROCC bar {SROCC_BAR} on {cfg.dataset}/{cfg.test_split}"
        )
    training = training_table(
        cfg,
        command_line(cfg),
        params,
        result.minutes,
        result.cpu_minutes,
        result,
        init=cfg.init or "random",
    )
    return model_card(
        cfg, source="zoo", description=description, training=training, evaluation=evaluation
    )


def write_card(out: str | Path, card: Mapping[str, Any]) -> Path:
    """Check `card` against the zoo loader's schema, then write `<out>/card.toml` (atomically:
    `cards.write_toml` goes through `paths.atomic_write`)."""
    from benchmark.models.zoo import CARD_FIELDS

    path = Path(out) / CARD_NAME
    check_fields(card, CARD_FIELDS, str(path))
    write_toml(path, card)
    return path


__all__ = [
    "CARD_NAME",
    "SROCC_BAR",
    "bar_evaluation",
    "command_line",
    "model_card",
    "training_table",
    "write_card",
    "zoo_card",
]
