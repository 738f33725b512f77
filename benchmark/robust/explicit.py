"""Orthogonal convolution with an explicit k x k kernel (BCOP with exact Cayley projectors).

Why a second orthogonal convolution: `OrthConv2d` works in the Fourier domain, so even with
its cached Q every inference pays two FFTs and a per-frequency matrix product. Here the
layer's operator is an ordinary `F.conv2d` with a small kernel that is orthogonal by
construction, so inference costs what the base model's convolution costs.

Construction (Li et al. 2019, "Preventing gradient attenuation in Lipschitz constrained
convolutional networks", BCOP; the block-convolution view of Boissin et al. 2025, AOC): a
kernel is a matrix polynomial `K(z1, z2) = sum_t K[t] z^t`, and composing two convolutions
multiplies their polynomials. With an orthogonal projector `P` (`P = P^T = P^2`),
`P + (I - P) z` is unitary on the unit circle, i.e. the 1x2 (or 2x1) convolution
`[P, I - P]` is orthogonal on every torus. `k - 1` horizontal and `k - 1` vertical such
steps make a k x k orthogonal convolution; a 1x1 (semi-)orthogonal head `H` fixes the
channel counts:

- `c_out >= c_in`: `K = B_1 ... B_{k-1} H` with `H` (c_out x c_in) of orthonormal columns:
  an isometry (norm-preserving) under circular padding.
- `c_out < c_in`: `K = H B_1 ... B_{k-1}` with `H` of orthonormal rows: non-expansive.

The projectors are `P = Q Q^T` with `Q` (c x c/2) from the block Cayley transform
(`cayley_semi_orthogonal`), so they are exact projectors to float rounding; the package
`orthogonium` (AOC) gets its projectors from a power iteration plus 12 Björck steps, which
we measured (orthogonium 0.0.4, a scratch check of the explicit kernel's per-frequency
singular values on a 16 x 16 torus) to stop short of orthogonality when a generator column is
short (smallest singular value 0.970, largest 1.000001) and to change the kernel on every
call (the power iteration's state is updated in the forward pass; 2.8e-7 between two calls),
hence this implementation.

Stride `s` folds s x s blocks into channels first (`space_to_depth`, an isometry), exactly as
`OrthConv2d` does, so the two layers have the same shapes and the same kernel support.
Zero padding (`padding_mode="zeros"`) restricts the circular operator to a window: still
non-expansive, no longer exactly orthogonal at the border.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.robust.layers import cayley_semi_orthogonal
from benchmark.robust.orthconv import space_to_depth

__all__ = ["ExplicitOrthConv2d", "circular_pad"]


class _CircularPad(torch.autograd.Function):
    """`F.pad(x, (p,) * 4, mode="circular")` with a backward that copies the gradient once.

    Why: autograd's backward of circular padding zero-fills and copies slice by slice; for
    a 16 x 64 x 128 x 128 input it cost more than the convolution's own backward (profiled
    with torch.profiler). Here: the interior once, then the 8 border blocks added in place.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: int) -> torch.Tensor:  # type: ignore[override]
        ctx.p = p
        return F.pad(x, (p, p, p, p), mode="circular")

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        p = ctx.p
        h, w = g.shape[-2] - 2 * p, g.shape[-1] - 2 * p
        gx = g[..., p : p + h, p : p + w].clone()
        # (slice of the padded gradient, slice of the input it wraps onto) per axis
        rows = [(slice(0, p), slice(h - p, h)), (slice(p, p + h), slice(0, h)),
                (slice(p + h, h + 2 * p), slice(0, p))]  # fmt: skip
        cols = [(slice(0, p), slice(w - p, w)), (slice(p, p + w), slice(0, w)),
                (slice(p + w, w + 2 * p), slice(0, p))]  # fmt: skip
        for i, (gr, xr) in enumerate(rows):
            for j, (gc, xc) in enumerate(cols):
                if i != 1 or j != 1:
                    gx[..., xr, xc] += g[..., gr, gc]
        return gx, None


