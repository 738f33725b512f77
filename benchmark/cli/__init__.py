"""`python -m benchmark COMMAND`: the only place that knows argparse.

One module per command, each with `add_parser(subparsers)` and `run(args) -> exit code`;
`main` builds the parser from `COMMANDS` and dispatches through it. Every user-fixable
problem is a `BenchmarkError`: printed as one line, exit code 2 for bad names or values, 1
for the rest. Tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType

from benchmark.cli import (
    build_dataset,
    compare,
    evaluate,
    leaderboard,
    listing,
    robustify,
    train,
)
from benchmark.cli import run as run_command
from benchmark.errors import BenchmarkError

COMMANDS: dict[str, ModuleType] = {
    "run": run_command,
    "list": listing,
    "leaderboard": leaderboard,
    "compare": compare,
    "train": train,
    "evaluate": evaluate,
    "robustify": robustify,
    "build-dataset": build_dataset,
}


def build_parser() -> argparse.ArgumentParser:
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
        prog="python -m benchmark",
        description="Adversarial-robustness benchmark for image-quality models.",
        parents=[common],
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add = sub.add_parser
    sub.add_parser = lambda *a, **k: _add(*a, parents=[common], **k)  # type: ignore[method-assign]
    for module in COMMANDS.values():
        module.add_parser(sub)
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
    args = build_parser().parse_args(argv)
    args.verbose, args.quiet = getattr(args, "verbose", False), getattr(args, "quiet", False)
    _setup_logging(args.verbose, args.quiet)
    try:
        return COMMANDS[args.command].run(args)
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(
            "interrupted: finished cells are stored; run the same command again to resume",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
