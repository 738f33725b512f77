"""Forward+backward time of pyiqa's metrics called directly and through the adapter (whose
float64 convolutions run through the FFT).

    python scripts/fftconv_speed.py [--images 8] [--repeats 3]

One process, the same builtin test images, the median of repeats for each; prints the
ratio (pyiqa / adapter) and the largest relative difference of scores and input gradients.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmark.datasets.registry import create_dataset
from benchmark.models.pyiqa_adapter import pyiqa_metric
from benchmark.models.registry import create_model

METRICS = ("ssim", "ssimc", "ms_ssim", "cw_ssim", "vif", "vsi", "fsim")


def fwd_bwd(score, x: torch.Tensor, ref: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor]:
    xi = x.clone().requires_grad_(True)
    t0 = time.perf_counter()
    s = score(xi, ref).reshape(-1)
    (g,) = torch.autograd.grad(s.sum(), xi)
    return time.perf_counter() - t0, s.detach(), g


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    batch = next(create_dataset("builtin", "test").batches(args.images))
    x, ref = batch.images, batch.refs
    print(f"{args.images} images {tuple(x.shape[1:])}, {torch.get_num_threads()} threads")
    print(
        "| metric | pyiqa s | adapter s | pyiqa / adapter | max rel diff score | max rel diff grad |"
    )
    print("|---|---|---|---|---|---|")
    for name in METRICS:
        scorers = {False: pyiqa_metric(name), True: create_model(name).score}
        times: dict[bool, list[float]] = {False: [], True: []}
        out = {}
        for _ in range(args.repeats):
            for reroute, score in scorers.items():
                t, s, g = fwd_bwd(score, x, ref)
                times[reroute].append(t)
                out[reroute] = (s, g)
        direct, fft = (statistics.median(times[k]) for k in (False, True))
        (s0, g0), (s1, g1) = out[False], out[True]
        ds = ((s0 - s1).abs().max() / s0.abs().max()).item()
        dg = ((g0 - g1).abs().max() / g0.abs().max().clamp_min(1e-30)).item()
        print(f"| {name} | {direct:.3f} | {fft:.3f} | {direct / fft:.1f} | {ds:.1e} | {dg:.1e} |")


if __name__ == "__main__":
    main()
