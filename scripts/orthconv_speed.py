"""Time OrthConv2d against nn.Conv2d of the same shape, in one process.

Shape (from issue 5): 64 -> 64 channels, 3x3, 128x128, batch 16, float32. Prints the
forward+backward ratio (training) and the eval-mode inference ratio with the cached Q.
The two layers are timed alternately in each round and the per-round ratios' median is
reported, so that load from other processes on the shared CPU hits both sides alike.
The process uses the allocator settings the runner uses (`benchmark.engine.allocator`: freed
buffers are reused instead of page-faulted in again, which on this VM cost more than the
FFTs); `BENCHMARK_MALLOC=default` times glibc's default instead, and the first line says
which.

    python scripts/orthconv_speed.py [--rounds 7] [--threads N] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmark.engine.allocator import keep_freed_memory  # noqa: E402
from benchmark.robust.orthconv import OrthConv2d  # noqa: E402


def _time(fn: Callable[[], object], sync: Callable[[], object] = lambda: None) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def measure(
    rounds: int = 7,
    batch: int = 16,
    size: int = 128,
    channels: int = 64,
    device: str = "cpu",
) -> dict[str, float]:
    """Print the comparison (the lines `main` prints) and return the median ratios by case
    and the norm error. On CUDA every timed call ends with a synchronisation."""
    allocator = "runner's (freed buffers kept)" if keep_freed_memory() else "glibc default"
    torch.manual_seed(0)
    c, s, b = channels, size, batch
    conv = nn.Conv2d(c, c, 3, padding=1).to(device)
    orth = OrthConv2d(c, c, 3).to(device)
    x = torch.randn(b, c, s, s, device=device, requires_grad=True)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

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
    where = "" if device == "cpu" else f"device {device}, "
    print(
        f"torch {torch.__version__}, {where}threads {torch.get_num_threads()}, "
        f"x {tuple(x.shape)} float32, median of {rounds} rounds, allocator {allocator}"
    )
    out = {}
    for name, (base, ours) in cases.items():
        base(), ours(), base(), ours()  # warm-up; fills the eval cache
        tb, to, ratios = [], [], []
        for _ in range(rounds):
            t1, t2 = _time(base, sync), _time(ours, sync)
            tb.append(t1)
            to.append(t2)
            ratios.append(t2 / t1)
        out[name] = statistics.median(ratios)
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
    out["norm_error"] = err
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave default)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    measure(args.rounds, args.batch, args.size, args.channels, args.device)


if __name__ == "__main__":
    main()
