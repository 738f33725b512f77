"""Cells per second of `--executor ray` against `--executor local` on the same CPUs.

    python scripts/ray_overhead.py                       # the default config below
    python scripts/ray_overhead.py --models cnniqa-builtin --attacks fgsm,ifgsm --sample 8

Runs one config twice in this process, into two fresh results files: once with the local
executor (torch on every core), once with the Ray executor on a local Ray instance given
the same number of CPUs (one 1-CPU task at a time per CPU). Prints each run's wall time
(the runner's, from planning to the last stored cell; for Ray it includes the workers'
start but not `ray.init`, printed apart), cells per second, the per-cell overhead of Ray
(its wall time minus the local one, divided by the cells) and the ratio of the two rates,
and the mean time spent inside `run_cell` per cell (with one task per cell, that included
each cell's own gradient check and clean scoring).
The stored numbers of the two runs are compared too (they should be equal).

Cheap attacks (fgsm) make the per-cell overhead visible: what every cell of a model group
shares (model build, dataset decode, gradient check, clean scoring) costs more than the
attack. A fixed `--batch-size` keeps the batch-size probe (timed, noisy on a loaded machine)
out of both runs. To time another checkout's executor, put it first on the path:
`PYTHONPATH=/path/to/checkout python scripts/ray_overhead.py`.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="cnniqa-builtin,resnet-small-builtin")
    p.add_argument("--attacks", default="fgsm")
    p.add_argument("--eps", default="1/255,2/255,4/255,8/255")
    p.add_argument("--direction", default="both", choices=["up", "down", "both"])
    p.add_argument("--dataset", default="builtin")
    p.add_argument("--data-root", default=None)
    p.add_argument("--sample", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="for both executors")
    p.add_argument("--order", default="local,ray", help="which runs, in this order")
    args = p.parse_args()

    import ray
    import torch

    import benchmark
    from benchmark.budget import parse_budgets
    from benchmark.engine.executors import make_executor
    from benchmark.engine.runner import RunConfig, run
    from benchmark.store.hdf5 import ResultStore

    torch.set_num_threads(args.cpus)
    cfg = RunConfig(
        models=tuple(args.models.split(",")),
        attacks=tuple(args.attacks.split(",")),
        dataset=args.dataset,
        data_root=args.data_root,
        eps=tuple(parse_budgets(args.eps)),
        directions=("up", "down") if args.direction == "both" else (args.direction,),
        sample=args.sample,
        batch_size=args.batch_size,
    )
    print(
        f"benchmark from {Path(benchmark.__file__).parent}; {args.cpus} CPU(s); ray {ray.__version__}"
    )
    out = Path(tempfile.mkdtemp(prefix="ray-overhead-"))
    wall: dict[str, float] = {}
    cells: dict[str, int] = {}
    for name in args.order.split(","):
        if name == "ray":
            t0 = time.perf_counter()
            ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
            print(f"ray.init: {time.perf_counter() - t0:.1f} s (not counted below)")
        try:
            report = run(cfg, ResultStore(out / f"{name}.h5"), progress=False,
                         executor=make_executor(name))  # fmt: skip
        finally:
            if name == "ray":
                ray.shutdown()
        wall[name], cells[name] = report.wall_s, len(report.computed)
        in_cells = sum(c.meta["wall_s"] for c in ResultStore(out / f"{name}.h5").read_cells())
        print(
            f"{name:>5}: {cells[name]} cells in {wall[name]:.1f} s = "
            f"{cells[name] / wall[name]:.3f} cells/s ({len(report.failed)} failed); "
            f"{in_cells / cells[name]:.2f} s per cell inside `run_cell`"
        )
    if {"local", "ray"} <= wall.keys():
        n = cells["local"]
        extra = (wall["ray"] - wall["local"]) / n
        ratio = (cells["ray"] / wall["ray"]) / (cells["local"] / wall["local"])
        print(f"ray overhead: {extra:+.2f} s per cell; ray/local cells/s = {ratio:.2f}")
        a = {c.key: c for c in ResultStore(out / "local.h5").read_cells()}
        b = {c.key: c for c in ResultStore(out / "ray.h5").read_cells()}
        same = a.keys() == b.keys() and all(
            np.array_equal(a[k].attacked, b[k].attacked, equal_nan=True)
            and np.array_equal(a[k].clean, b[k].clean, equal_nan=True)
            for k in a
        )
        print(f"stored numbers equal: {same}")
    print(f"results in {out}")


if __name__ == "__main__":
    main()
