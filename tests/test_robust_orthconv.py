"""OrthConv2d: norm preservation, equality with a direct circular convolution, gradients, cache."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from benchmark.robust.orthconv import OrthConv2d, space_to_depth

pytestmark = pytest.mark.usefixtures("one_thread")


def _structured(kind: str, c: int, h: int, w: int) -> torch.Tensor:
    ii, jj = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    if kind == "constant":
        img = torch.ones(h, w)
    elif kind == "checker":  # Nyquist frequency, where rfft's conjugate symmetry is delicate
        img = ((ii + jj) % 2).float() * 2 - 1
    elif kind == "impulse":
        img = torch.zeros(h, w)
        img[h // 3, w // 2] = 1.0
    else:  # "wave": one oblique frequency
        img = torch.cos(2 * math.pi * (2 * ii / h + 3 * jj / w))
    scales = torch.arange(1, c + 1, dtype=torch.float32)[:, None, None]
    return (img[None] * scales)[None].repeat(2, 1, 1, 1)


def _roll_conv(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """y[o, n] = sum_{c, t} K[o, c, t] x[c, n + t] with circular indices, by explicit rolls."""
    out = torch.zeros(x.shape[0], kernel.shape[0], *x.shape[-2:], dtype=x.dtype)
    for th in range(kernel.shape[-2]):
        for tw in range(kernel.shape[-1]):
            shifted = torch.roll(x, shifts=(-th, -tw), dims=(-2, -1))
            out += torch.einsum("oc,bchw->bohw", kernel[:, :, th, tw], shifted)
    return out


SHAPES = [  # (c_in, c_out, k, stride, h, w); c_out >= c_in * stride^2: norm-preserving
    (4, 4, 3, 1, 8, 8),
    (3, 8, 3, 1, 9, 6),
    (2, 8, 3, 2, 7, 12),
    (2, 18, 5, 3, 10, 5),
    (5, 5, 4, 1, 6, 11),
    (3, 16, 3, 2, 16, 16),
]


@pytest.mark.parametrize(("ci", "co", "k", "s", "h", "w"), SHAPES)
@pytest.mark.parametrize("kind", ["random", "constant", "checker", "impulse", "wave"])
def test_norm_preserved_float32(ci, co, k, s, h, w, kind):
    torch.manual_seed(h * w + co)
    layer = OrthConv2d(ci, co, k, s, bias=False)
    x = torch.randn(2, ci, h, w) if kind == "random" else _structured(kind, ci, h, w)
    with torch.no_grad():
        for mode in (True, False):  # solve path and cached-Q path
            y = layer.train(mode)(x)
            assert y.shape == (2, co, -(-h // s), -(-w // s))
            rel = abs(float(y.double().norm() / x.double().norm()) - 1.0)
            assert rel < 1e-5, (mode, rel)


def test_norm_error_scales_with_precision():
    torch.manual_seed(1)
    layer = OrthConv2d(16, 16, 3).double()
    x = torch.randn(3, 16, 12, 10, dtype=torch.float64)
    with torch.no_grad():
        y = layer(x) - layer.bias[:, None, None]
    assert abs(float(y.norm() / x.norm()) - 1) < 1e-12


@pytest.mark.parametrize(("ci", "co", "s"), [(8, 3, 1), (4, 6, 2)])
def test_wide_layer_is_non_expansive_not_isometric(ci, co, s):
    torch.manual_seed(2)
    layer = OrthConv2d(ci, co, 3, s, bias=False).double()
    ratios = []
    with torch.no_grad():
        for _ in range(5):
            x = torch.randn(2, ci, 8, 6, dtype=torch.float64)
            ratios.append(float(layer(x).norm() / x.norm()))
    assert max(ratios) <= 1 + 1e-12
    assert min(ratios) < 0.99  # it really drops energy: c_out < c_in * s^2


@pytest.mark.parametrize(("ci", "co", "k", "s", "h", "w"), SHAPES[:4] + [(6, 3, 3, 1, 7, 5)])
def test_matches_direct_circular_convolution(ci, co, k, s, h, w):
    torch.manual_seed(3)
    layer = OrthConv2d(ci, co, k, s).double()
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(2, ci, h, w, dtype=torch.float64)
    xs = space_to_depth(x, s)
    kernel = layer.circular_kernel(*xs.shape[-2:])
    expected = _roll_conv(xs, kernel) + layer.bias[:, None, None]
    with torch.no_grad():
        got = layer(x)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


def test_materialised_operator_is_orthogonal_and_kernel_is_real():
    """Build the whole operator from the spatial kernel (no FFT): Q^T Q must be the identity."""
    torch.manual_seed(4)
    layer = OrthConv2d(2, 3, 3).double()
    h, w = 4, 5
    kernel = layer.circular_kernel(h, w)
    assert kernel.dtype == torch.float64
    eye = torch.eye(2 * h * w, dtype=torch.float64).reshape(-1, 2, h, w)
    cols = _roll_conv(eye, kernel).reshape(2 * h * w, -1).T  # (3hw, 2hw)
    torch.testing.assert_close(cols.T @ cols, torch.eye(2 * h * w, dtype=torch.float64))
    # and the operator is a real convolution that is *not* trivial (not a permutation)
    assert (cols.abs() > 1e-3).sum() > 3 * 2 * h * w


@pytest.mark.parametrize(
    ("ci", "co", "s", "h", "w"),
    [(2, 3, 1, 4, 5), (3, 2, 1, 5, 4), (1, 5, 2, 4, 5), (2, 2, 1, 6, 6)],
)
def test_gradcheck_float64(ci, co, s, h, w):
    """Odd and even widths: only an even width has a Nyquist column in the rfft spectrum."""
    torch.manual_seed(5)
    layer = OrthConv2d(ci, co, 3, s).double()
    x = torch.randn(2, ci, h, w, dtype=torch.float64, requires_grad=True)

    def fn(inp, weight, bias):
        return torch.func.functional_call(layer, {"weight": weight, "bias": bias}, (inp,))

    w = layer.weight.detach().clone().requires_grad_(True)
    b = layer.bias.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(fn, (x, w, b), eps=1e-6, atol=1e-6)


def test_cached_eval_equals_training_path_and_keeps_input_gradient():
    torch.manual_seed(6)
    layer = OrthConv2d(6, 8, 3, cache_entries=1)
    x = torch.randn(3, 6, 10, 9, requires_grad=True)
    y_train = layer.train()(x)
    (g_train,) = torch.autograd.grad(y_train.square().sum(), x)
    layer.eval()
    y_eval = layer(x)
    assert len(layer._cache) == 1
    (g_eval,) = torch.autograd.grad(y_eval.square().sum(), x)
    torch.testing.assert_close(y_eval, y_train, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_eval, g_train, rtol=1e-4, atol=1e-4)
    layer(torch.randn(1, 6, 5, 7))  # another size: the one-entry cache evicts
    assert len(layer._cache) == 1


def test_cache_sees_weight_updates_and_respects_byte_bound():
    torch.manual_seed(7)
    layer = OrthConv2d(4, 4, 3).eval()
    x = torch.randn(1, 4, 8, 8)
    y0 = layer(x)
    with torch.no_grad():
        layer.weight.mul_(3.0)  # in-place update bumps the version: the cached Q is stale
    y1 = layer(x)
    y_ref = layer.train()(x)
    torch.testing.assert_close(y1, y_ref, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(y0, y1)
    tiny = OrthConv2d(4, 4, 3, cache_bytes=16).eval()
    tiny(x)
    assert len(tiny._cache) == 0


def test_weight_gradient_reaches_every_parameter():
    torch.manual_seed(8)
    layer = OrthConv2d(3, 7, 3, 2)
    x = torch.randn(2, 3, 9, 8)
    layer(x).sin().sum().backward()
    assert torch.isfinite(layer.weight.grad).all() and layer.weight.grad.abs().sum() > 0
    assert layer.bias.grad.abs().sum() > 0


_AFTER_SET_NUM_THREADS = """
import torch
torch.set_num_threads(2)  # what --threads does; it breaks oneMKL's batched getrf (linalg.py)
from benchmark.robust.linalg import inverse_checked
from benchmark.robust.orthconv import OrthConv2d
torch.manual_seed(0)
a = torch.randn(6, 192, 192, dtype=torch.float64)
m = torch.eye(192, dtype=torch.float64) + 0.1 * (a - a.mT)
print("inverse", float((m @ inverse_checked(m) - torch.eye(192, dtype=torch.float64)).abs().max()))
layer = OrthConv2d(192, 192, 3)  # a 4x4 input: 12 frequency matrices of 192 x 192
x = torch.randn(2, 192, 4, 4)
for mode in (True, False):
    y = layer.train(mode)(x)
    print("norm", mode, float((y.norm() / x.norm() - 1).abs()))
