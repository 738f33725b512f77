"""The FFT convolution that pyiqa's float64 metrics run through: same numbers, same gradients."""

from __future__ import annotations

import contextlib
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from benchmark.models import fftconv
from benchmark.models.fftconv import _IRFFT2, _RFFT2, conv2d_fft, fast_float64_conv
from benchmark.models.pyiqa_adapter import pyiqa_metric
from benchmark.models.registry import create_model

# (n, c_in, h, w, c_out, groups, kernel, stride, padding, dilation, bias)
CASES = [
    (2, 3, 17, 23, 6, 1, (3, 3), 1, 0, 1, True),
    (2, 4, 20, 20, 4, 4, (11, 11), 1, 0, 1, False),  # SSIM's depthwise Gaussian
    (1, 4, 20, 21, 8, 2, (5, 3), 2, 2, 1, True),
    (2, 2, 19, 16, 2, 2, (3, 5), 1, "same", 2, False),
    (3, 1, 30, 30, 1, 1, (7, 7), 1, "valid", 1, False),
    (2, 6, 15, 15, 12, 3, (4, 4), (2, 1), (1, 2), (1, 2), True),
    (1, 2, 12, 12, 2, 1, (4, 4), 1, "same", 1, False),  # even kernel: odd padding goes right
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"k{c[6]}-s{c[7]}-p{c[8]}-d{c[9]}-g{c[5]}")
def test_fft_convolution_equals_conv2d_forward_and_backward(case: tuple) -> None:
    n, c_in, h, w, c_out, groups, kernel, stride, padding, dilation, with_bias = case
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, c_in, h, w, dtype=torch.float64, generator=g, requires_grad=True)
    wt = torch.randn(c_out, c_in // groups, *kernel, dtype=torch.float64, generator=g)
    wt.requires_grad_(True)
    bias = torch.randn(c_out, dtype=torch.float64, generator=g) if with_bias else None
    args = (bias, stride, padding, dilation, groups)
    even_same = padding == "same" and kernel[0] % 2 == 0  # PyTorch warns about its copy
    with pytest.warns(UserWarning) if even_same else contextlib.nullcontext():
        direct = F.conv2d(x, wt, *args)
    fft = conv2d_fft(x, wt, *args)
    assert fft.shape == direct.shape
    scale = direct.abs().max()
    assert (fft - direct).abs().max() <= 1e-12 * scale
    grad_out = torch.randn(direct.shape, dtype=torch.float64, generator=g)
    for a, b in zip(
        torch.autograd.grad(direct, (x, wt), grad_out),
        torch.autograd.grad(fft, (x, wt), grad_out),
        strict=True,
    ):
        assert (a - b).abs().max() <= 1e-12 * a.abs().max()


def test_channel_mismatch_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="does not fit 3 input channels"):
        conv2d_fft(torch.zeros(1, 3, 8, 8), torch.zeros(2, 2, 3, 3))


def test_only_float64_cpu_convolutions_are_rerouted() -> None:
    x64 = torch.rand(1, 1, 16, 16, dtype=torch.float64)
    w64 = torch.rand(1, 1, 5, 5, dtype=torch.float64)
    with mock.patch.object(fftconv, "conv2d_fft", wraps=fftconv.conv2d_fft) as spy:
        with fast_float64_conv():
            F.conv2d(x64, w64)
            F.conv2d(x64.float(), w64.float())  # float32: PyTorch's own (fast) kernel
            F.conv2d(x64, w64[..., :1, :1])  # 1x1: a matrix product already
            torch.nn.Conv2d(1, 1, 3, dtype=torch.float64)(x64)  # modules go through F.conv2d
        F.conv2d(x64, w64)  # outside the block: untouched
    assert spy.call_count == 2


@pytest.fixture(scope="module")
def photo_pairs() -> tuple[torch.Tensor, torch.Tensor]:
    """Two 192x192 photograph crops (MS-SSIM needs five scales) and noisy versions of them."""
    from skimage import data

    refs = [torch.from_numpy(im[:192, :192].copy()) for im in (data.astronaut(), data.coffee())]
    ref = torch.stack(refs).permute(0, 3, 1, 2).double() / 255
    g = torch.Generator().manual_seed(0)
    x = (ref + 0.05 * torch.randn(ref.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    return x.float(), ref.float()


@pytest.mark.parametrize("name", ["ssim", "ssimc", "ms_ssim", "cw_ssim", "vsi"])
def test_pyiqa_metrics_score_and_differentiate_as_pyiqa_itself(name: str, photo_pairs) -> None:
    """The adapter runs every pyiqa metric inside `fast_float64_conv`; its numbers must be
    pyiqa's own (the metric called directly, PyTorch's convolution)."""
    x, ref = photo_pairs
    outputs = []
    for score in (pyiqa_metric(name), create_model(name).score):
        xi = x.clone().requires_grad_(True)
        s = score(xi, ref).reshape(-1)
        (grad,) = torch.autograd.grad(s.sum(), xi)
        outputs.append((s.detach(), grad))
    (s0, g0), (s1, g1) = outputs
    assert torch.allclose(s0, s1, rtol=1e-10, atol=0)
    assert torch.allclose(g0, g1, rtol=1e-6, atol=1e-9 * g0.abs().max().item())


def test_result_does_not_depend_on_the_thread_count() -> None:
    """A Ray worker runs with one thread, a local run with several: same bits either way."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 5, 64, 64, dtype=torch.float64, generator=g)  # a size where it mattered
    w = torch.rand(5, 1, 11, 11, dtype=torch.float64, generator=g)
    before = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2, 4):
            torch.set_num_threads(threads)
            xg = x.clone().requires_grad_(True)
            y = conv2d_fft(xg, w, groups=5)
            (grad,) = torch.autograd.grad((y * y).sum(), xg)
            outs.append((y.detach(), grad))
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(outs[0][0], o[0]) for o in outs[1:])
    assert all(torch.equal(outs[0][1], o[1]) for o in outs[1:])
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("h,w", [(5, 6), (5, 7), (4, 4)])
def test_transforms_have_exact_first_and_second_derivatives(h, w) -> None:
    """The pocketfft transforms carry their own adjoints: checked numerically, twice over."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, h, w, dtype=torch.float64, generator=g, requires_grad=True)
    spec = torch.randn(2, h, w // 2 + 1, dtype=torch.complex128, generator=g, requires_grad=True)
    assert torch.allclose(_RFFT2.apply(x), torch.fft.rfft2(x), atol=1e-12)
    assert torch.allclose(_IRFFT2.apply(spec, w), torch.fft.irfft2(spec, s=(h, w)), atol=1e-12)
    lazy = spec.detach().conj()  # autograd hands such views to the backward
    assert torch.allclose(_IRFFT2.apply(lazy, w), torch.fft.irfft2(lazy, s=(h, w)), atol=1e-12)
    assert torch.autograd.gradcheck(_RFFT2.apply, (x,))
    assert torch.autograd.gradgradcheck(_RFFT2.apply, (x,))
    assert torch.autograd.gradcheck(lambda s: _IRFFT2.apply(s, w), (spec,))
    assert torch.autograd.gradgradcheck(lambda s: _IRFFT2.apply(s, w), (spec,))
