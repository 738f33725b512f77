"""`robustify`: turn a base model into a RobustBlock model, reporting what was and was not converted.

Module replacement: Conv2d -> OrthConv2d (`orth="fourier"`) or ExplicitOrthConv2d
(`orth="explicit"`: an explicit orthogonal kernel, inference is one ordinary conv), ReLU-like -> MaxMin, BatchNorm -> folded into the
preceding conv (inside a Sequential) or removed, Linear -> OrthLinear (the last one with a
learnable output scale, so the score range stays reachable), overlapping MaxPool2d -> the
non-overlapping MaxPool2d of the same stride (non-expansive; same output size for the usual
k=3, s=2, p=1). Functional ops written inside `forward` (`F.relu(...)`) are invisible to module
replacement: when `torch.fx` can trace the model they are rewritten in the graph, otherwise
they stay and are listed. Whether the result has a certified Lipschitz bound is decided by
`lipschitz.lipschitz_analysis`, which sees every op.

With `init_from_base`, each orthogonal layer starts from the nearest (semi-)orthogonal
operator to the base layer: per-frequency polar factor of the base kernel (same tap and DFT
convention as `OrthConv2d`, so no flipping is needed), inverted through the Cayley map,
truncated to the kernel's taps, then refined by a few Adam steps on the Frobenius distance.
An `ExplicitOrthConv2d` starts with its 1x1 head at the polar factor of the base kernel's DC
response (which the construction reproduces exactly) and is then fitted by Adam steps on the
Frobenius distance of the kernels (by Parseval, the same distance over all frequencies).
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from benchmark.errors import ConfigError
from benchmark.robust.explicit import ExplicitOrthConv2d
from benchmark.robust.layers import GroupSort, MaxMin, OrthLinear
from benchmark.robust.linalg import inverse_checked
from benchmark.robust.orthconv import OrthConv2d

__all__ = [
    "ORTH_CHOICES",
    "RobustifyReport",
    "explicit_from_kernel",
    "nearest_orthogonal",
    "orth_conv_from_conv",
    "robustify",
]

ORTH_CHOICES = ("fourier", "explicit")  # OrthConv2d, ExplicitOrthConv2d

_ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.ReLU6, nn.PReLU, nn.Tanh)
_KEEP = (
    nn.Dropout, nn.Dropout2d, nn.Identity, nn.Flatten, nn.Unflatten, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d, GroupSort, OrthConv2d, ExplicitOrthConv2d, OrthLinear,
)  # fmt: skip
_FX_ACT = {F.relu, torch.relu, F.leaky_relu, F.elu, F.gelu, F.silu, F.relu6, torch.tanh}


@dataclass
class RobustifyReport:
    """What happened to every layer; `fully_converted` is False if anything was left as is."""

    converted: list[tuple[str, str, str]] = field(default_factory=list)  # (name, from, to)
    notes: list[str] = field(default_factory=list)
    unconverted: list[tuple[str, str]] = field(default_factory=list)  # (name, why)
    fx_error: str | None = None

    @property
    def fully_converted(self) -> bool:
        return not self.unconverted

    def summary(self) -> str:
        lines = [f"converted {len(self.converted)} layer(s):"]
        lines += [f"  {n}: {a} -> {b}" for n, a, b in self.converted]
        if self.notes:
            lines += ["notes:"] + [f"  {x}" for x in self.notes]
        if self.unconverted:
            lines += ["NOT converted:"] + [f"  {n}: {why}" for n, why in self.unconverted]
        if self.fx_error:
            lines.append(f"fx trace failed ({self.fx_error}); functional ops were not rewritten")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "converted": [list(c) for c in self.converted],
            "notes": list(self.notes),
            "unconverted": [list(u) for u in self.unconverted],
            "fx_error": self.fx_error,
            "fully_converted": self.fully_converted,
        }


def nearest_orthogonal(mat: torch.Tensor) -> torch.Tensor:
    """Polar factor U V^H of each matrix in a batch: the nearest (semi-)orthogonal one."""
    u, _, vh = torch.linalg.svd(mat, full_matrices=False)
    return u @ vh


def _damped_solve_right(num: torch.Tensor, den: torch.Tensor, damp: float) -> torch.Tensor:
    """`num @ den^{-1}`, Tikhonov-damped where `den` is near singular (Cayley poles at -1)."""
    dh = den.mH
    eye = torch.eye(den.shape[-1], dtype=den.dtype, device=den.device)
    return num @ dh @ inverse_checked(den @ dh + damp * eye)


def _inverse_cayley(q: torch.Tensor, damp: float = 1e-5) -> torch.Tensor:
    """Generator (rows c_out, cols c_in) whose block Cayley map is approximately `q` (tall)."""
    m = q.shape[-1]
    q1, q2 = q[..., :m, :], q[..., m:, :]
    eye = torch.eye(m, dtype=q.dtype, device=q.device)
    a = _damped_solve_right(eye - q1, eye + q1, damp)  # A = (I - Q1)(I + Q1)^{-1}
    v = -0.5 * q2 @ (eye + a)
    k = a - v.mH @ v  # skew-Hermitian up to rounding; U = K / 2 gives U - U^H = K
    u = 0.25 * (k - k.mH)
    return torch.cat([u, v], dim=-2)


def orth_conv_from_conv(
    conv: nn.Conv2d, steps: int = 60, grid: int = 8, budget: float = 3e9
) -> tuple[OrthConv2d, float]:
    """OrthConv2d nearest to `conv` on an (grid x grid) torus; returns (layer, relative distance).

    Refinement steps are capped so that `steps * F * m^3` stays under `budget` (wide layers
    of big networks would otherwise take minutes). The distance is `||Q - W_hat|| / ||W_hat||` over all frequencies, i.e. how far the nearest
    orthogonal conv is from the base conv (1.0 would mean nothing is kept).
    """
    w = conv.weight.detach()
    co, ci, kh, kw = w.shape
    s = conv.stride[0]
    k = max(kh, kw)
    layer = OrthConv2d(ci, co, k, s, bias=conv.bias is not None, device=w.device, dtype=w.dtype)
    target = _space_to_depth_kernel(w, s, _padding(conv), layer.taps)  # (co, ci s^2, taps, taps)
    n = max(grid, 2 * layer.taps)
    base = layer._dft(target, n, n).reshape(-1, co, layer.cin_eff).to(torch.complex128)
    polar = nearest_orthogonal(base)
    tall = co >= layer.cin_eff
    gen = _inverse_cayley(polar if tall else polar.mT)  # (F, big, small)
    if not tall:
        gen = gen.mT
    # Generator at the grid frequencies -> taps: inverse DFT (full spectrum reconstruction).
    with torch.no_grad():
        layer.weight.copy_(_taps_from_spectrum(gen, n, layer.taps, co, layer.cin_eff).to(w.dtype))
        if conv.bias is not None:
            layer.bias.copy_(conv.bias.detach())
    goal = polar.to(layer._complex_dtype()).reshape(n, n // 2 + 1, co, layer.cin_eff)
    polar_flat = polar.reshape(-1, co, layer.cin_eff)

    def dist_to(ref: torch.Tensor) -> float:
        with torch.no_grad():
            q = layer.orthogonal_matrices(n, n).reshape(-1, co, layer.cin_eff)
            return float((q.to(torch.complex128) - ref).norm() / ref.norm().clamp_min(1e-30))

    # Candidates: zero generator (Q = [I; 0]), inverse-Cayley fit, its Adam refinement.
    candidates = [(dist_to(polar_flat), layer.weight.detach().clone())]
    with torch.no_grad():
        fitted_w = candidates[0][1]
        layer.weight.zero_()
        candidates.append((dist_to(polar_flat), layer.weight.detach().clone()))
        layer.weight.copy_(fitted_w)
    cost = n * (n // 2 + 1) * layer.m**3 * 8 + 1
    steps = min(steps, int(budget / cost))
    if steps > 0:
        opt = torch.optim.Adam([layer.weight], lr=1e-2)
        for _ in range(steps):
            opt.zero_grad()
            loss = (layer.orthogonal_matrices(n, n) - goal).abs().square().sum()
            loss.backward()
            opt.step()
        candidates.append((dist_to(polar_flat), layer.weight.detach().clone()))
    with torch.no_grad():
        layer.weight.copy_(min(candidates, key=lambda c: c[0])[1])
    dist = dist_to(base)
    layer.zero_grad(set_to_none=True)
    return layer, dist


def explicit_from_kernel(
    target: torch.Tensor,
    in_channels: int,
    stride: int = 1,
    kernel_size: int | None = None,
    bias: torch.Tensor | None = None,
    steps: int = 150,
    padding_mode: str = "circular",
) -> tuple[ExplicitOrthConv2d, float]:
    """ExplicitOrthConv2d nearest to a tap kernel `target` (c_out, c_in * stride^2, t, t).

    Returns (layer, relative Frobenius distance `||K - target|| / ||target||`). The head
    starts at the polar factor of the DC response (sum over taps); the projector generators
    at random (seed 0), then `steps` Adam steps fit every parameter; the best kernel seen is
    kept.
    """
    co, cin_eff, t, _ = target.shape
    k = kernel_size if kernel_size is not None else t
    gen = torch.Generator().manual_seed(0)
    layer = ExplicitOrthConv2d(
        in_channels, co, k, stride, bias=bias is not None, padding_mode=padding_mode,
        device=target.device, dtype=target.dtype,
    )  # fmt: skip
    if layer.taps != t or layer.cin_eff != cin_eff:
        raise ValueError(f"explicit_from_kernel: target {tuple(target.shape)} does not fit {layer}")
    target = target.detach()
    with torch.no_grad():
        layer.proj.copy_(torch.randn(layer.proj.shape, generator=gen) / layer.width**0.5)
        dc = nearest_orthogonal(target.sum(dim=(-2, -1)).double())
        tall = co >= cin_eff
        g = _inverse_cayley(dc if tall else dc.T)
        layer.weight.copy_((g if tall else g.T).to(layer.weight.dtype))
        if bias is not None and layer.bias is not None:
            layer.bias.copy_(bias.detach())
    scale = float(target.norm()) or 1.0

    def dist() -> float:
        with torch.no_grad():
            return float((layer.kernel() - target).norm()) / scale

    best = (dist(), [p.detach().clone() for p in (layer.weight, layer.proj)])
    if steps > 0:
        opt = torch.optim.Adam([layer.weight, layer.proj], lr=2e-2)
        for _ in range(steps):
            opt.zero_grad()
            loss = (layer.kernel() - target).square().sum() / scale**2
            loss.backward()
            opt.step()
            d = dist()
            if d < best[0]:
                best = (d, [p.detach().clone() for p in (layer.weight, layer.proj)])
    with torch.no_grad():
        layer.weight.copy_(best[1][0])
        layer.proj.copy_(best[1][1])
    layer.zero_grad(set_to_none=True)
    return layer, best[0]


def explicit_from_conv(conv: nn.Conv2d, steps: int = 150) -> tuple[ExplicitOrthConv2d, float]:
    """ExplicitOrthConv2d nearest to `conv` (same tap convention as `orth_conv_from_conv`)."""
    w = conv.weight.detach()
    co, ci, kh, kw = w.shape
    s = conv.stride[0]
    k = max(kh, kw)
    taps = k + (1 - k % 2)
    target = _space_to_depth_kernel(w, s, _padding(conv), taps)
    return explicit_from_kernel(target, ci, s, k, conv.bias, steps=steps)


def _padding(conv: nn.Conv2d) -> int:
    pad = conv.padding
    if isinstance(pad, str):
        return (conv.kernel_size[0] - 1) // 2 if pad == "same" else 0
    return int(pad[0])


def _space_to_depth_kernel(w: torch.Tensor, s: int, pad: int, taps: int) -> torch.Tensor:
    """Kernel on the space-to-depth grid equivalent to a stride-s conv (taps centred).

    Base tap i reads x[s P + i - pad] = X'[(c, r), P + q] with s q + r = i - pad; stride 1
    uses q = i - k // 2 so the circular conv is the base conv centred (same output size).
    """
    co, ci, kh, kw = w.shape
    out = torch.zeros(co, ci * s * s, taps, taps, dtype=w.dtype, device=w.device)
    c = taps // 2
    for i in range(kh):
        for j in range(kw):
            di = i - (kh // 2 if s == 1 else pad)
            dj = j - (kw // 2 if s == 1 else pad)
            qi, ri = divmod(di, s)
            qj, rj = divmod(dj, s)
            if abs(qi) > c or abs(qj) > c:
                continue
            idx = torch.arange(ci, device=w.device) * s * s + ri * s + rj
            out[:, idx, qi + c, qj + c] += w[:, :, i, j]
    return out


def _taps_from_spectrum(gen: torch.Tensor, n: int, taps: int, co: int, ci: int) -> torch.Tensor:
    """Real taps (co, ci, taps, taps) from generator matrices on the rfft grid of an n x n torus."""
    spec = gen.reshape(n, n // 2 + 1, co, ci).permute(2, 3, 0, 1)
    # gen(f) = sum_t K[t] e^{+2 pi i f t / n}  =>  K[t] = irfft2(gen)[-t]
    rev = torch.fft.irfft2(spec, s=(n, n)).real
    kern = torch.roll(rev.flip(-2, -1), shifts=(1, 1), dims=(-2, -1))
    c = taps // 2
    idx = torch.arange(-c, c + 1) % n
    return kern[:, :, idx][:, :, :, idx]


def _linear_init(lin: nn.Linear, layer: OrthLinear) -> float:
    w = lin.weight.detach().double()
    polar = nearest_orthogonal(w)
    tall = w.shape[0] >= w.shape[1]
    gen = _inverse_cayley(polar if tall else polar.T)
    with torch.no_grad():
        layer.weight.copy_((gen if tall else gen.T).to(layer.weight.dtype))
        if lin.bias is not None and layer.bias is not None:
            layer.bias.copy_(lin.bias.detach())
        q = layer.orthogonal_weight().double()
    return float((q - polar).norm() / polar.norm())


def _fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold eval-mode BatchNorm into the conv in place (before orthogonal projection)."""
    with torch.no_grad():
        scale = bn.weight.detach() if bn.affine else torch.ones_like(bn.running_var)
        scale = scale / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias.detach() if bn.affine else torch.zeros_like(scale)
        bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(scale)
        conv.weight.mul_(scale[:, None, None, None])
        new_bias = (bias - bn.running_mean) * scale + shift
        if conv.bias is None:
            conv.bias = nn.Parameter(new_bias)
        else:
            conv.bias.copy_(new_bias)


