"""`robustify`: convert a zoo model to RobustBlocks, train, prune, fine-tune, write a card."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_parser(subparsers: Any) -> None:
    r = subparsers.add_parser(
        "robustify",
        help="convert a zoo model to RobustBlocks, train, prune, fine-tune, write a card",
    )
    r.add_argument("--base", required=True, help="zoo model to convert (see `list models`)")
    r.add_argument("-o", "--out", required=True, help="output folder, e.g. models/robust-<base>")
    r.add_argument("--name", default=None, help="model name (default: the output folder's name)")
    r.add_argument("--dataset", default=None, help="default: the base's training dataset")
    r.add_argument("--data-root", default=None)
    g = r.add_mutually_exclusive_group()
    g.add_argument("--tau", type=float, default=None, help="prune channels with mean |w| < tau")
    g.add_argument(
        "--prune-fraction",
        type=float,
        default=None,
        help="prune this fraction of channel groups per layer (default 0.25 without --tau)",
    )
    r.add_argument("--epochs", type=int, default=10, help="training epochs after conversion")
    r.add_argument("--finetune-epochs", type=int, default=5, help="epochs after pruning")
    r.add_argument("--lr", type=float, default=1e-3)
    r.add_argument("--finetune-lr", type=float, default=3e-4)
    r.add_argument("--patience", type=int, default=4)
    r.add_argument("--crop", type=int, default=None, help="default: the base's training crop")
    r.add_argument("--patches", type=int, default=None)
    r.add_argument("--batch-size", type=int, default=None)
    r.add_argument(
        "--random-init",
        action="store_true",
        help="start the orthogonal layers at random instead of from the base weights",
    )
    r.add_argument(
        "--orth",
        default="fourier",
        choices=["fourier", "explicit"],
        help="orthogonal convolution: fourier (OrthConv2d, FFT) or explicit (an orthogonal "
        "k x k kernel: inference is one ordinary conv)",
    )
    r.add_argument(
        "--save-dtype",
        default="float32",
        choices=["float32", "float16"],
        help="checkpoint precision",
    )
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--device", default="cpu")
    r.add_argument("--threads", type=int, default=None)


def run(args: argparse.Namespace) -> int:
    from benchmark.train.robustify import RobustifyConfig, run_robustify

    cfg = RobustifyConfig(
        base=args.base,
        out=args.out,
        name=args.name,
        dataset=args.dataset,
        data_root=args.data_root,
        tau=args.tau,
        prune_fraction=args.prune_fraction,
        epochs=args.epochs,
        finetune_epochs=args.finetune_epochs,
        lr=args.lr,
        finetune_lr=args.finetune_lr,
        patience=args.patience,
        crop=args.crop,
        patches=args.patches,
        batch_size=args.batch_size,
        init_from_base=not args.random_init,
        orth=args.orth,
        save_dtype=args.save_dtype,
        seed=args.seed,
        device=args.device,
        threads=args.threads,
        progress=not bool(getattr(args, "quiet", False)),
    )
    card = run_robustify(cfg)
    print(f"{'step':<10} {'SROCC':>7} {'PLCC':>7} {'params':>10} {'Lipschitz':>12}")
    for s in card["steps"]:
        lip = s["lipschitz"]
        lip = f"{lip:.4g}" if isinstance(lip, float) else lip
        print(
            f"{s['step']:<10} {s['srocc']:>7.4f} {s['plcc']:>7.4f} {s['parameters']:>10,} {lip:>12}"
        )
    ev = card["evaluation"]
    print(
        f"shipped: test SROCC {ev['srocc']:.4f} PLCC {ev['plcc']:.4f}; card: {Path(cfg.out) / 'card.toml'}"
    )
    return 0
