"""Sanity table of the attack presets: gain, perturbation PSNR and cost on one model.

    python scripts/attack_sanity.py [--model cnniqa-builtin] [--sample 32 | --limit N]
        [--attacks all | a,b,...] [--threads 1] [--out results/attack_sanity.h5] [--report-only]

Runs every requested attack preset (default: all cards in `attacks/`, each at its card's
budget, direction up) on one model over images of the built-in test split (`--sample N`:
N evenly spaced over the split, default 32; `--limit N`: the first N, which on the built-in
split are all crops of one photograph) through the real runner (`benchmark.engine.runner.run`, the
code behind `python -m benchmark run`) into its own results file, then prints a markdown
table read back from that HDF5 file alone:

- absolute gain (normalised quality-up scores) with its 95% bootstrap interval and the mean
  PSNR / SSIM of the attacked vs clean image (scores.summarize_cell on the stored cell);
- s/image: the stored per-image seconds (attack plus scoring of the attacked image; training
  excluded), the same measure for every attack;
- for trained attacks (UAP family, FACPA): training time and attack-only time per image from
  the cell's `attack_runtime` metadata ("cached" when the artifact was loaded, with the time
  its training took when it was made);
- below the table, FACPA's per-image time against I-FGSM's (added to the run when a trained
  attack is asked for without it).

Cells already in `--out` with the same configuration are not recomputed (the runner's resume),
so a second call prints at once; `--report-only` never runs anything.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmark.attacks.registry import list_attacks  # noqa: E402
from benchmark.engine.batching import parse_batch_size  # noqa: E402
from benchmark.errors import BenchmarkError, ConfigError  # noqa: E402
from benchmark.report.scores import summarize_cell  # noqa: E402
from benchmark.store.cell import CellResult  # noqa: E402
from benchmark.store.hdf5 import ResultStore  # noqa: E402

TRAINED_REFERENCE = "ifgsm"  # the per-image attack FACPA's speed is compared with
DATASET = "builtin"


def select_attacks(spec: str) -> list[str]:
    """Card names in card order for `all`, else the given list (checked against the cards)."""
    cards = {c.name: c for c in list_attacks() if c.source == "card"}
    names = list(cards) if spec.strip() == "all" else [s.strip() for s in spec.split(",") if s]
    if not names:
        raise ConfigError("--attacks is empty")
    trained = [n for n in names if n in cards and cards[n].info.trainable]
    if trained and TRAINED_REFERENCE not in names:
        names.append(TRAINED_REFERENCE)  # the time comparison needs it
    return names


def run_cells(args: argparse.Namespace, attacks: list[str]) -> float:
    from benchmark.engine.runner import RunConfig, resolve_attacks, run
    from benchmark.models.registry import resolve_model_names

    models = resolve_model_names(args.model)
    if len(models) != 1:
        raise ConfigError(f"--model takes one model, {args.model!r} names {len(models)}")
    (model,) = models
    cfg = RunConfig(
        models=(model,),
        attacks=resolve_attacks(",".join(attacks)),
        dataset=DATASET,
        split="test",
        limit=args.limit,
        sample=args.sample,
        seed=args.seed,
        batch_size=parse_batch_size(args.batch_size),
    )
    report = run(cfg, ResultStore(args.out), progress=not args.quiet)
    for key, why in report.failed:
        print(f"failed: {key}: {why}", file=sys.stderr)
    print(
        f"{len(report.computed)} cell(s) computed, {len(report.skipped)} already stored, "
        f"{len(report.failed)} failed, in {report.wall_s:.0f} s",
        file=sys.stderr,
    )
    return report.wall_s


def _fmt(value: Any, spec: str = ".3f", missing: str = "-") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return missing
    return format(value, spec)


def stored_rows(
    path: str, model: str, attacks: list[str], limit: int | None, sample: int | None
) -> list[dict]:
    """One row per requested attack: its stored cell of `model` on the built-in test split at
    the card's budget and this `limit`/`sample` (a results file may hold other cells too)."""
    card_eps = {c.name: c.eps for c in list_attacks()}
    cells: dict[str, CellResult] = {}
    for cell in ResultStore(path).read_cells():
        key = cell.key
        if key.model != model or key.dataset != DATASET or key.direction != "up":
            continue
        meta = cell.meta
        if (meta.get("limit"), meta.get("sample"), meta.get("split")) != (limit, sample, "test"):
            continue
        eps = card_eps.get(key.attack)
        if key.attack in attacks and (eps is None or math.isclose(key.eps, eps)):
            cells[key.attack] = cell
    rows = []
    for name in attacks:
        cell = cells.get(name)
        if cell is None:
            rows.append({"attack": name, "missing": True})
            continue
        s = summarize_cell(cell)
        runtime = cell.meta.get("attack_runtime") or {}
        n = len(cell)
        rows.append(
            {
                "attack": name,
                "missing": False,
                "family": cell.attack_config.get("family", ""),
                "trainable": bool(cell.attack_config.get("trainable")),
                "eps": s["eps_label"],
                "status": s["status"],
                "reason": s["reason"],
                "n": n,
                "gain": s["abs_gain"],
                "gain_low": s["abs_gain_low"],
                "gain_high": s["abs_gain_high"],
                "psnr": s["mean_psnr"],
                "ssim": s["mean_ssim"],
                "unchanged": int((cell.psnr == math.inf).sum()),
                "s_per_image": s["seconds"] / n if n else float("nan"),
                "train_s": runtime.get("train_seconds"),
                "cached": runtime.get("artifact_loaded"),
                "attack_s_per_image": runtime.get("attack_seconds_per_image"),
                "device": cell.meta.get("device", ""),
            }
        )
    return rows


