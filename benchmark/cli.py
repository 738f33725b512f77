"""`python -m benchmark`: run, list, leaderboard, build-dataset.

Every user-fixable problem is a `BenchmarkError`: printed as one line, exit code 2 for bad
names or values, 1 for the rest. Tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from benchmark.errors import BenchmarkError, ConfigError

log = logging.getLogger("benchmark")

DEFAULT_RESULTS = Path("results") / "benchmark.h5"


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging"
    )
    common.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=argparse.SUPPRESS,
        help="no progress bars, warnings only",
    )
    p = argparse.ArgumentParser(
        prog="python -m benchmark", description=__doc__.splitlines()[0], parents=[common]
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add = sub.add_parser
    sub.add_parser = lambda *a, **k: _add(*a, parents=[common], **k)  # type: ignore[method-assign]

    r = sub.add_parser("run", help="attack models on a dataset and store the results")
    r.add_argument(
        "--models",
        required=True,
        help="comma list of names, 'all' (every usable model), 'all-nr', 'all-fr', or file.py:Class",
    )
    r.add_argument(
        "--exclude",
        default="",
        help="comma list of models to leave out of --models (e.g. slow ones)",
    )
    r.add_argument(
        "--attacks", required=True, help="comma list of attack presets (see `list attacks`)"
    )
    r.add_argument(
        "--dataset", default="builtin", help="dataset card name or folder:PATH (default: builtin)"
    )
    r.add_argument("--split", default=None, help="dataset split (default: test where there is one)")
    r.add_argument("--data-root", default=None, help="where the dataset lives (overrides the card)")
    r.add_argument(
        "--eps",
        default=None,
        help="comma list of L_inf budgets like 4/255,8/255 (default: each card's)",
    )
    r.add_argument(
        "--direction",
        default="up",
        choices=["up", "down", "both"],
        help="inflate (up) or deflate (down) the quality",
    )
    r.add_argument("--limit", type=int, default=None, help="attack only the first N images")
    r.add_argument(
        "--sample",
        type=int,
        default=None,
        help="attack N images evenly spaced over the split (all photographs and distortions)",
    )
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    r.add_argument(
        "--batch-size",
        default="auto",
        help="images per attack batch, or auto: the fastest per image that fits, measured per model",
    )
    r.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override an attack parameter (repeatable)",
    )
    r.add_argument(
        "--out", default=str(DEFAULT_RESULTS), help=f"results file (default {DEFAULT_RESULTS})"
    )
    r.add_argument(
        "--html", default=None, help="leaderboard file (default: leaderboard.html beside --out)"
    )
    r.add_argument("--force", action="store_true", help="recompute cells even when stored")
    r.add_argument(
        "--attack-source",
        default=None,
        help="transfer: craft attacks on this model, score them on every --models target",
    )
    r.add_argument("--executor", default="local", choices=["local", "ray"], help="where cells run")
    r.add_argument(
        "--ray-address", default=None, help="Ray cluster address (default: start a local one)"
    )

    ls = sub.add_parser(
        "list", help="list models, attacks or datasets and whether they are usable here"
    )
    ls.add_argument("what", choices=["models", "attacks", "datasets"])
    ls.add_argument("--usable", action="store_true", help="only entries usable here")
    ls.add_argument(
        "--artifacts",
        action="store_true",
        help="with attacks: list cached trained-attack artifacts",
    )

    lb = sub.add_parser("leaderboard", help="render the leaderboard from stored results alone")
    lb.add_argument("results", nargs="+", help="results .h5 files")
    lb.add_argument("-o", "--out", default="results/leaderboard.html")
    lb.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for CIs")

    from benchmark.compare import add_compare_parser
    from benchmark.evaluation import add_evaluate_parser
    from benchmark.robust.pipeline import add_robustify_parser
    from benchmark.training import add_train_parser

    add_compare_parser(sub)
    add_train_parser(sub)
    add_evaluate_parser(sub)
    add_robustify_parser(sub)

    bd = sub.add_parser("build-dataset", help="generate the built-in dataset into the cache now")
    bd.add_argument("name", choices=["builtin"])
    bd.add_argument("--force", action="store_true", help="rebuild even when cached")
    return p


def _setup_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    for noisy in ("pyiqa", "matplotlib", "PIL", "h5py"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def main(argv: Sequence[str] | None = None) -> int:
    # torchattacks pins requests 2.25, which warns about any newer urllib3 at import: noise here
    warnings.filterwarnings("ignore", message=r"urllib3 .* doesn't match a supported version")
    args = _parser().parse_args(argv)
    args.verbose, args.quiet = getattr(args, "verbose", False), getattr(args, "quiet", False)
    _setup_logging(args.verbose, args.quiet)
    try:
        return COMMANDS[args.command](args)
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(
            "interrupted: finished cells are stored; run the same command again to resume",
            file=sys.stderr,
        )
        return 130


def parse_eps(text: str | None) -> tuple[float, ...]:
    from benchmark.budget import parse_budget

    if text is None:
        return ()
    values = tuple(parse_budget(v) for v in text.split(",") if v.strip())
    if not values:
        raise ConfigError("--eps is empty")
    return values


def cmd_run(args: argparse.Namespace) -> int:
    from benchmark.attacks.registry import parse_overrides
    from benchmark.batching import parse_batch_size
    from benchmark.leaderboard import build_tables, render_html, terminal_table
    from benchmark.models.registry import resolve_model_names
    from benchmark.runner import RunConfig, resolve_attacks, run
    from benchmark.store import ResultStore

    excluded = set(resolve_model_names(args.exclude)) if args.exclude.strip() else set()
    models = tuple(m for m in resolve_model_names(args.models) if m not in excluded)
    if not models:
        raise ConfigError(
            "no usable model matches --models (see `python -m benchmark list models`)"
        )
    cfg = RunConfig(
        models=models,
        attacks=resolve_attacks(args.attacks),
        dataset=args.dataset,
        split=args.split,
        eps=parse_eps(args.eps),
        directions=("up", "down") if args.direction == "both" else (args.direction,),
        limit=args.limit,
        sample=args.sample,
        seed=args.seed,
        device=args.device,
        batch_size=parse_batch_size(args.batch_size),
        params=parse_overrides(args.param),
        data_root=args.data_root,
        attack_source=resolve_model_names(args.attack_source)[0] if args.attack_source else None,
    )
    log.info("models: %s", ", ".join(models))
    store = ResultStore(args.out)
    report = run(
        cfg,
        store,
        progress=not args.quiet,
        force=args.force,
        executor=args.executor,
        ray_address=args.ray_address,
    )
    cells = store.read_cells()
    html = Path(args.html) if args.html else store.path.with_name("leaderboard.html")
    tables = build_tables(cells)
    render_html(cells, html, tables=tables)
    print(terminal_table(cells, tables=tables))
    print(
        f"\n{len(report.computed)} cell(s) computed, {len(report.skipped)} already stored"
        f"{' (nothing recomputed)' if not report.computed and report.skipped else ''}, "
        f"{len(report.failed)} failed, in {report.wall_s:.1f} s"
    )
    for name, why in report.unavailable.items():
        print(f"unavailable: {name}: {why}")
    print(f"results: {store.path}\nleaderboard: {html}")
    return 1 if report.failed or report.unavailable else 0


def cmd_list(args: argparse.Namespace) -> int:
    rows: list[tuple[str, ...]]
    if args.what == "models":
        from benchmark.models.registry import list_models

        header = ("name", "source", "base", "kind", "lower_better", "usable", "why")
        rows = [
            (
                s.name,
                s.source,
                s.base or "-",
                s.kind,
                str(s.lower_better).lower(),
                "yes" if s.usable else "no",
                s.reason,
            )
            for s in list_models()
            if s.usable or not args.usable
        ]
    elif args.what == "attacks" and args.artifacts:
        from benchmark.attacks.artifacts import list_artifacts
        from benchmark.paths import cache_dir

        header = ("attack", "model", "key", "size", "train_s", "train_images", "created", "status")
        rows = [
            (r.attack, r.model, r.digest, f"{r.size_bytes / 1e6:.1f} MB",
             "-" if r.train_seconds is None else f"{r.train_seconds:.0f}",
             str(r.train_images or "-"), r.created, r.problem or "ok")
            for r in list_artifacts(cache_dir() / "artifacts")
        ]  # fmt: skip
    elif args.what == "attacks":
        from benchmark.attacks.registry import list_attacks

        header = (
            "name",
            "family",
            "norm",
            "eps",
            "gradient_free",
            "trainable",
            "usable",
            "description",
        )
        rows = []
        for card in list_attacks():
            problem = card.problem()
            if problem and args.usable:
                continue
            rows.append(
                (
                    card.name,
                    card.info.family,
                    card.info.norm,
                    card.eps_label,
                    str(card.info.gradient_free).lower(),
                    str(card.info.trainable).lower(),
                    "no" if problem else "yes",
                    problem or card.info.description,
                )
            )
    else:
        from benchmark.datasets.registry import list_datasets

        header = ("name", "layout", "splits", "mos_range", "usable", "why")
        rows = [
            (
                s.name,
                s.info.layout,
                ",".join(s.splits) or "all",
                "-"
                if s.info.mos_range is None
                else f"{s.info.mos_range[0]:g}-{s.info.mos_range[1]:g}",
                "yes" if s.usable else "no",
                s.reason,
            )
            for s in list_datasets()
            if s.usable or not args.usable
        ]
    print(_format_rows(header, rows))
    return 0


def _format_rows(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    widths[-1] = len(header[-1])  # the last column is free text: no padding
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from benchmark.leaderboard import build_tables, render_html, terminal_table
    from benchmark.store import read_results

    cells = read_results(args.results)
    if not cells:
        raise ConfigError(f"no stored cell in {', '.join(args.results)}")
    tables = build_tables(cells, n_boot=args.bootstrap)
    out = render_html(cells, args.out, tables=tables)
    print(terminal_table(cells, tables=tables))
    print(f"leaderboard: {out}")
    return 0


def cmd_build_dataset(args: argparse.Namespace) -> int:
    from benchmark.datasets.builtin import build_builtin

    path = build_builtin(force=args.force)
    print(f"built-in dataset ready at {path}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from benchmark.compare import cmd_compare as compare

    return compare(args)


def cmd_train(args: argparse.Namespace) -> int:
    from benchmark.training import cmd_train as train

    return train(args)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from benchmark.evaluation import cmd_evaluate as evaluate

    return evaluate(args)


def cmd_robustify(args: argparse.Namespace) -> int:
    from benchmark.robust.pipeline import cmd_robustify as robustify

    return robustify(args)


COMMANDS = {
    "run": cmd_run,
    "compare": cmd_compare,
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "robustify": cmd_robustify,
    "list": cmd_list,
    "leaderboard": cmd_leaderboard,
    "build-dataset": cmd_build_dataset,
}


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