def _rewrite_functional(model: nn.Module, report: RobustifyReport) -> nn.Module:
    """Replace functional activations in `forward` by MaxMin modules via torch.fx."""
    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many types for untraceable Python control flow
        report.fx_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        return model
    count = 0
    for node in list(gm.graph.nodes):
        is_act = node.op == "call_function" and node.target in _FX_ACT
        is_act = is_act or (node.op == "call_method" and node.target in {"relu", "relu_"})
        if not is_act:
            continue
        name = f"robust_act{count}"
        count += 1
        gm.add_submodule(name, MaxMin())
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(name, (node.args[0],))
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        report.converted.append(
            (name, f"functional {getattr(node.target, '__name__', node.target)}", "MaxMin")
        )
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in {F.max_pool2d, F.avg_pool2d}:
            report.notes.append(
                f"functional {node.target.__name__} kept (its Lipschitz factor is accounted for)"
            )
        if node.op == "call_function" and node.target in {
            operator.mul,
            torch.mul,
            operator.truediv,
        }:
            report.notes.append(f"functional {node.name}: products of features are not converted")
    gm.graph.lint()
    gm.recompile()
    return gm


def robustify(
    model: nn.Module,
    init_from_base: bool = True,
    fit_steps: int | None = None,
    rewrite_functional: bool = True,
    orth: str = "fourier",
) -> tuple[nn.Module, RobustifyReport]:
    """Return a converted deep copy of `model` and a report of every decision.

    `orth` picks the orthogonal convolution: "fourier" (`OrthConv2d`) or "explicit"
    (`ExplicitOrthConv2d`). `fit_steps` (default 60 Fourier, 150 explicit, whose steps are
    cheap: kernel distance 0.68 after 60 and 0.64 after 150 on cnniqa-builtin's conv1).
    """
    if orth not in ORTH_CHOICES:
        raise ConfigError(f"robustify: orth must be one of {ORTH_CHOICES}, got {orth!r}")
    if fit_steps is None:
        fit_steps = 150 if orth == "explicit" else 60
    report = RobustifyReport()
    net = copy.deepcopy(model).eval()
    if rewrite_functional:
        net = _rewrite_functional(net, report)
    linears = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    last_linear = linears[-1] if linears else None
    _convert(net, "", report, init_from_base, fit_steps, last_linear, orth)
    return net, report


