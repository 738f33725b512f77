"""Does a store write stay O(the cell) at the field's size, and does the leaderboard keep up?

Writes synthetic cells of `--images` images each (the arrays a real cell holds) through the
store's own API, in one writer block as a run does, and prints the time per write of each
block of `--block` cells and the ratio of the last block's to the first's (issue 27: at
most 1.5 at 4,000 cells of 2,000 images). Then it adds cells up to `--leaderboard-cells`
and times `python -m benchmark leaderboard` on the file in a child process (wall seconds
and peak RSS; issue 27: at most 60 s for 10,000 cells).

The per-cell summary the runner stores with each cell (`report.tables.cell_summary`) costs
seconds a cell, so this script computes it for `--distinct` array sets (per attack and
direction) only, times that, and stores each one (key fields set to the cell's) with every
cell made from it. Attacks move scores as on the zoo (`STRENGTH`: iterative ones further
than one FGSM step), so the leaderboard's paired iteration check is settled by the stored
summaries, as on real results; where iterations find less than one step (a defense with
noisy gradients) each such pair costs a paired bootstrap over both cells' arrays.
`--no-summary` writes without summaries (the leaderboard then scores every cell itself; and
the write loop then runs against an older store whose `write_cell` takes no summary).

    python scripts/store_scaling.py                       # 4,000 cells, then 10,000
    python scripts/store_scaling.py --cells 400 --leaderboard-cells 0   # quick look
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmark.budget import budget_label  # noqa: E402
from benchmark.store.cell import CellKey, CellResult  # noqa: E402
from benchmark.store.hdf5 import ResultStore  # noqa: E402

ATTACKS = ("fgsm", "ifgsm", "mifgsm", "pgd", "apgd", "square", "uap", "facpa", "korhonen", "madc")
# how far each attack moves the scores, relative to one FGSM step: as measured on the zoo,
# iterative attacks find more than one step, gradient-free and universal ones less
STRENGTH = {"fgsm": 1.0, "ifgsm": 1.6, "mifgsm": 1.6, "pgd": 1.7, "apgd": 1.8, "square": 0.1,
            "uap": 0.4, "facpa": 0.3, "korhonen": 1.2, "madc": 1.1}  # fmt: skip
FAMILY = {"square": {"family": "query", "gradient_free": True},
          "uap": {"family": "universal", "trainable": True},
          "facpa": {"family": "generative", "trainable": True}}  # fmt: skip
EPS = (2 / 255, 4 / 255, 8 / 255, 16 / 255)
DIRECTIONS = ("up", "down")
META = {  # what a real cell records (sizes matter for the store, not the values)
    "versions": {"torch": "2.14.1", "pyiqa": "0.1.16", "numpy": "2.x", "h5py": "3.x"},
    "git": "0" * 40,
    "device": "cpu",
    "python": "3.11.7",
    "seed": 0,
    "date": "2026-12-07T00:00:00Z",
    "split": "test",
    "limit": None,
    "sample": None,
    "batch_size": 16,
    "input_shape": [3, 192, 192],
}


def cell_keys(n: int) -> list[CellKey]:
    """n distinct keys: models vary slowest, like a run's model groups."""
    keys = []
    per_model = len(ATTACKS) * len(EPS) * len(DIRECTIONS)
    for i in range(n):
        model, rest = divmod(i, per_model)
        attack, rest = divmod(rest, len(EPS) * len(DIRECTIONS))
        eps, direction = divmod(rest, len(DIRECTIONS))
        keys.append(
            CellKey(
                f"model-{model:04d}", "koniq10k", ATTACKS[attack], EPS[eps], DIRECTIONS[direction]
            )
        )
    return keys


