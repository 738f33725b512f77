"""Time OrthConv2d against nn.Conv2d of the same shape, in one process.

Shape (from issue 5): 64 -> 64 channels, 3x3, 128x128, batch 16, float32. Prints the
forward+backward ratio (training) and the eval-mode inference ratio with the cached Q.
The two layers are timed alternately in each round and the per-round ratios' median is
reported, so that load from other processes on the shared CPU hits both sides alike.
The process uses the allocator settings the runner uses (`benchmark.engine.allocator`: freed
buffers are reused instead of page-faulted in again, which on this VM cost more than the
FFTs); `BENCHMARK_MALLOC=default` times glibc's default instead, and the first line says
which.

    python scripts/orthconv_speed.py [--rounds 7] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from benchmark.engine.allocator import keep_freed_memory
from benchmark.robust.orthconv import OrthConv2d


def _time(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave default)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--channels", type=int, default=64)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    allocator = "runner's (freed buffers kept)" if keep_freed_memory() else "glibc default"
    torch.manual_seed(0)
    c, s, b = args.channels, args.size, args.batch
    conv = nn.Conv2d(c, c, 3, padding=1)
    orth = OrthConv2d(c, c, 3)
    x = torch.randn(b, c, s, s, requires_grad=True)

    def train_step(layer: nn.Module) -> Callable[[], object]:
        def run() -> None:
            layer.train()
            layer.zero_grad(set_to_none=True)
            x.grad = None
            layer(x).square().mean().backward()

        return run

    def infer(layer: nn.Module) -> Callable[[], object]:
        def run() -> None:
            layer.eval()
            with torch.no_grad():
                layer(x)

        return run

    cases = {
        "forward+backward": (train_step(conv), train_step(orth)),
        "cached inference": (infer(conv), infer(orth)),
    }
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"x {tuple(x.shape)} float32, median of {args.rounds} rounds, allocator {allocator}"
    )
    for name, (base, ours) in cases.items():
        base(), ours(), base(), ours()  # warm-up; fills the eval cache
        tb, to, ratios = [], [], []
        for _ in range(args.rounds):
            t1, t2 = _time(base), _time(ours)
            tb.append(t1)
            to.append(t2)
            ratios.append(t2 / t1)
        print(
            f"{name:17s} nn.Conv2d {statistics.median(tb) * 1e3:8.1f} ms   "
            f"OrthConv2d {statistics.median(to) * 1e3:8.1f} ms   "
            f"ratio {statistics.median(ratios):5.2f}x (per-round min {min(ratios):.2f}, "
            f"max {max(ratios):.2f})"
        )
    with torch.no_grad():
        y = orth.eval()(x)
        err = (y.norm() / x.norm() - 1).abs().item()
    print(f"norm error |  ||y||/||x|| - 1 | = {err:.2e} (float32, bias zero)")


if __name__ == "__main__":
    main()
