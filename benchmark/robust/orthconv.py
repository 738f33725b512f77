"""Orthogonal convolution in the Fourier domain (Trockman & Kolter 2021, Cayley transform).

A circular convolution is block-diagonal in the 2-D DFT basis: at every frequency f it is a
`c_out x c_in` matrix. `OrthConv2d` makes each of those matrices (semi-)orthogonal with the
Cayley transform of a skew-Hermitian matrix, so the whole layer is an orthogonal operator
(`c_out >= c_in`: norm-preserving) or a co-isometry (`c_out < c_in`: non-expansive).

Why it is written the way it is (measured on the 2-core CPU, see `scripts/orthconv_speed.py`):

- The skew-Hermitian part is the DFT of a *real* k x k kernel `S[t] = K[t] - K[-t]^T`, built
  directly with two small DFT matrices over the taps (no zero-padded FFT of the kernel). A
  real kernel gives the conjugate symmetry `irfft2` needs for free.
- Training never forms Q. With `M = I + A`, `Q x = 2 M^{-1} x - x`: one LU per frequency and a
  solve with the batch as right-hand sides; the backward reuses that LU (adjoint solve) and
  needs no further factorisation. The solves hold oneMKL to one thread (`lu_solve_cpu`):
  threaded, its per-matrix fork/joins made them 5-13x slower with 2 threads on the loaded VM.
- `c_out != c_in` uses block elimination (`A = U - U^H + V^H V`), so only a
  `min(c_in, c_out)`-sized system is ever factorised.
- Eval mode caches Q per input size (it is large: 64 channels at 128x128 is 272 MB in float32),
  bounded by entry count and bytes; beyond the bound the solve path is used instead.

Convention: `y[o, n] = sum_{c, t} K_full[o, c, t] x[c, (n + t) mod N]` (circular
cross-correlation like `F.conv2d` with circular padding), with taps `t` centred on the kernel.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.robust.linalg import inverse_checked, lu_factor_checked, lu_solve_cpu

__all__ = ["OrthConv2d", "space_to_depth"]


def space_to_depth(x: torch.Tensor, stride: int) -> torch.Tensor:
    """Zero-pad to a multiple of `stride` and fold each s x s block into channels.

    Both steps are isometries, so striding this way preserves the norm exactly (unlike
    subsampling, which discards energy).
    """
    if stride == 1:
        return x
    h, w = x.shape[-2:]
    ph, pw = (-h) % stride, (-w) % stride
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph))
    return F.pixel_unshuffle(x, stride)


def _dft_matrix(n: int, taps: int, n_freq: int, dtype: torch.dtype, device: torch.device):
    """`E[f, a] = exp(+2 pi i f (a - taps // 2) / n)` for the first `n_freq` frequencies."""
    real = torch.float64
    f = torch.arange(n_freq, dtype=real, device=device)[:, None]
    t = torch.arange(taps, dtype=real, device=device)[None, :] - (taps // 2)
    ang = (2 * math.pi / n) * torch.remainder(f * t, n)
    return torch.polar(torch.ones_like(ang), ang).to(dtype)


class _SolveLU(torch.autograd.Function):
    """`z = M^{-1} x` for a batch of matrices; backward reuses the forward LU (no refactoring).

    `grad_x = M^{-H} g`, `grad_M = -(M^{-H} g) z^H` (PyTorch's complex-gradient convention).
    """

    @staticmethod
    def forward(ctx, m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        lu, piv = lu_factor_checked(m)
        z = lu_solve_cpu(lu, piv, x)
        ctx.save_for_backward(lu, piv, z)
        return z

    @staticmethod
    def backward(ctx, gz: torch.Tensor):  # type: ignore[override]
        lu, piv, z = ctx.saved_tensors
        w = lu_solve_cpu(lu, piv, gz.contiguous(), adjoint=True)
        # negate the small (F, m, N) factor, not the (F, m, m) product
        gm = torch.matmul(-w, z.mH) if ctx.needs_input_grad[0] else None
        return gm, w


class OrthConv2d(nn.Module):
    """Orthogonal (c_out >= c_in * stride^2) or non-expansive circular 2-D convolution.

    Output spatial size is `ceil(H / stride) x ceil(W / stride)` for any input size. Even
    kernel sizes are embedded in the next odd size (taps centred). `cache_entries` /
    `cache_bytes` bound the eval-time cache of Q per (H, W, dtype, device).
    In eval mode the cached Q is detached: inputs still get gradients, weights do not.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        bias: bool = True,
        cache_entries: int = 2,
        cache_bytes: int = 1 << 29,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if min(in_channels, out_channels, kernel_size, stride) < 1:
            raise ValueError("OrthConv2d: channels, kernel_size and stride must be positive")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        self.kernel_size = kernel_size
        self.taps = kernel_size + (1 - kernel_size % 2)  # odd support, centred
        self.cin_eff = in_channels * stride * stride
        self.m = min(self.cin_eff, out_channels)
        self.cache_entries = cache_entries
        self.cache_bytes = cache_bytes
        kw = {"device": device, "dtype": dtype}
        # Full kernel (c_out, c_in_eff, k, k): the first m x m block generates the skew part,
        # the rest is V (tall: extra output rows; wide: extra input columns).
        self.weight = nn.Parameter(
            torch.empty(out_channels, self.cin_eff, self.taps, self.taps, **kw)
        )
        self.bias = nn.Parameter(torch.zeros(out_channels, **kw)) if bias else None
        self._cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Same scale as `nn.Conv2d`'s default; the layer is orthogonal for any weights."""
        bound = 1.0 / math.sqrt(self.cin_eff * self.kernel_size**2)
        with torch.no_grad():
            self.weight.uniform_(-bound, bound)
            if self.kernel_size % 2 == 0:  # unused taps of an even kernel stay zero
                self.weight[..., -1, :] = 0
                self.weight[..., :, -1] = 0
            if self.bias is not None:
                self.bias.zero_()
        self._cache.clear()

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, bias={self.bias is not None}"
        )

    # -- spectrum -----------------------------------------------------------------------
    def _complex_dtype(self) -> torch.dtype:
        return torch.complex128 if self.weight.dtype == torch.float64 else torch.complex64

    def _dft(self, kernel: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """DFT of a real (a, b, k, k) tap kernel on the rfft grid -> (h, w//2+1, a, b)."""
        cd = self._complex_dtype()
        k = self.taps
        eh = _dft_matrix(h, k, h, cd, kernel.device)  # (h, k)
        ew = _dft_matrix(w, k, w // 2 + 1, cd, kernel.device)  # (wf, k)
        a, b = kernel.shape[:2]
        t = torch.matmul(kernel.to(cd).reshape(a * b * k, k), ew.T)  # (a b k_h, wf)
        t = t.reshape(a * b, k, -1).permute(1, 2, 0).reshape(k, -1)  # (k_h, wf a b)
        return torch.matmul(eh, t).reshape(h, w // 2 + 1, a, b)

    def spectrum(self, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`M = I + A` (F, m, m) and the DFT of V ((F, c_out-m, m) tall, (F, m, c_in-m) wide)."""
        m = self.m
        wt = self.weight
        u = wt[:m, :m]
        skew = u - u.transpose(0, 1).flip(-1, -2)  # S[t] = U[t] - U[-t]^T
        eye = torch.zeros_like(skew)
        c = self.taps // 2
        eye[:, :, c, c] = torch.eye(m, dtype=wt.dtype, device=wt.device)
        mat = self._dft(skew + eye, h, w).reshape(-1, m, m)
        vf = None
        if self.out_channels > m:  # tall: V rows, A += V^H V
            vf = self._dft(wt[m:, :m], h, w).reshape(-1, self.out_channels - m, m)
            mat = mat + torch.matmul(vf.mH, vf)
        elif self.cin_eff > m:  # wide (transposed T&K): B += V V^H
            vf = self._dft(wt[:m, m:], h, w).reshape(-1, m, self.cin_eff - m)
            mat = mat + torch.matmul(vf, vf.mH)
        return mat, vf

    def orthogonal_matrices(self, h: int, w: int) -> torch.Tensor:
        """Q(f) for the rfft grid of an (h, w) input after space-to-depth: (h, w//2+1, c_out, c_in)."""
        mat, vf = self.spectrum(h, w)
        m = self.m
        inv = inverse_checked(mat)
        eye = torch.eye(m, dtype=inv.dtype, device=inv.device)
        q = 2 * inv - eye
        if self.out_channels > m:
            q = torch.cat([q, -2 * torch.matmul(vf, inv)], dim=1)
        elif self.cin_eff > m:
            q = torch.cat([q, -2 * torch.matmul(inv, vf)], dim=2)
        return q.reshape(h, w // 2 + 1, self.out_channels, self.cin_eff)

    def circular_kernel(self, h: int, w: int) -> torch.Tensor:
        """Materialised spatial kernel (c_out, c_in_eff, h, w) with `y = sum_t K[t] x[n + t]`."""
        q = self.orthogonal_matrices(h, w).permute(2, 3, 0, 1)
        rev = torch.fft.irfft2(q, s=(h, w))  # = K[-t]
        return torch.roll(rev.flip(-2, -1), shifts=(1, 1), dims=(-2, -1))

    # -- forward ------------------------------------------------------------------------
    def _cached_q(self, h: int, w: int) -> torch.Tensor | None:
        key = (h, w, self.weight.dtype, self.weight.device, self.weight._version, id(self.weight))
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        nbytes = h * (w // 2 + 1) * self.out_channels * self.cin_eff * 16
        if self.weight.dtype != torch.float64:
            nbytes //= 2
        if self.cache_entries < 1 or nbytes > self.cache_bytes:
            return None
        with torch.no_grad():
            q = self.orthogonal_matrices(h, w).reshape(-1, self.out_channels, self.cin_eff)
        total = nbytes
        for v in self._cache.values():
            total += v.numel() * v.element_size()
        while self._cache and (len(self._cache) >= self.cache_entries or total > self.cache_bytes):
            _, old = self._cache.popitem(last=False)
            total -= old.numel() * old.element_size()
        self._cache[key] = q
        return q

    def train(self, mode: bool = True) -> OrthConv2d:
        if mode:  # weights are about to change: free the cached Q
            self._cache.clear()
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"OrthConv2d expects (N, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        x = space_to_depth(x, self.stride)
        n, c, h, w = x.shape
        wf = w // 2 + 1
        xf = torch.fft.rfft2(x.to(self.weight.dtype))
        xr = xf.permute(2, 3, 1, 0).reshape(h * wf, c, n).contiguous()  # (F, c_in, N)
        q = None if self.training else self._cached_q(h, w)
        yr = torch.matmul(q, xr) if q is not None else self._apply_cayley(xr, h, w)
        if self.bias is not None:  # a constant map is the DC bin times h*w: no extra pass
            yr[0] += (self.bias * (h * w)).to(yr.dtype)[:, None]  # yr is fresh: in place is safe
        yf = yr.reshape(h, wf, self.out_channels, n).permute(3, 2, 0, 1)
        return torch.fft.irfft2(yf, s=(h, w))

    def _apply_cayley(self, xr: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """`Q x` without forming Q: one LU of M = I + A per frequency, batch as right-hand sides."""
        mat, vf = self.spectrum(h, w)
        m = self.m
        if self.out_channels > m:  # tall: y = [2z - x; -2 V z], z = M^{-1} x
            z = _SolveLU.apply(mat, xr)
            return torch.cat([2 * z - xr, -2 * torch.matmul(vf, z)], dim=1)
        if self.cin_eff > m:  # wide: y = 2 M^{-1} (x1 - V x2) - x1
            x1, x2 = xr[:, :m], xr[:, m:]
            z = _SolveLU.apply(mat, x1 - torch.matmul(vf, x2))
            return 2 * z - x1
        return 2 * _SolveLU.apply(mat, xr) - xr
