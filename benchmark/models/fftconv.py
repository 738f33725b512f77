"""2-D convolution through the FFT, for float64 on the CPU, where PyTorch's own is slow.

pyiqa computes SSIM, SSIM-C and MS-SSIM in float64 (the variance terms cancel badly in
float32), and PyTorch's CPU float64 convolution takes its unvectorised im2col path; the FFT
is an order of magnitude faster there (docs/speed.md), agreeing to float64 rounding (about
1e-15 of the signal's size; tested forward and backward against `F.conv2d`). `fast_float64_conv()` reroutes only those calls, only inside its `with` block,
so the metrics keep their own code and their float64 precision.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import scipy.fft
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

MIN_TAPS = 9  # a 1x1 or 1x2 kernel is a matrix product, which PyTorch does well already


def _pair(v: int | tuple[int, ...] | list[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    if len(v) == 1:
        return int(v[0]), int(v[0])
    return int(v[0]), int(v[1])


def _padding(
    padding: str | int | tuple[int, ...], kernel: tuple[int, int]
) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) zeros, as F.conv2d pads ('same' puts an odd one right)."""
    if padding == "valid":
        return 0, 0, 0, 0
    if padding == "same":
        th, tw = kernel[0] - 1, kernel[1] - 1
        return tw // 2, tw - tw // 2, th // 2, th - th // 2
    ph, pw = _pair(padding)  # type: ignore[arg-type]
    return pw, pw, ph, ph


def _as_numpy(t: torch.Tensor) -> Any:
    """A view for scipy; lazy conjugate/negative views (autograd makes them) are resolved."""
    return t.detach().resolve_conj().resolve_neg().numpy()


def _mirrored(w: int, wf: int) -> slice:
    """Columns of a one-sided spectrum that stand for two columns of the full one."""
    return slice(1, wf - 1 if w % 2 == 0 else wf)


class _RFFT2(torch.autograd.Function):
    """`rfft2` over the last two axes by scipy's pocketfft on one worker.

    torch's CPU FFT (oneMKL) rounds an ulp differently with the thread count, and a Ray worker
    (one thread) must score exactly as a local run (two). Pinning torch to one thread around
    each transform fixed that, but any `torch.set_num_threads` call breaks oneMKL's batched
    LU for the rest of the process (`benchmark/robust/linalg.py`); a single-worker pocketfft
    is thread-count invariant and touches no global state. The backward is the adjoint,
    built from the same two functions.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.w = x.shape[-1]
        out = scipy.fft.rfft2(_as_numpy(x), axes=(-2, -1), workers=1)
        return torch.from_numpy(out)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        h, wf, w = g.shape[-2], g.shape[-1], ctx.w
        g = g.clone()
        g[..., _mirrored(w, wf)] *= 0.5  # irfft2 counts these twice (Hermitian extension)
        return _IRFFT2.apply(g, w) * (h * w)


class _IRFFT2(torch.autograd.Function):
    """`irfft2` to width `w` over the last two axes, pocketfft on one worker (see `_RFFT2`)."""

    @staticmethod
    def forward(ctx, spec: torch.Tensor, w: int) -> torch.Tensor:  # type: ignore[override]
        h = spec.shape[-2]
        ctx.wf = spec.shape[-1]
        out = scipy.fft.irfft2(_as_numpy(spec), s=(h, w), axes=(-2, -1), workers=1)
        return torch.from_numpy(out)

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        h, w = g.shape[-2:]
        spec = _RFFT2.apply(g) / (h * w)  # a fresh tensor: scaled in place below
        spec[..., _mirrored(w, ctx.wf)] *= 2
        return spec, None


def conv2d_fft(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, ...] = 1,
    padding: str | int | tuple[int, ...] = 0,
    dilation: int | tuple[int, ...] = 1,
    groups: int = 1,
) -> torch.Tensor:
    """`F.conv2d` (cross-correlation, zero padding) computed as a product of spectra.

    Circular convolution over the padded input's own size: the outputs kept are exactly
    those whose window never wraps around, so no extra padding is needed.
    """
    if input.ndim != 4 or weight.ndim != 4:
        raise ValueError(
            f"conv2d_fft needs 4-D input and weight, got {input.ndim}-D, {weight.ndim}-D"
        )
    n, c_in, _, _ = input.shape
    c_out, c_in_g, kh, kw = weight.shape
    if c_in != c_in_g * groups or c_out % groups:
        raise ValueError(
            f"weight {tuple(weight.shape)} with groups={groups} does not fit {c_in} input channels"
        )
    sh, sw = _pair(stride)
    dh, dw = _pair(dilation)
    if (dh, dw) != (1, 1):  # a dilated kernel is the kernel with zeros between its taps
        dilated = weight.new_zeros(c_out, c_in_g, dh * (kh - 1) + 1, dw * (kw - 1) + 1)
        dilated[..., ::dh, ::dw] = weight
        weight, (kh, kw) = dilated, dilated.shape[-2:]
    left, right, top, bottom = _padding(padding, (kh, kw))  # of the dilated kernel
    x = F.pad(input, (left, right, top, bottom)) if left or right or top or bottom else input
    h, w = x.shape[-2:]
    if kh > h or kw > w:
        raise ValueError(f"kernel {kh}x{kw} is larger than the padded input {h}x{w}")
    spec_x = _RFFT2.apply(x)
    kernel = F.pad(torch.flip(weight, dims=(-2, -1)), (0, w - kw, 0, h - kh))
    spec_k = _RFFT2.apply(kernel)
    c_out_g = c_out // groups
    fh, fw = spec_x.shape[-2:]
    spec_x = spec_x.reshape(n, groups, c_in_g, fh, fw)
    spec_k = spec_k.reshape(groups, c_out_g, c_in_g, fh, fw)
    if c_in_g == 1:  # depthwise (the filters of SSIM-like metrics): a broadcast product
        spec_y = spec_x * spec_k.squeeze(2).unsqueeze(0)
    else:
        spec_y = torch.einsum("ngchw,gochw->ngohw", spec_x, spec_k)
    y = _IRFFT2.apply(spec_y.reshape(n, c_out, fh, fw), w)
    y = y[..., kh - 1 :: sh, kw - 1 :: sw]
    if bias is not None:
        y = y + bias.view(1, -1, 1, 1)
    return y


def _rerouted(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    x = args[0] if args else kwargs.get("input")
    w = args[1] if len(args) > 1 else kwargs.get("weight")
    return (
        isinstance(x, torch.Tensor)
        and isinstance(w, torch.Tensor)
        and x.dtype == torch.float64
        and w.dtype == torch.float64
        and x.device.type == "cpu"
        and w.device == x.device
        and x.ndim == 4
        and w.ndim == 4
        and w.shape[-2] * w.shape[-1] >= MIN_TAPS
    )


class _Float64ConvMode(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        if func is F.conv2d and _rerouted(args, kwargs):
            return conv2d_fft(*args, **kwargs)
        return func(*args, **kwargs)


@contextlib.contextmanager
def fast_float64_conv() -> Iterator[None]:
    """Inside the block, float64 CPU `F.conv2d` calls run as `conv2d_fft`; all else as usual."""
    with _Float64ConvMode():
        yield
