"""Time OrthConv2d and ExplicitOrthConv2d against nn.Conv2d of the same shape, in one process.

Shape (from issue 5): 64 -> 64 channels, 3x3, 128x128, batch 16, float32. Prints the
forward+backward ratio (training) and the eval-mode inference ratio (OrthConv2d with its
cached Q, ExplicitOrthConv2d with its cached kernel: one circular-padded conv) of each
orthogonal layer to nn.Conv2d (zero padding, as a base model has it). The three layers are
timed one after the other in each round and the per-round ratios' median is reported, so
that load from other processes on the shared CPU hits all sides alike.

The first lines say what the numbers depend on: the CPU model (/proc/cpuinfo), torch's BLAS,
LAPACK and FFT backends, the thread count and the allocator. The process uses the allocator
settings the runner uses (`benchmark.engine.allocator`: freed buffers are reused instead of
page-faulted in again, which on this VM cost more than the FFTs); `BENCHMARK_MALLOC=default`
times glibc's default instead; an LD_PRELOAD'ed allocator (jemalloc, tcmalloc) is named.

`--threaded-solve` restores the solve as it was before oneMKL was held to one thread there
(`benchmark.robust.linalg.lu_solve_cpu`), to measure what that change is worth.

    python scripts/orthconv_speed.py [--rounds 7] [--threads N] [--device cpu|cuda]
        [--threaded-solve]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmark.engine.allocator import keep_freed_memory  # noqa: E402
from benchmark.robust.explicit import ExplicitOrthConv2d  # noqa: E402
from benchmark.robust.orthconv import OrthConv2d  # noqa: E402


def _time(fn: Callable[[], object], sync: Callable[[], object] = lambda: None) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what `platform` knows."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    m = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    cores = len(re.findall(r"^processor\s*:", text, re.M))
    name = m.group(1).strip() if m else (platform.processor() or platform.machine())
    return f"{name} ({cores} logical CPUs)" if cores else name


def backends() -> str:
    """torch's BLAS / LAPACK / FFT backends as its build reports them."""
    cfg = torch.__config__.show()

    def field(key: str) -> str:
        m = re.search(rf"{key}=([^,\n]+)", cfg)
        return m.group(1).strip() if m else "?"

    mkl = torch.backends.mkl.is_available()
    fft = "oneMKL" if mkl else "pocketfft"  # torch's CPU FFT: MKL when built with it
    return (
        f"BLAS {field('BLAS_INFO')}, LAPACK {field('LAPACK_INFO')}, FFT {fft} "
        f"(torch.backends.mkl {'available' if mkl else 'unavailable'}, "
        f"mkldnn {'on' if torch.backends.mkldnn.is_available() else 'off'})"
    )


def allocator() -> str:
    """Which malloc the process runs with: LD_PRELOAD'ed, the runner's tuning, or glibc's."""
    preload = os.environ.get("LD_PRELOAD", "").strip()
    tuned = keep_freed_memory()
    base = f"LD_PRELOAD {preload}" if preload else "glibc malloc"
    return f"{base}, " + ("runner's tuning (freed buffers kept)" if tuned else "default settings")


def describe(device: str) -> str:
    """Everything a number from this script depends on, in two lines."""
    where = torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"
    return (
        f"CPU {cpu_model()}; torch {torch.__version__} on {where}, threads "
        f"{torch.get_num_threads()}\n{backends()}; allocator {allocator()}"
    )


def measure(
    rounds: int = 7,
    batch: int = 16,
    size: int = 128,
    channels: int = 64,
    device: str = "cpu",
) -> dict[str, float]:
    """Print the comparison (the lines `main` prints) and return the median ratios by case
    ("forward+backward", "cached inference" for OrthConv2d; "explicit forward+backward",
    "explicit cached inference" for ExplicitOrthConv2d) and the norm errors. On CUDA every timed
    call ends with a synchronisation."""
    print(describe(device))
    torch.manual_seed(0)
    c, s, b = channels, size, batch
    conv = nn.Conv2d(c, c, 3, padding=1).to(device)
    orth = OrthConv2d(c, c, 3).to(device)
    expl = ExplicitOrthConv2d(c, c, 3).to(device)
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

    print(f"x {tuple(x.shape)} float32, 3x3, median of {rounds} rounds (per-round ratios)")
    out = {}
    names = ("nn.Conv2d", "OrthConv2d", "ExplicitOrthConv2d")
    for case, make in (("forward+backward", train_step), ("cached inference", infer)):
        fns = [make(layer) for layer in (conv, orth, expl)]
        for fn in fns + fns:  # warm-up; fills the eval caches
            fn()
        times: list[list[float]] = [[] for _ in fns]
        for _ in range(rounds):
            for i, fn in enumerate(fns):
                times[i].append(_time(fn, sync))
        base_ms = statistics.median(times[0]) * 1e3
        print(f"{case:17s} {names[0]} {base_ms:8.1f} ms")
        for i in (1, 2):
            ratios = [t / t0 for t, t0 in zip(times[i], times[0], strict=True)]
            med = statistics.median(ratios)
            out[case if i == 1 else f"explicit {case}"] = med
            print(
                f"{'':17s} {names[i]:18s} {statistics.median(times[i]) * 1e3:8.1f} ms   "
                f"ratio {med:5.2f}x (per-round min {min(ratios):.2f}, max {max(ratios):.2f})"
            )
    for key, layer in (("norm_error", orth), ("explicit norm_error", expl)):
        with torch.no_grad():
            bias = layer.bias[:, None, None]
            y = layer.eval()(x) - bias
            err = (y.norm() / x.norm() - 1).abs().item()
        print(f"norm error {type(layer).__name__}: | ||y - b|| / ||x|| - 1 | = {err:.2e} (float32)")
        out[key] = err
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave default)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument(
        "--threaded-solve",
        action="store_true",
        help="let oneMKL thread OrthConv2d's batched solves (the behaviour before the fix)",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.threaded_solve:
        import benchmark.robust.orthconv as orthconv

        def threaded(lu, piv, b, adjoint=False):  # noqa: ANN001, ANN202 -- lu_solve's own
            return torch.linalg.lu_solve(lu, piv, b, adjoint=adjoint)

        orthconv.lu_solve_cpu = threaded
        print("oneMKL threads OrthConv2d's solves (--threaded-solve)")
    measure(args.rounds, args.batch, args.size, args.channels, args.device)


if __name__ == "__main__":
    main()