def circular_pad(x: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """Circular padding of the last two axes, also when the pad exceeds the input size."""
    h, w = x.shape[-2:]
    if before == after and 0 < before <= min(h, w):
        return _CircularPad.apply(x, before)
    if max(before, after) <= min(h, w):
        return F.pad(x, (before, after, before, after), mode="circular")
    # tile enough copies, then cut the window that starts `before` elements early
    reps_h = -(-(before + after + h) // h) + 1
    reps_w = -(-(before + after + w) // w) + 1
    tiled = x.repeat(*([1] * (x.dim() - 2)), reps_h, reps_w)
    oh, ow = (-before) % h, (-before) % w
    return tiled[..., oh : oh + h + before + after, ow : ow + w + before + after]


class ExplicitOrthConv2d(nn.Module):
    """Orthogonal (c_out >= c_in * stride^2) or non-expansive 2-D conv with an explicit kernel.

    Same interface and output size (`ceil(H / stride)`) as `OrthConv2d`. Parameters:
    `weight` (c_out, c_in * stride^2) generates the 1x1 head; its shape is the layer's width,
    which pruning and the checkpoint loader read. `proj` (2 (taps - 1), c, c // 2) generates
    the projectors, `c = max(c_out, c_in * stride^2)`. In eval mode the kernel is cached
    (detached: inputs still get gradients, weights do not), so inference is one `F.conv2d`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        bias: bool = True,
        padding_mode: str = "circular",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if min(in_channels, out_channels, kernel_size, stride) < 1:
            raise ValueError(
                "ExplicitOrthConv2d: channels, kernel_size and stride must be positive"
            )
        if padding_mode not in ("circular", "zeros"):
            raise ValueError(
                f"ExplicitOrthConv2d: padding_mode {padding_mode!r} not circular/zeros"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding_mode = padding_mode
        self.taps = kernel_size + (1 - kernel_size % 2)  # odd support, centred (as OrthConv2d)
        self.cin_eff = in_channels * stride * stride
        self.width = max(self.cin_eff, out_channels)
        self.rank = max(1, self.width // 2)
        kw = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_channels, self.cin_eff, **kw))
        self.proj = nn.Parameter(torch.empty(2 * (self.taps - 1), self.width, self.rank, **kw))
        self.bias = nn.Parameter(torch.zeros(out_channels, **kw)) if bias else None
        self._cache: tuple[tuple, torch.Tensor] | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Random projectors and a head near the identity; orthogonal for any values."""
        with torch.no_grad():
            nn.init.uniform_(
                self.weight, -0.5 / math.sqrt(self.cin_eff), 0.5 / math.sqrt(self.cin_eff)
            )
            nn.init.normal_(self.proj, std=1.0 / math.sqrt(self.width))
            if self.bias is not None:
                self.bias.zero_()
        self._cache = None

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, bias={self.bias is not None}, padding_mode={self.padding_mode}"
        )

    # -- kernel -------------------------------------------------------------------------
    def head(self) -> torch.Tensor:
        """The 1x1 (semi-)orthogonal head, (c_out, c_in_eff)."""
        return cayley_semi_orthogonal(self.weight)

    def projectors(self) -> torch.Tensor:
        """Orthogonal projectors `Q Q^T`, (2 (taps - 1), c, c)."""
        q = cayley_semi_orthogonal(self.proj)
        return q @ q.mT

    def kernel(self) -> torch.Tensor:
        """The explicit kernel (c_out, c_in_eff, taps, taps) for `F.conv2d` (cross-correlation)."""
        h = self.head()
        steps = self.taps - 1
        if steps == 0:
            return h[:, :, None, None].contiguous()
        p = self.projectors()
        c = self.width
        eye = torch.eye(c, dtype=p.dtype, device=p.device)
        tall = self.out_channels >= self.cin_eff
        # Polynomial in (z1, z2) with matrix coefficients, (c, c, a, b); the product with a
        # block [P, I - P] along an axis is K[t] P + K[t - e] (I - P) (no flips).
        k = eye[:, :, None, None]
        for i in range(steps):
            for axis, pr in ((3, p[2 * i]), (2, p[2 * i + 1])):
                a = torch.einsum("ijab,jk->ikab", k, pr)
                b = torch.einsum("ijab,jk->ikab", k, eye - pr)
                pad_a = (0, 1, 0, 0) if axis == 3 else (0, 0, 0, 1)
                pad_b = (1, 0, 0, 0) if axis == 3 else (0, 0, 1, 0)
                k = F.pad(a, pad_a) + F.pad(b, pad_b)
        # tall: K = B ... B H (orthonormal columns); wide: K = H B ... B (orthonormal rows)
        k = torch.einsum("ijab,jk->ikab", k, h) if tall else torch.einsum("ij,jkab->ikab", h, k)
        return k.contiguous()  # einsum's strides sent the conv's backward down a slow path

    def _cached_kernel(self) -> torch.Tensor:
        params = [self.weight, self.proj]
        key = tuple((id(p), p._version, p.dtype, p.device) for p in params)
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (key, self.kernel())
        return self._cache[1]

    def train(self, mode: bool = True) -> ExplicitOrthConv2d:
        if mode:  # weights are about to change: free the cached kernel
            self._cache = None
        return super().train(mode)

    # -- forward ------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"ExplicitOrthConv2d expects (N, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        x = space_to_depth(x, self.stride)
        k = self._cached_kernel() if not self.training else self.kernel()
        k = k.to(x.dtype)
        pad = self.taps // 2
        if self.padding_mode == "zeros":
            return F.conv2d(x, k, self.bias, padding=pad)
        return F.conv2d(circular_pad(x, pad, pad), k, self.bias)
