"""Does flipping torch's thread count break oneMKL's batched complex LU under load?

Why this exists: a 25-model run failed one RobustBlock cell with invalid LU pivots ("Parameter
6 was incorrect on entry to CLASWP") after an earlier fftconv flipped `torch.set_num_threads`
around every FFT. This script factorises batches of the shapes OrthConv2d uses (I + A, A
skew-Hermitian, never singular) while a second process keeps the CPU busy, in three modes:
no flipping, flipping, and flipping with the factorisation itself on one thread. It counts
the iterations in which any pivot fell outside 1..n.

    python benchmarks/lu_thread_flip_stress.py [--seconds 60]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time

import torch

SHAPES = [(192, 12), (384, 4), (192, 4), (96, 40)]  # (n, batch): OrthConv2d's small-spatial layers


def _busy(seconds: float) -> None:
    a = torch.rand(1500, 1500)
    end = time.time() + seconds
    while time.time() < end:
        a @ a


def _stress(seconds: float, flip: bool, one_thread_lu: bool) -> tuple[int, int]:
    from benchmark.allocator import keep_freed_memory

    keep_freed_memory()  # as the runner does
    threads = torch.get_num_threads()
    gen = torch.Generator().manual_seed(0)
    bad = iterations = 0
    end = time.time() + seconds
    while time.time() < end:
        if flip:
            for _ in range(200):
                torch.set_num_threads(1)
                torch.fft.rfft2(torch.rand(2, 3, 16, 16, dtype=torch.float64))
                torch.set_num_threads(threads)
        for n, batch in SHAPES:
            a = 0.1 * torch.randn(batch, n, n, dtype=torch.complex64, generator=gen)
            m = torch.eye(n, dtype=torch.complex64) + a - a.mH
            if one_thread_lu:
                torch.set_num_threads(1)
            _, piv, info = torch.linalg.lu_factor_ex(m)
            torch.set_num_threads(threads)
            bad += bool(((piv < 1) | (piv > n)).any() or (info != 0).any())
        iterations += 1
    return bad, iterations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    print(f"{torch.get_num_threads()} threads, a busy process beside, {args.seconds:.0f} s each")
    print("| mode | iterations | with invalid pivots |")
    print("|---|---|---|")
    modes = [
        ("no flipping", False, False),
        ("flipping", True, False),
        ("flipping, LU on 1 thread", True, True),
    ]
    for label, flip, one in modes:
        load = mp.get_context("spawn").Process(target=_busy, args=(args.seconds + 2,))
        load.start()
        try:
            bad, iterations = _stress(args.seconds, flip, one)
        finally:
            load.join()
        print(f"| {label} | {iterations} | {bad} |", flush=True)


if __name__ == "__main__":
    main()
