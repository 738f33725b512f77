"""LU factorisation and inverse that avoid a oneMKL failure in batched getrf on the CPU.

Why: with torch 2.14.1's CPU build, once a process has called `torch.set_num_threads(k)` with
k > 1 (even with the current value; the training CLIs' `--threads` and our tests do),
`torch.linalg.lu_factor` on a batch of two or more matrices of size 160 and up returns wrong
factors: P L U differs from the matrix by about 1 (float32 and float64 alike), and some
pivots come back 0, which torch reports as "Pivots given to lu_solve must all be greater or
equal to 1" after oneMKL prints "Parameter 6 was incorrect on entry to [SDCZ]LASWP". Without
that call, after `set_num_threads(1)`, for one matrix at a time, or for sizes up to 128 the
factors are right (`python scripts/lu_thread_flip_stress.py` measures it). SVD, eigh, QR,
Cholesky, matmul and a batched `lu_solve` with correct factors are unaffected. OrthConv2d's
Cayley transform and robustify's initial projection factorise exactly such batches.

So on the CPU, batches of matrices of `PER_MATRIX_FROM` and up are factorised one matrix at a
time (each is at least ~1 MFLOP, so the loop costs nothing measurable), and the pivots of
every factorisation are checked: an invalid one raises instead of giving a wrong result.
The check is skipped on CUDA, where it would cost a host-device sync per forward.

Batched `lu_solve` on the CPU is a loop over the batch of oneMKL `getrs` calls, and oneMKL
threads each call with torch's thread count: for OrthConv2d's 8,320 small systems (64
channels, 128x128) that is 8,320 fork/joins, which on the shared 2-core VM under load took
19.5 s with 2 threads against 1.5 s with oneMKL held to one thread on the calling thread
(`mkl_one_thread`, oneMKL's thread-local setting: torch's own threads and its global
oneMKL setting are untouched, so the batched-getrf failure above is not provoked; results
are bit-identical). Measured with `python scripts/orthconv_speed.py` (docs/speed.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
from collections.abc import Callable, Iterator

import torch

__all__ = ["inverse_checked", "lu_factor_checked", "lu_solve_cpu", "mkl_one_thread"]


@functools.cache
def _mkl_set_local() -> Callable[[int], int] | None:
    """oneMKL's `MKL_Set_Num_Threads_Local` from torch's own library, if it has one."""
    if not torch.backends.mkl.is_available():
        return None
    path = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    try:
        fn = ctypes.CDLL(path).MKL_Set_Num_Threads_Local
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


@contextlib.contextmanager
def mkl_one_thread() -> Iterator[None]:
    """Run oneMKL calls made on this thread single-threaded (no-op without oneMKL)."""
    fn = _mkl_set_local()
    if fn is None:
        yield
        return
    fn(1)
    try:
        yield
    finally:
        fn(0)  # 0: back to the global setting, which torch manages


def lu_solve_cpu(
    lu: torch.Tensor, piv: torch.Tensor, b: torch.Tensor, adjoint: bool = False
) -> torch.Tensor:
    """`torch.linalg.lu_solve`, with oneMKL on one thread for CPU batches (see above)."""
    if lu.device.type != "cpu" or lu.dim() < 3:
        return torch.linalg.lu_solve(lu, piv, b, adjoint=adjoint)
    with mkl_one_thread():
        return torch.linalg.lu_solve(lu, piv, b, adjoint=adjoint)


PER_MATRIX_FROM = 96  # wrong factors measured from 160 up, right at 128 and below


def _bad(piv: torch.Tensor, info: torch.Tensor, n: int) -> torch.Tensor:
    """Mask over the batch: pivots outside 1..n or a LAPACK error."""
    return ((piv < 1) | (piv > n)).any(dim=-1) | (info != 0)


def lu_factor_checked(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`torch.linalg.lu_factor(m)` (differentiable), safe from the batched-getrf failure."""
    n = m.shape[-1]
    batch = m.shape[:-2].numel()
    if m.device.type != "cpu":
        lu, piv, _ = torch.linalg.lu_factor_ex(m)
        return lu, piv
    if batch > 1 and n >= PER_MATRIX_FROM:
        parts = [torch.linalg.lu_factor_ex(mi) for mi in m.reshape(-1, n, n)]
        lu = torch.stack([p[0] for p in parts]).reshape(m.shape)
        piv = torch.stack([p[1] for p in parts]).reshape(*m.shape[:-2], n)
        info = torch.stack([p[2] for p in parts]).reshape(m.shape[:-2])
    else:
        lu, piv, info = torch.linalg.lu_factor_ex(m)
    bad = _bad(piv, info, n)
    if bool(bad.any()):
        finite = bool(torch.isfinite(torch.view_as_real(m) if m.is_complex() else m).all())
        raise FloatingPointError(
            f"LU factorisation failed for {int(bad.sum())} of {batch} {n}x{n} {m.dtype} "
            f"matrices (invalid pivots or LAPACK error; entries "
            f"{'finite' if finite else 'NOT finite'}); see benchmark/robust/linalg.py"
        )
    return lu, piv


def inverse_checked(m: torch.Tensor) -> torch.Tensor:
    """`torch.linalg.inv(m)` through `lu_factor_checked` (torch's inv uses the same LU)."""
    lu, piv = lu_factor_checked(m)
    eye = torch.eye(m.shape[-1], dtype=m.dtype, device=m.device)
    return lu_solve_cpu(lu, piv, eye.expand_as(m))
