"""How much a second CPU thread speeds up pyiqa's full-reference metrics (they compute in
float64), which bounds what process parallelism could add on a 2-core machine.

    python scripts/fr_thread_scaling.py [--images 32] [--metrics ssim,vif,...]

Prints, per metric, the best of 2 timings of clean scoring with 1 and with 2 threads, and
their ratio; one process, the same images for every metric.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmark.models.registry import create_model


def best_seconds(model, x: torch.Tensor, ref: torch.Tensor, repeats: int = 2) -> float:
    with torch.inference_mode():
        model.score(x[:2], ref[:2])  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.score(x, ref)
            times.append(time.perf_counter() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--metrics", default="ssim,vif,fsim,vsi,cw_ssim,ms_ssim")
    args = p.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(args.images, 3, 192, 192, generator=g)
    x = (ref + 0.02 * torch.randn(ref.shape, generator=g)).clamp(0, 1)
    for name in args.metrics.split(","):
        model = create_model(name)
        t = {}
        for threads in (1, 2):
            torch.set_num_threads(threads)
            t[threads] = best_seconds(model, x, ref)
        print(f"{name}: 1 thread {t[1]:.2f} s, 2 threads {t[2]:.2f} s, speed-up x{t[1] / t[2]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