"""


def test_factorisation_is_right_after_set_num_threads_which_breaks_batched_lu():
    """In a fresh process (the failure is process-wide): inverse and orthogonality hold."""
    out = subprocess.run(
        [sys.executable, "-c", _AFTER_SET_NUM_THREADS],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    values = {
        " ".join(line.split()[:-1]): float(line.split()[-1])
        for line in out.splitlines()
        if line.startswith(("inverse", "norm"))
    }
    assert values["inverse"] < 1e-10
    assert values["norm True"] < 1e-5 and values["norm False"] < 1e-5


def test_invalid_pivots_raise_a_clear_error_instead_of_a_wrong_result(monkeypatch):
    real = torch.linalg.lu_factor_ex

    def broken(a, **kw):
        lu, piv, info = real(a, **kw)
        return lu, torch.zeros_like(piv), info

    monkeypatch.setattr(torch.linalg, "lu_factor_ex", broken)
    layer = OrthConv2d(4, 4, 3).eval()
    with pytest.raises(FloatingPointError, match="invalid pivots"):
        layer(torch.randn(1, 4, 8, 8))


def test_single_threaded_mkl_solve_is_bit_identical_and_restores_the_thread_setting():
    import ctypes
    import os

    from benchmark.robust.linalg import lu_factor_checked, lu_solve_cpu, mkl_one_thread

    torch.manual_seed(5)
    a = torch.randn(40, 12, 12, dtype=torch.complex64)
    m = torch.eye(12, dtype=torch.complex64) + a - a.mH
    b = torch.randn(40, 12, 3, dtype=torch.complex64)
    lu, piv = lu_factor_checked(m)
    for adjoint in (False, True):
        ours = lu_solve_cpu(lu, piv, b, adjoint=adjoint)
        assert torch.equal(ours, torch.linalg.lu_solve(lu, piv, b, adjoint=adjoint))
    threads = torch.get_num_threads()
    if not torch.backends.mkl.is_available():
        return
    lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
    lib.MKL_Get_Max_Threads.restype = ctypes.c_int
    before = lib.MKL_Get_Max_Threads()
    with mkl_one_thread():
        assert lib.MKL_Get_Max_Threads() == 1
    assert lib.MKL_Get_Max_Threads() == before and torch.get_num_threads() == threads