def array_sets(k: int, n_images: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    ids = np.array([f"koniq10k/{i:010d}.jpg" for i in range(n_images)], dtype=object)
    out = []
    for _ in range(k):
        mos = rng.uniform(1, 5, n_images)
        clean = 0.2 * mos + rng.normal(0, 0.3, n_images)
        attacked = clean + rng.uniform(0, 0.4, n_images)
        out.append(
            {
                "image_id": ids,
                "mos": mos,
                "clean": clean,
                "attacked": attacked,
                "linf": np.full(n_images, 4 / 255),
                "l2": rng.uniform(1, 3, n_images),
                "psnr": rng.uniform(35, 45, n_images),
                "ssim": rng.uniform(0.9, 1, n_images),
                "seconds": rng.uniform(0.01, 0.1, n_images),
            }
        )
    return out


def make_cell(key: CellKey, arrays: dict[str, np.ndarray]) -> CellResult:
    gain = (arrays["attacked"] - arrays["clean"]) * STRENGTH[key.attack]
    arrays = {**arrays, "attacked": arrays["clean"] + (gain if key.direction == "up" else -gain)}
    return CellResult(
        key=key,
        status="done",
        model_info={
            "name": key.model,
            "lower_better": False,
            "score_range": [0, 2],
            "source": "zoo",
            "kind": "NR",
            "params": 730_000,
        },  # fmt: skip
        attack_config={
            "name": key.attack,
            "norm": "linf",
            "family": "gradient",
            "params": {"steps": 1 if key.attack == "fgsm" else 10},
            **FAMILY.get(key.attack, {}),
        },  # fmt: skip
        meta=META,
        **arrays,
    )


Summaries = dict[tuple[int, str, str], dict[str, Any]]


def summaries(sets: list[dict[str, np.ndarray]]) -> tuple[Summaries, float]:
    """One real summary per array set, attack and direction, and the seconds one took."""
    from benchmark.report.tables import cell_summary

    t0 = time.perf_counter()
    out = {
        (j, a, d): cell_summary(make_cell(CellKey("x", "koniq10k", a, 4 / 255, d), s))
        for j, s in enumerate(sets)
        for a in ATTACKS
        for d in DIRECTIONS
    }
    return out, (time.perf_counter() - t0) / len(out)


def for_key(summary: dict[str, Any], key: CellKey) -> dict[str, Any]:
    """A set's summary as the cell `key` made from it has it (only the key fields differ)."""
    return {**summary, "model": key.model, "attack": key.attack, "eps": key.eps,
            "eps_label": budget_label(key.eps), "direction": key.direction}  # fmt: skip


def write(
    store: ResultStore,
    keys: list[CellKey],
    sets: list[dict[str, np.ndarray]],
    sums: Summaries | None,
    block: int,
) -> list[float]:
    """Write the cells in one writer block; mean ms a write for each block of `block`."""
    per_block, times = [], []
    with store.writer():
        for i, key in enumerate(keys):
            j = i % len(sets)
            cell = make_cell(key, sets[j])
            t0 = time.perf_counter()
            if sums is None:
                store.write_cell(cell, "synthetic")
            else:
                summary = for_key(sums[j, key.attack, key.direction], key)
                store.write_cell(cell, "synthetic", summary=summary)
            times.append(time.perf_counter() - t0)
            if len(times) == block:
                per_block.append(1000 * float(np.mean(times)))
                times = []
        t_compact = time.perf_counter()
    print(f"  compaction at the writer's end: {time.perf_counter() - t_compact:.1f} s")
    return per_block


def size_mb(store: ResultStore) -> float:
    files = [store.path, *(store.journal.iterdir() if store.journal.is_dir() else [])]
    return sum(p.stat().st_size for p in files if p.exists()) / 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=4000)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--block", type=int, default=50)
    ap.add_argument("--leaderboard-cells", type=int, default=10_000)
    ap.add_argument("--distinct", type=int, default=4, help="distinct array sets")
    ap.add_argument("--no-summary", action="store_true")
    ap.add_argument("--dir", default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        store = ResultStore(Path(tmp) / "scaling.h5")
        sets = array_sets(args.distinct, args.images)
        sums = None
        if not args.no_summary:
            sums, per_summary = summaries(sets)
            print(f"cell summary (scoring + bootstrap, computed by the runner per written "
                  f"cell): {per_summary:.2f} s a cell of {args.images} images")  # fmt: skip
        total = max(args.cells, args.leaderboard_cells)
        keys = cell_keys(total)
        print(f"writing {args.cells} cells of {args.images} images, blocks of {args.block}")
        blocks = write(store, keys[: args.cells], sets, sums, args.block)
        for b in sorted({0, *range(9, len(blocks), 10), len(blocks) - 1}):
            lo, hi = b * args.block, (b + 1) * args.block
            print(f"  cells {lo:>5}-{hi:<5} {blocks[b]:8.1f} ms a write")
        ratio = blocks[-1] / blocks[0]
        print(f"last block / first block: {ratio:.2f}x (target <= 1.5x); "
              f"file {size_mb(store):.0f} MB")  # fmt: skip
        if args.leaderboard_cells > args.cells:
            print(f"adding cells up to {args.leaderboard_cells}")
            write(store, keys[args.cells :], sets, sums, args.block)
        if args.leaderboard_cells:
            n = len(store.cell_index())
            out = Path(tmp) / "leaderboard.html"
            t0 = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-m", "benchmark", "-q", "leaderboard", str(store.path),
                 "-o", str(out)],
                capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(
                    Path(__file__).resolve().parent.parent)},
            )  # fmt: skip
            wall = time.perf_counter() - t0
            if proc.returncode:
                print(proc.stderr[-3000:])
                return 1
            rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
            print(f"leaderboard of {n} cells ({size_mb(store):.0f} MB): {wall:.1f} s wall "
                  f"(target <= 60 s), peak RSS {rss:.0f} MB, page "
                  f"{out.stat().st_size / 1e6:.1f} MB")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