def _convert(
    parent: nn.Module,
    prefix: str,
    report: RobustifyReport,
    init: bool,
    steps: int,
    last_linear: str | None,
    orth: str = "fourier",
) -> None:
    children = list(parent.named_children())
    if init and isinstance(parent, nn.Sequential):  # fold BN before the conv is projected
        for (_, a), (_, b) in zip(children, children[1:], strict=False):
            if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d):
                _fold_bn(a, b)
    for idx, (name, child) in enumerate(children):
        full = f"{prefix}{name}"
        new: nn.Module | None = None
        if isinstance(child, nn.Conv2d):
            new = _convert_conv(child, full, report, init, steps, orth)
        elif isinstance(child, _ACTIVATIONS):
            new = MaxMin()
            report.converted.append((full, type(child).__name__, "MaxMin"))
        elif isinstance(child, (nn.BatchNorm2d, nn.BatchNorm1d)):
            prev = children[idx - 1][1] if idx > 0 else None
            if isinstance(prev, nn.Conv2d) and isinstance(parent, nn.Sequential) and init:
                report.notes.append(f"{full}: folded into {prefix}{children[idx - 1][0]}")
            new = nn.Identity()
            report.converted.append((full, type(child).__name__, "removed (Identity)"))
        elif isinstance(child, nn.Linear):
            head = full == last_linear or child.out_features == 1
            layer = OrthLinear(
                child.in_features,
                child.out_features,
                bias=child.bias is not None,
                learn_scale=head,
                device=child.weight.device,
                dtype=child.weight.dtype,
            )
            if init:
                dist = _linear_init(child, layer)
                if head:
                    with torch.no_grad():
                        layer.scale.fill_(float(torch.linalg.matrix_norm(child.weight.detach(), 2)))
                report.notes.append(
                    f"{full}: nearest semi-orthogonal init, Cayley fit error {dist:.1e}"
                )
            if head:
                report.notes.append(f"{full}: learnable output scale (enters the Lipschitz bound)")
            new = layer
            report.converted.append((full, "Linear", "OrthLinear"))
        elif isinstance(child, nn.MaxPool2d):
            k, s = _as_int(child.kernel_size), _as_int(child.stride or child.kernel_size)
            if k > s or _as_int(child.dilation) != 1:
                new = nn.MaxPool2d(s, s, ceil_mode=True)
                report.converted.append(
                    (full, f"MaxPool2d(k={k}, s={s})", f"MaxPool2d(k={s}, s={s})")
                )
            else:
                report.notes.append(f"{full}: MaxPool2d(k={k}, s={s}) kept (non-expansive)")
        elif isinstance(child, nn.AvgPool2d):
            report.notes.append(f"{full}: AvgPool2d kept (bounded by the Schur test)")
        elif isinstance(child, _KEEP):
            pass
        elif list(child.children()):
            _convert(child, f"{full}.", report, init, steps, last_linear, orth)
        elif any(True for _ in child.parameters(recurse=False)):
            report.unconverted.append(
                (full, f"{type(child).__name__} has no RobustBlock equivalent")
            )
        if new is not None:
            setattr(parent, name, new)


