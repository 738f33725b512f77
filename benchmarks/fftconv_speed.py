"""Forward+backward time of pyiqa's float64 metrics with and without the FFT convolution.

    python benchmarks/fftconv_speed.py [--images 8] [--repeats 3]

One process, the same builtin test images, the median of repeats for each; prints the
ratio (direct / FFT) and the largest relative difference of scores and input gradients.
"""

from __future__ import annotations

import argparse
import statistics
import time
from unittest import mock

import torch

from benchmark import fftconv
from benchmark.datasets.registry import create_dataset
from benchmark.models.registry import create_model

METRICS = ("ssim", "ssimc", "ms_ssim", "cw_ssim", "vif", "vsi", "fsim")


def fwd_bwd(model, x: torch.Tensor, ref: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor]:
    xi = x.clone().requires_grad_(True)
    t0 = time.perf_counter()
    s = model.score(xi, ref)
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
    print("| metric | direct s | FFT s | direct / FFT | max rel diff score | max rel diff grad |")
    print("|---|---|---|---|---|---|")
    for name in METRICS:
        model = create_model(name)
        times: dict[bool, list[float]] = {False: [], True: []}
        out = {}
        for _ in range(args.repeats):
            for reroute in (False, True):
                if reroute:
                    t, s, g = fwd_bwd(model, x, ref)
                else:
                    with mock.patch.object(fftconv, "_rerouted", return_value=False):
                        t, s, g = fwd_bwd(model, x, ref)
                times[reroute].append(t)
                out[reroute] = (s, g)
        direct, fft = (statistics.median(times[k]) for k in (False, True))
        (s0, g0), (s1, g1) = out[False], out[True]
        ds = ((s0 - s1).abs().max() / s0.abs().max()).item()
        dg = ((g0 - g1).abs().max() / g0.abs().max().clamp_min(1e-30)).item()
        print(f"| {name} | {direct:.3f} | {fft:.3f} | {direct / fft:.1f} | {ds:.1e} | {dg:.1e} |")


if __name__ == "__main__":
    main()
