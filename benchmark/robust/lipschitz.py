"""Certified upper bound and empirical lower estimate of a model's L2 Lipschitz constant.

The bound follows the data flow of one real forward pass (a `TorchFunctionMode` sees every
torch op, functional ones inside `forward` included) and attaches to each tensor a bound on
`||t(x) - t(x')|| / ||x - x'||`. RobustBlocks contribute their exact constants (1 for
`OrthConv2d`, `MaxMin`, `SpaceToDepth`; |scale| for `OrthLinear`; the exact operator norm
of its actual kernel at the traced input size for `ExplicitOrthConv2d`, so float rounding in
its construction cannot slip under the bound), plain layers an exact
operator norm (linear: SVD; conv: per-frequency SVD of the zero-padded conv embedded in a
torus, an upper bound; power iteration would only give a lower estimate). An op without a
rule, a data-dependent branch (`.item()`, `bool(tensor)`) or an input-dependent weight
makes the bound unavailable (`None`) with the reason, never a guess.

The bound is for the map on whole tensors of `input_shape` (batch included; use batch 1 for a
per-image constant) with the module in eval mode.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from benchmark.robust.explicit import ExplicitOrthConv2d
from benchmark.robust.layers import GroupSort, OrthLinear, SpaceToDepth
from benchmark.robust.orthconv import OrthConv2d

__all__ = [
    "LipschitzReport",
    "circular_conv_norm",
    "conv2d_operator_bound",
    "empirical_lipschitz",
    "lipschitz_analysis",
    "lipschitz_upper_bound",
]

INF = math.inf

# Elementwise maps with a global Lipschitz constant.
_UNARY = {
    "relu": 1.0, "relu6": 1.0, "hardtanh": 1.0, "clamp": 1.0, "clip": 1.0, "abs": 1.0,
    "neg": 1.0, "negative": 1.0, "tanh": 1.0, "sigmoid": 0.25, "softplus": 1.0,
    "silu": 1.1, "gelu": 1.13, "hardsigmoid": 1.0 / 6.0, "hardswish": 1.5, "softsign": 1.0,
    "elu": 1.0, "celu": 1.0, "selu": 1.0507 * 1.6733, "mish": 1.09,
}  # fmt: skip
# Isometries or coordinate projections: the constant carries over unchanged.
_SAME = {
    "reshape", "view", "flatten", "squeeze", "unsqueeze", "permute", "transpose", "t",
    "contiguous", "clone", "detach", "to", "type", "float", "double", "view_as",
    "reshape_as", "unflatten", "movedim", "moveaxis", "swapaxes", "swapdims", "mT", "T",
    "mH", "H", "data", "narrow", "flip", "roll", "sort", "softmax", "amax", "amin",
    "pixel_unshuffle", "pixel_shuffle", "channel_shuffle", "split", "chunk", "unbind",
    "tensor_split", "diagonal", "select", "squeeze_", "unsqueeze_", "cpu", "cuda",
}  # fmt: skip
_BROADCAST = {"expand", "expand_as", "repeat", "broadcast_to", "tile", "repeat_interleave"}
_ADDITIVE = {"add", "sub", "rsub", "radd", "iadd", "isub"}
_SCALING = {"mul", "rmul", "imul", "div", "truediv", "itruediv", "divide", "multiply"}
_MINMAX = {"max", "min", "maximum", "minimum", "fmax", "fmin"}
_META_OUT = {"item", "tolist", "bool", "float_", "int", "index", "numpy", "nonzero", "any", "all"}


@dataclass
class LipschitzReport:
    """`bound` is None when any op on the input-to-output path has no certified constant."""

    bound: float | None
    reasons: list[str] = field(default_factory=list)
    factors: list[tuple[str, float]] = field(default_factory=list)


def _name(func: Any) -> str:
    name = getattr(func, "__name__", str(func))
    if name == "__get__":  # property getter, e.g. Tensor.mT
        name = getattr(getattr(func, "__self__", None), "__name__", name)
    name = name.strip("_")
    if name.startswith(("r", "i")) and name[1:] in {"add", "sub", "mul", "truediv", "matmul"}:
        return name
    return name[:-1] if name.endswith("_") else name


def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors(o)]
    return []


def _pair(v: Any, n: int = 2) -> tuple[int, ...]:
    if isinstance(v, int):
        return (v,) * n
    return tuple(int(a) for a in v)


def _arg(args: Sequence[Any], kwargs: dict[str, Any], i: int, name: str, default: Any) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[i] if len(args) > i else default


def _window_multiplicity(k: int, s: int, d: int = 1) -> int:
    """Max number of pooling windows (kernel k, stride s, dilation d) sharing one element."""
    return max(1, min(k, math.ceil((d * (k - 1) + 1) / s)))


def _adaptive_windows(size: int, out: int) -> list[tuple[int, int]]:
    return [((i * size) // out, -((-(i + 1) * size) // out)) for i in range(out)]


def _spectral_norm(mat: torch.Tensor) -> float:
    """Largest singular value over a batch of matrices, in float64."""
    mat = mat.detach().to(torch.complex128 if mat.is_complex() else torch.float64)
    if mat.dim() == 1:
        return float(mat.abs().pow(2).sum().sqrt())
    return float(torch.linalg.matrix_norm(mat, ord=2).max())


def conv2d_operator_bound(
    weight: torch.Tensor,
    input_hw: tuple[int, int],
    padding: tuple[int, int] = (0, 0),
    dilation: tuple[int, int] = (1, 1),
    groups: int = 1,
) -> float:
    """Upper bound on the L2 norm of a zero-padded 2-D conv (any stride) on `input_hw` inputs.

    Zero padding embeds the input isometrically in a torus of size `in + 2 pad` on which the
    valid outputs of the circular conv are exactly the conv's outputs (stride only drops
    some), so `||conv|| <= ||circular conv|| = max_f sigma_max(W_hat(f))`, computed exactly.
    """
    w = weight.detach().to(torch.float64)
    co, cig, kh, kw = w.shape
    n = [
        max(input_hw[i] + 2 * padding[i], dilation[i] * (k - 1) + 1) for i, k in enumerate((kh, kw))
    ]
    dil = torch.zeros(co, cig, n[0], n[1], dtype=torch.float64, device=w.device)
    dil[
        :, :, : dilation[0] * (kh - 1) + 1 : dilation[0], : dilation[1] * (kw - 1) + 1 : dilation[1]
    ] = w
    spec = torch.fft.rfft2(dil)  # (co, cig, n0, n1//2+1)
    spec = (
        spec.reshape(groups, co // groups, cig, -1)
        .permute(0, 3, 1, 2)
        .reshape(-1, co // groups, cig)
    )
    return _max_singular_value(spec)


def _max_singular_value(spec: torch.Tensor) -> float:
    """Largest singular value over a batch (F, a, b) of complex matrices, in chunks."""
    best = 0.0
    for chunk in spec.split(4096):
        small = chunk if chunk.shape[-2] <= chunk.shape[-1] else chunk.mH
        gram = small @ small.mH
        best = max(best, float(torch.linalg.eigvalsh(gram)[..., -1].clamp_min(0).max().sqrt()))
    return best


def circular_conv_norm(weight: torch.Tensor, input_hw: tuple[int, int]) -> float:
    """Exact L2 norm of the circular conv with `weight` (co, ci, kh, kw) on an `input_hw` torus.

    Taps that wrap around a torus smaller than the kernel are summed (that is what the
    circular conv computes); where the taps sit does not change the singular values.
    """
    w = weight.detach().to(torch.float64)
    co, ci, kh, kw = w.shape
    h, wd = input_hw
    torus = torch.zeros(co, ci, h, wd, dtype=torch.float64, device=w.device)
    for a in range(kh):
        for b in range(kw):
            torus[:, :, a % h, b % wd] += w[:, :, a, b]
    spec = torch.fft.rfft2(torus).permute(2, 3, 0, 1).reshape(-1, co, ci)
    return _max_singular_value(spec)


def _explicit_norm(module: ExplicitOrthConv2d, x: torch.Tensor) -> float:
    """Operator norm of the layer's kernel at the size `x` has after space-to-depth."""
    s = module.stride
    hw = (-(-x.shape[-2] // s), -(-x.shape[-1] // s))
    with torch.no_grad():
        kernel = module.kernel()
    if module.padding_mode == "circular":
        return circular_conv_norm(kernel, hw)
    pad = module.taps // 2
    return conv2d_operator_bound(kernel, hw, (pad, pad))


def _leaf_constant(module: nn.Module, args: tuple[Any, ...] = ()) -> float | None:
    if isinstance(module, (OrthConv2d, GroupSort, SpaceToDepth)):
        return 1.0
    if isinstance(module, ExplicitOrthConv2d):
        return _explicit_norm(module, args[0]) if args else None
    if isinstance(module, OrthLinear):
        return module.lipschitz()
    return None


class _Tracer(TorchFunctionMode):
    """Propagates per-tensor Lipschitz bounds through the ops of one forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.bounds: dict[int, float] = {}
        self.keep: list[torch.Tensor] = []  # keeps ids unique while tracing
        self.reasons: list[str] = []
        self.factors: list[tuple[str, float]] = []
        self.depth = 0
        self.stack: list[float] = []

    def set(self, t: torch.Tensor, bound: float) -> None:
        self.bounds[id(t)] = bound
        self.keep.append(t)

    def get(self, t: Any) -> float:
        return self.bounds.get(id(t), 0.0) if isinstance(t, torch.Tensor) else 0.0

    def fail(self, why: str) -> float:
        if why not in self.reasons:
            self.reasons.append(why)
        return INF

    # hooks for RobustBlocks with exact constants
    def pre_hook(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self.stack.append(self.get(args[0]) if self.depth == 0 and args else 0.0)
        self.depth += 1

    def post_hook(self, module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        self.depth -= 1
        lin = self.stack.pop()
        if self.depth == 0 and lin > 0 and isinstance(out, torch.Tensor):
            c = _leaf_constant(module, args)
            self.factors.append((type(module).__name__, c))
            self.set(out, lin * c)

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.depth > 0:
            return out
        inputs = _tensors(args) + _tensors(kwargs)
        tracked = [t for t in inputs if self.get(t) > 0]
        if not tracked:
            return out
        name = _name(func)
        outs = _tensors(out)
        if not outs:
            if name in _META_OUT or name in {"float", "int", "bool", "index"}:
                self.fail(f"data-dependent value read from the input path ({name})")
            elif name == "setitem":
                self._setitem(args)
            return out
        bound = self._rule(name, args, kwargs, out, tracked)
        if name in {"max", "min", "sort"} and isinstance(out, tuple) and len(outs) == 2:
            self.set(outs[0], bound)
            self.set(outs[1], INF)  # indices are piecewise constant: any use is unbounded
            return out
        for o in outs:
            self.set(o, bound)
        return out

    def _setitem(self, args: Sequence[Any]) -> None:
        target, index, value = args[0], args[1], args[2]
        if not _basic_index(index):
            self.set(target, self.fail("item assignment with advanced indexing"))
            return
        self.set(target, math.hypot(self.get(target), self.get(value)))

    def _rule(self, name, args, kwargs, out, tracked) -> float:  # noqa: C901 - one table
        lin = max(self.get(t) for t in tracked)
        first = args[0] if args else None
        scale_out = out[0] if isinstance(out, (tuple, list)) else out

        def bcast(t: torch.Tensor) -> float:
            return math.sqrt(max(1.0, scale_out.numel() / max(1, t.numel())))

        if name in _UNARY:
            return self.get(first) * _UNARY[name]
        if name == "leaky_relu":
            slope = abs(float(_arg(args, kwargs, 1, "negative_slope", 0.01)))
            return self.get(first) * max(1.0, slope)
        if name in _SAME:
            return self.get(first) if isinstance(first, torch.Tensor) else lin
        if name == "getitem":
            if _basic_index(args[1]):
                return self.get(first)
            return self.fail("advanced (tensor) indexing on the input path")
        if name in _BROADCAST:
            return self.get(first) * math.sqrt(max(1.0, scale_out.numel() / first.numel()))
        if name in {"dropout", "alpha_dropout", "feature_dropout", "dropout2d", "dropout1d"}:
            if _arg(args, kwargs, 2, "training", _arg(args, kwargs, 2, "train", True)):
                return self.fail(f"{name} in training mode")
            return self.get(first)
        if name in {"pad", "constant_pad_nd"}:
            if _arg(args, kwargs, 2, "mode", "constant") != "constant":
                return self.fail("non-constant padding mode")
            return self.get(first)
        if name in _ADDITIVE:
            total = 0.0
            alpha = abs(float(kwargs.get("alpha", 1.0)))
            for i, t in enumerate(args[:2]):
                if isinstance(t, torch.Tensor):
                    total += self.get(t) * bcast(t) * (alpha if i == 1 else 1.0)
            return total
        if name in _SCALING:
            a, b = args[0], args[1]
            if self.get(a) > 0 and self.get(b) > 0:
                return self.fail(f"product/quotient of two input-dependent tensors ({name})")
            x, c = (a, b) if self.get(a) > 0 else (b, a)
            divide = "div" in name
            if divide and x is not a:
                return self.fail("division by an input-dependent tensor")
            mag = c.detach().abs() if isinstance(c, torch.Tensor) else torch.tensor(abs(float(c)))
            if divide and float(mag.min()) == 0.0:
                return self.fail("division by zero on the input path")
            factor = (1.0 / float(mag.min())) if divide else float(mag.max())
            return self.get(x) * bcast(x) * factor
        if name in {"sum", "mean", "nansum", "nanmean"}:
            count = max(1, first.numel() // max(1, scale_out.numel()))
            return self.get(first) * (math.sqrt(count) if "sum" in name else 1 / math.sqrt(count))
        if name == "std":
            return self._std(args, kwargs, scale_out)
        if name in _MINMAX:
            others = [a for a in args[1:2] if isinstance(a, torch.Tensor)]
            if not others:  # reduction: every element lands in one output
                return self.get(first)
            return math.hypot(*(self.get(t) * bcast(t) for t in [first, *others]))
        if name in {"cat", "concat", "concatenate", "stack", "hstack", "vstack"}:
            seq = first if first is not None else kwargs.get("tensors", ())
            return math.sqrt(sum(self.get(t) ** 2 for t in _tensors(seq)))
        if name in {"max_pool1d", "max_pool2d", "max_pool3d", "max_pool2d_with_indices"}:
            return self._max_pool(args, kwargs)
        if name in {"avg_pool2d"}:
            return self._avg_pool(args, kwargs)
        if name in {"adaptive_avg_pool2d", "adaptive_max_pool2d"}:
            return self._adaptive(name, first, scale_out)
        if name in {"linear", "matmul", "mm", "bmm", "rmatmul"}:
            return self._linear(name, args, kwargs)
        if name == "conv2d":
            return self._conv2d(args, kwargs)
        if name == "batch_norm":
            return self._batch_norm(args, kwargs)
        return self.fail(f"no Lipschitz rule for op '{name}'")

    def _std(self, args, kwargs, out: torch.Tensor) -> float:
        """std over groups of n elements is ||P x_g|| / sqrt(n - correction), P the centring
        projection (norm 1); the groups are disjoint, so the whole map has that constant."""
        x = args[0]
        correction = kwargs.get("correction")
        if correction is None:
            flags = [a for a in args[1:3] if isinstance(a, bool)]
            unbiased = kwargs.get("unbiased", flags[0] if flags else True)
            correction = 1 if unbiased else 0
        dof = x.numel() // max(1, out.numel()) - float(correction)
        if dof <= 0:
            return self.fail("std over fewer elements than its correction")
        return self.get(x) / math.sqrt(dof)

    def _max_pool(self, args, kwargs) -> float:
        x = args[0]
        nd = x.dim() - 2 if x.dim() in (3, 4, 5) else 2
        k = _pair(_arg(args, kwargs, 1, "kernel_size", 1), nd)
        s = _arg(args, kwargs, 2, "stride", None)
        s = k if s in (None, [], ()) else _pair(s, nd)
        d = _pair(_arg(args, kwargs, 4, "dilation", 1), nd)
        mult = math.prod(_window_multiplicity(k[i], s[i], d[i]) for i in range(nd))
        return self.get(x) * math.sqrt(mult)

    def _avg_pool(self, args, kwargs) -> float:
        x = args[0]
        k = _pair(_arg(args, kwargs, 1, "kernel_size", 1))
        s = _arg(args, kwargs, 2, "stride", None)
        s = k if s in (None, [], ()) else _pair(s)
        pad = _pair(_arg(args, kwargs, 3, "padding", 0))
        include = _arg(args, kwargs, 5, "count_include_pad", True)
        if _arg(args, kwargs, 6, "divisor_override", None) is not None or (
            not include and any(pad)
        ):
            return self.fail("avg_pool2d with divisor_override / count_include_pad=False")
        # Schur test: rows sum to <= 1, columns to <= multiplicity / window size.
        mult = math.prod(_window_multiplicity(k[i], s[i]) for i in range(2))
        return self.get(x) * math.sqrt(mult / (k[0] * k[1]))

    def _adaptive(self, name: str, x: torch.Tensor, out: torch.Tensor) -> float:
        factor = 1.0
        for size, o in zip(x.shape[-2:], out.shape[-2:], strict=True):
            wins = _adaptive_windows(size, o)
            cover = [0.0] * size
            for a, b in wins:
                for j in range(a, b):
                    cover[j] += 1.0 if "max" in name else 1.0 / (b - a)
            factor *= max(cover) if "max" in name else max(cover)  # Schur: row sums are 1
        return self.get(x) * math.sqrt(factor)

    def _linear(self, name, args, kwargs) -> float:
        a = args[0]
        b = args[1] if len(args) > 1 else kwargs.get("weight", kwargs.get("other"))
        if self.get(b) > 0 and self.get(a) > 0:
            return self.fail(f"{name} of two input-dependent tensors")
        if name == "linear":
            if self.get(b) > 0 or self.get(_arg(args, kwargs, 2, "bias", None)) > 0:
                return self.fail("linear with an input-dependent weight")
            return self.get(a) * _spectral_norm(b)
        x, w = (a, b) if self.get(a) > 0 else (b, a)
        return self.get(x) * _spectral_norm(w if w.dim() >= 2 else w[None])

    def _conv2d(self, args, kwargs) -> float:
        x, w = args[0], _arg(args, kwargs, 1, "weight", None)
        if self.get(w) > 0 or self.get(_arg(args, kwargs, 2, "bias", None)) > 0:
            return self.fail("conv2d with an input-dependent weight")
        pad = _arg(args, kwargs, 4, "padding", 0)
        if isinstance(pad, str):
            # 'same' pads at most k-1 per dim in total; over-padding only loosens the bound
            pad = 0 if pad == "valid" else tuple(w.shape[-2 + i] - 1 for i in range(2))
        bound = conv2d_operator_bound(
            w,
            tuple(x.shape[-2:]),
            _pair(pad),
            _pair(_arg(args, kwargs, 5, "dilation", 1)),
            int(_arg(args, kwargs, 6, "groups", 1)),
        )
        self.factors.append(("conv2d", bound))
        return self.get(x) * bound

    def _batch_norm(self, args, kwargs) -> float:
        x = args[0]
        if _arg(args, kwargs, 5, "training", False):
            return self.fail("batch_norm in training mode (batch statistics)")
        var = _arg(args, kwargs, 2, "running_var", None)
        weight = _arg(args, kwargs, 3, "weight", None)
        eps = float(_arg(args, kwargs, 7, "eps", 1e-5))
        if var is None:
            return self.fail("batch_norm without running statistics")
        scale = 1.0 / (var.detach().double() + eps).sqrt()
        if weight is not None:
            scale = scale * weight.detach().double().abs()
        return self.get(x) * float(scale.max())


def _basic_index(index: Any) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return all(i is None or i is Ellipsis or isinstance(i, (int, slice)) for i in items)


def _example(module: nn.Module, input_shape: Sequence[int]) -> torch.Tensor:
    shape = tuple(input_shape)
    if len(shape) == 3:
        shape = (1, *shape)
    p = next(iter(module.parameters()), None)
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    device = p.device if p is not None else torch.device("cpu")
    gen = torch.Generator().manual_seed(0)
    return torch.rand(shape, generator=gen, dtype=dtype).to(device)


def lipschitz_analysis(module: nn.Module, input_shape: Sequence[int]) -> LipschitzReport:
    """Trace one eval-mode forward pass and bound the L2 Lipschitz constant, with reasons."""
    was_training = module.training
    module.eval()
    tracer = _Tracer()
    handles = []
    for sub in module.modules():
        if isinstance(sub, ExplicitOrthConv2d) or _leaf_constant(sub) is not None:
            handles.append(sub.register_forward_pre_hook(tracer.pre_hook))
            handles.append(sub.register_forward_hook(tracer.post_hook))
    x = _example(module, input_shape)
    try:
        with torch.no_grad(), tracer:
            tracer.set(x, 1.0)
            out = module(x)
    finally:
        for h in handles:
            h.remove()
        module.train(was_training)
    outs = _tensors(out)
    bound = math.sqrt(sum(tracer.get(o) ** 2 for o in outs)) if outs else INF
    if tracer.reasons or not math.isfinite(bound):
        reasons = tracer.reasons or ["output not bounded"]
        return LipschitzReport(None, reasons, tracer.factors)
    return LipschitzReport(bound, [], tracer.factors)


def lipschitz_upper_bound(module: nn.Module, input_shape: Sequence[int]) -> float | None:
    """Certified upper bound on the L2 Lipschitz constant, or None when it cannot be certified."""
    return lipschitz_analysis(module, input_shape).bound


def empirical_lipschitz(
    module: nn.Module, input_shape: Sequence[int], n: int = 16, seed: int = 0
) -> float:
    """Lower estimate: max over `n` random inputs of `||J(x)^T v||` (v: random unit output).

    For a scalar output this is the input-gradient norm, i.e. the local Lipschitz constant.
    """
    was_training = module.training
    module.eval()
    gen = torch.Generator().manual_seed(seed)
    x0 = _example(module, input_shape)
    best = 0.0
    try:
        for i in range(n):
            x = torch.rand(x0.shape, generator=gen, dtype=x0.dtype)
            if i % 2:
                x = torch.randn(x0.shape, generator=gen, dtype=x0.dtype)
            x = x.to(x0.device).requires_grad_(True)
            out = _tensors(module(x))
            vs = [torch.randn(o.shape, generator=gen, dtype=o.dtype).to(o.device) for o in out]
            norm = math.sqrt(sum(float(v.square().sum()) for v in vs))
            dot = sum((o * v).sum() for o, v in zip(out, vs, strict=True)) / norm
            (g,) = torch.autograd.grad(dot, x)
            best = max(best, float(g.norm()))
    finally:
        module.train(was_training)
    return best