def markdown(rows: list[dict], model: str) -> str:
    head = (
        "| attack | family | eps | abs gain [95% CI] | PSNR dB | SSIM | s/image (attack+score) "
        "| training s | attack-only s/image |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for r in rows:
        if r["missing"]:
            lines.append(f"| {r['attack']} | not stored | | | | | | | |")
            continue
        if r["status"] != "done":
            gain = f"{r['status']}"
            notes.append(f"{r['attack']}: {r['status']} ({r['reason']})")
        else:
            gain = f"{r['gain']:+.4f} [{r['gain_low']:+.4f}, {r['gain_high']:+.4f}]"
        psnr = _fmt(r["psnr"], ".1f")
        if r["unchanged"]:
            psnr += f" ({r['unchanged']} unchanged)"
        train = "-"
        if r["trainable"]:
            train = _fmt(r["train_s"], ".0f", "?") + (" (cached)" if r["cached"] else "")
        lines.append(
            f"| {r['attack']} | {r['family']} | {r['eps']} | {gain} | {psnr} "
            f"| {_fmt(r['ssim'], '.3f')} | {_fmt(r['s_per_image'], '.4f')} | {train} "
            f"| {_fmt(r['attack_s_per_image'], '.4f') if r['trainable'] else '-'} |"
        )
    by_name = {r["attack"]: r for r in rows if not r["missing"] and r["status"] == "done"}
    ref = by_name.get(TRAINED_REFERENCE)
    devices = sorted({r["device"] for r in rows if not r["missing"]})
    out = [
        f"model {model}, built-in test split, {rows_n(rows)} images, direction up, "
        f"{', '.join(devices) or 'no stored cell'}",
        "",
    ]
    out += lines
    if ref is not None:
        out.append("")
        for r in rows:
            if r["missing"] or not r["trainable"] or r["attack"] not in by_name:
                continue
            ratio = ref["s_per_image"] / r["s_per_image"] if r["s_per_image"] else float("nan")
            out.append(
                f"- {r['attack']}: trained in {_fmt(r['train_s'], '.0f', '?')} s; "
                f"{_fmt(r['s_per_image'], '.4f')} s/image vs {TRAINED_REFERENCE} "
                f"{_fmt(ref['s_per_image'], '.4f')} s/image ({_fmt(ratio, '.1f')}x faster per "
                f"image); training pays off after "
                f"{_fmt(breakeven(r, ref), '.0f', 'never')} images"
            )
    if notes:
        out += [""] + [f"- {n}" for n in notes]
    return "\n".join(out)


def rows_n(rows: list[dict]) -> str:
    ns = sorted({r["n"] for r in rows if not r["missing"]})
    return "/".join(str(n) for n in ns) or "0"


def breakeven(trained: dict, ref: dict) -> float | None:
    """Images after which training + attacking is cheaper than attacking each with `ref`."""
    saved = ref["s_per_image"] - trained["s_per_image"]
    if trained["train_s"] is None or saved <= 0:
        return None
    return trained["train_s"] / saved


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="cnniqa-builtin")
    p.add_argument(
        "--sample", type=int, default=None, help="N test images spread over the split (default 32)"
    )
    p.add_argument("--limit", type=int, default=None, help="the first N test images instead")
    p.add_argument("--attacks", default="all", help="comma list of presets, or all (default)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--batch-size", default="auto", help="auto (measured, as run) or N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/attack_sanity.h5", help="results file")
    p.add_argument("--report-only", action="store_true", help="print from --out, run nothing")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")  # fmt: skip
    try:
        if args.threads < 1:
            raise ConfigError(f"--threads must be a positive integer, got {args.threads}")
        if args.limit is not None and args.sample is not None:
            raise ConfigError("give --sample or --limit, not both")
        if args.limit is None and args.sample is None:
            args.sample = 32
        for name in ("limit", "sample"):
            value = getattr(args, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name} must be a positive integer, got {value}")
        torch.set_num_threads(args.threads)
        attacks = select_attacks(args.attacks)
        if not args.report_only:
            t0 = time.perf_counter()
            run_cells(args, attacks)
            print(f"run: {time.perf_counter() - t0:.0f} s wall, {args.threads} thread(s)",
                  file=sys.stderr)  # fmt: skip
        elif not Path(args.out).is_file():
            raise ConfigError(f"--report-only: {args.out} does not exist")
        rows = stored_rows(args.out, args.model, attacks, args.limit, args.sample)
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(markdown(rows, args.model))
    return 0 if all(not r["missing"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