def _as_int(v: Any) -> int:
    return int(v[0]) if isinstance(v, (tuple, list)) else int(v)


def _convert_conv(
    conv: nn.Conv2d, name: str, report: RobustifyReport, init: bool, steps: int, orth: str
) -> nn.Module | None:
    if conv.groups != 1 or _as_int(conv.dilation) != 1 or conv.stride[0] != conv.stride[1]:
        report.unconverted.append((name, "grouped/dilated/anisotropic-stride Conv2d"))
        return None
    k, s = max(conv.kernel_size), conv.stride[0]
    layer: nn.Module
    if orth == "explicit":
        if init:
            layer, dist = explicit_from_conv(conv, steps=steps)
            report.notes.append(
                f"{name}: nearest explicit orthogonal fit, kernel distance {dist:.2f}"
            )
        else:
            w = conv.weight
            layer = ExplicitOrthConv2d(
                conv.in_channels, conv.out_channels, k, s, bias=conv.bias is not None,
                device=w.device, dtype=w.dtype,
            )  # fmt: skip
    elif init:
        layer, dist = orth_conv_from_conv(conv, steps=steps)
        report.notes.append(f"{name}: nearest orthogonal init, distance to base conv {dist:.2f}")
    else:
        w = conv.weight
        layer = OrthConv2d(
            conv.in_channels,
            conv.out_channels,
            k,
            s,
            bias=conv.bias is not None,
            device=w.device,
            dtype=w.dtype,
        )
    pad = _padding(conv)
    if s == 1 and pad != k // 2:
        report.notes.append(f"{name}: padding {pad} -> circular 'same' (output size changes)")
    report.converted.append(
        (
            name,
            f"Conv2d({conv.in_channels}, {conv.out_channels}, k={k}, s={s})",
            type(layer).__name__,
        )
    )
    return layer
