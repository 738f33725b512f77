"""`train`: train an NR model into a zoo card, or fine-tune a zoo model into a defense
(`--defense at|nt --base MODEL`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmark.budget import parse_budget
from benchmark.errors import ConfigError
from benchmark.train.config import DEFAULT_RECIPE, RECIPES, TrainConfig
from benchmark.train.finetune import (
    DEFAULT_AT_STEPS,
    DEFAULT_EPOCHS,
    DEFAULT_LR,
    DEFAULT_NT_WEIGHT,
    METHODS,
    DefenseConfig,
    zoo_base_card,
)


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_arch_params(items: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--arch-param expects KEY=VALUE, got {item!r}")
        params[key.strip()] = _json_value(value.strip())
    return params


def add_parser(subparsers: Any) -> None:
    from benchmark.models.archs import arch_names

    t = subparsers.add_parser(
        "train",
        help="train an NR model on a dataset and write a zoo card, or fine-tune a zoo model "
        "into a defense (--defense at|nt --base MODEL)",
    )
    t.add_argument(
        "--arch",
        default=None,
        help=f"architecture (required unless --defense): {', '.join(arch_names())}",
    )
    t.add_argument(
        "--dataset", default="builtin", help="dataset card name with MOS (default: builtin)"
    )
    t.add_argument("--data-root", default=None, help="where the dataset lives (overrides the card)")
    t.add_argument("-o", "--out", required=True, help="output folder, e.g. models/<name>")
    t.add_argument("--name", default=None, help="model name (default: the output folder's name)")
    t.add_argument(
        "--arch-param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="architecture parameter (JSON value; repeatable); default: the arch's recipe",
    )
    t.add_argument(
        "--epochs", type=int, default=None, help="maximum epochs (default 30; 5 with --defense)"
    )
    t.add_argument(
        "--crop",
        type=int,
        default=None,
        help="training patch side, 0 = whole images (default: the arch's recipe)",
    )
    t.add_argument(
        "--patches",
        type=int,
        default=None,
        help="random patches per image per epoch (default: recipe)",
    )
    t.add_argument("--batch-size", type=int, default=None, help="default: recipe")
    t.add_argument(
        "--lr",
        type=float,
        default=None,
        help="Adam learning rate (default: recipe, else 1e-3; 1e-4 with --defense)",
    )
    t.add_argument("--weight-decay", type=float, default=0.0)
    t.add_argument("--patience", type=int, default=6, help="early stopping patience in epochs")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    t.add_argument(
        "--init",
        default=None,
        metavar="pyiqa:METRIC",
        help="start from pyiqa's pretrained weights (must be in pyiqa's cache)",
    )
    t.add_argument(
        "--save-dtype",
        default="float32",
        choices=["float32", "float16"],
        help="checkpoint precision",
    )
    add_defense_arguments(t)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    if not args.arch:
        raise ConfigError(
            "--arch is required (or --defense at|nt --base MODEL to fine-tune a zoo model)"
        )
    recipe = RECIPES.get(args.arch, DEFAULT_RECIPE)
    arch_params = (
        parse_arch_params(args.arch_param) if args.arch_param else dict(recipe["arch_params"])
    )
    return TrainConfig(
        arch=args.arch,
        out=args.out,
        arch_params=arch_params,
        name=args.name,
        dataset=args.dataset,
        data_root=args.data_root,
        epochs=30 if args.epochs is None else args.epochs,
        crop=recipe["crop"] if args.crop is None else args.crop,
        patches=recipe["patches"] if args.patches is None else args.patches,
        batch_size=recipe["batch_size"] if args.batch_size is None else args.batch_size,
        lr=recipe.get("lr", 1e-3) if args.lr is None else args.lr,
        weight_decay=args.weight_decay,
        patience=args.patience,
        seed=args.seed,
        device=args.device,
        threads=args.threads,
        init=args.init,
        save_dtype=args.save_dtype,
        progress=not bool(getattr(args, "quiet", False)),
    )


def run(args: argparse.Namespace) -> int:
    if getattr(args, "defense", None):
        return run_defense(args)
    cfg = config_from_args(args)
    from benchmark.train.card import SROCC_BAR
    from benchmark.train.loop import run_training

    card = run_training(cfg)
    ev = card["evaluation"]
    print(
        f"{card['name']}: {card['training']['parameters']:,} parameters, "
        f"{card['training']['minutes']:.1f} min, best epoch {card['training']['best_epoch']}; "
        f"{ev['dataset']}/{ev['split']} SROCC {ev['srocc']:.4f} PLCC {ev['plcc']:.4f}"
        f"{'' if ev['meets_bar'] else f' (below the bar {SROCC_BAR})'}"
    )
    print(f"card: {Path(cfg.out) / 'card.toml'}")
    return 0


def train_config(args: argparse.Namespace, base: dict[str, Any]) -> TrainConfig:
    """A zoo TrainConfig for fine-tuning `base`: its architecture and patch recipe, with
    the defense defaults (fewer epochs, lower learning rate) where the command gives none."""
    for flag, given in (("--arch", args.arch), ("--arch-param", args.arch_param)):
        if given:
            raise ConfigError(
                f"{flag} comes from the base model's card; leave it out with --defense"
            )
    if args.init:
        raise ConfigError("--init does not apply with --defense: training starts from --base")
    trained = base.get("training", {})
    recipe = RECIPES.get(base["arch"], {})

    def pick(value: Any, card_key: str, recipe_key: str, default: Any) -> Any:
        if value is not None:
            return value
        return trained.get(card_key, recipe.get(recipe_key, default))

    return TrainConfig(
        arch=base["arch"],
        out=args.out,
        arch_params=dict(base.get("arch_params", {})),
        name=args.name,
        dataset=args.dataset,
        data_root=args.data_root,
        epochs=DEFAULT_EPOCHS if args.epochs is None else args.epochs,
        crop=pick(args.crop, "crop", "crop", 0),
        patches=pick(args.patches, "patches_per_image", "patches", 1),
        batch_size=pick(args.batch_size, "batch_size", "batch_size", 16),
        lr=DEFAULT_LR if args.lr is None else args.lr,
        weight_decay=args.weight_decay,
        patience=args.patience,
        seed=args.seed,
        device=args.device,
        threads=args.threads,
        save_dtype=args.save_dtype,
        progress=not bool(getattr(args, "quiet", False)),
    )


def add_defense_arguments(t: argparse.ArgumentParser) -> None:
    g = t.add_argument_group(
        "defense fine-tuning",
        "fine-tune a zoo model into a defense: --defense at|nt --base MODEL -o models/at-MODEL",
    )
    g.add_argument(
        "--defense",
        choices=list(METHODS),
        default=None,
        help="at: adversarial training; nt: input-gradient norm penalty",
    )
    g.add_argument("--base", default=None, help="zoo model to fine-tune (see `list models`)")
    g.add_argument("--at-attack", default="pgd", help="pgd (random start) or fgsm (default pgd)")
    g.add_argument("--at-eps", default="4/255", help="L_inf budget (default 4/255)")
    g.add_argument(
        "--at-steps", type=int, default=None, help=f"PGD steps (default {DEFAULT_AT_STEPS})"
    )
    g.add_argument(
        "--at-alpha",
        default=None,
        help="PGD step, e.g. 1/255 or eps/2 (default 2.5*eps/steps)",
    )
    g.add_argument(
        "--at-mix", type=float, default=0.5, help="share of each batch attacked (default 0.5)"
    )
    g.add_argument(
        "--at-objective",
        default="loss",
        help="loss: maximise |f(x')-mos| (default); up: inflate f(x')",
    )
    g.add_argument(
        "--nt-weight",
        type=float,
        default=DEFAULT_NT_WEIGHT,
        help=f"weight of the squared input-gradient norm (default {DEFAULT_NT_WEIGHT:g})",
    )
    g.add_argument(
        "--nt-grad",
        default="double",
        help="double: exact double backprop (default); fd: finite differences along the "
        "gradient, for architectures without second derivatives everywhere",
    )


def configs_from_args(args: argparse.Namespace) -> tuple[DefenseConfig, TrainConfig]:
    if not args.base:
        raise ConfigError("--defense needs --base MODEL (a zoo model, see `list models`)")
    dcfg = DefenseConfig(
        method=args.defense,
        base=args.base,
        at_attack=args.at_attack,
        at_eps=parse_budget(args.at_eps, "--at-eps"),
        at_steps=args.at_steps,
        at_alpha=args.at_alpha,
        at_mix=args.at_mix,
        at_objective=args.at_objective,
        nt_weight=args.nt_weight,
        nt_grad=args.nt_grad,
    )
    dcfg.validate()
    return dcfg, train_config(args, zoo_base_card(dcfg.base))


def run_defense(args: argparse.Namespace) -> int:
    dcfg, cfg = configs_from_args(args)
    from benchmark.train.finetune import run_defense_training

    card = run_defense_training(dcfg, cfg)
    ev, tr = card["evaluation"], card["training"]
    print(
        f"{card['name']} ({dcfg.method} of {dcfg.base}): {tr['minutes']:.1f} min, best epoch "
        f"{tr['best_epoch']}; {ev['dataset']}/{ev['split']} SROCC {ev['srocc']:.4f} "
        f"PLCC {ev['plcc']:.4f} (base SROCC {card['defense'].get('base_test_srocc', '?')})"
    )
    print(f"card: {Path(cfg.out) / 'card.toml'}")
    return 0
