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
"""

from __future__ import annotations

import torch

__all__ = ["inverse_checked", "lu_factor_checked"]

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
    return torch.linalg.lu_solve(lu, piv, eye.expand_as(m))
