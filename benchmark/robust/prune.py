"""Structured pruning: remove output channels with small mean |w|, giving a genuinely smaller model.

A producer layer's output channels are removed together with the input columns of every
layer that consumes them. Which consumer columns belong to which producer channels is
measured, not assumed: each producer channel is shifted by a large constant in one batch
element and the consumers' inputs that change are recorded. This finds MaxMin pairs
(c, c + C/2), the max+min pooling concatenation of CNNIQA (c, C + c), etc.; coupled channels
form one group and are removed together (so MaxMin pairing is preserved exactly). A layer whose
channels reach the output without a consumer, or whose surgery breaks the forward pass, is
left alone and reported.

An `ExplicitOrthConv2d` cannot lose rows or columns and stay orthogonal, so it is replaced
by the nearest smaller one: its explicit kernel is sliced like a plain conv's, and a new
layer of the smaller width is fitted to the slice (`explicit_from_kernel`); fine-tuning then
recovers what the fit lost, as after slicing the generator of an `OrthConv2d`.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from benchmark.params import count_parameters
from benchmark.robust.convert import explicit_from_kernel
from benchmark.robust.explicit import ExplicitOrthConv2d
from benchmark.robust.layers import OrthLinear
from benchmark.robust.orthconv import OrthConv2d

__all__ = ["PruneReport", "prune"]

PRUNABLE = (OrthConv2d, ExplicitOrthConv2d, nn.Conv2d, OrthLinear, nn.Linear)


@dataclass
class PruneReport:
    params_before: int = 0
    params_after: int = 0
    removed: dict[str, int] = field(default_factory=dict)  # layer -> output channels removed
    skipped: dict[str, str] = field(default_factory=dict)  # layer -> why

    def to_dict(self) -> dict[str, Any]:
        return {
            "params_before": self.params_before,
            "params_after": self.params_after,
            "removed": dict(self.removed),
            "skipped": dict(self.skipped),
        }


def _out_dim(layer: nn.Module, t: torch.Tensor) -> int:
    return 1 if isinstance(layer, (nn.Conv2d, OrthConv2d, ExplicitOrthConv2d)) else t.dim() - 1


def _channel_scores(layer: nn.Module) -> torch.Tensor:
    if isinstance(layer, ExplicitOrthConv2d):  # its generators say nothing per channel
        with torch.no_grad():
            w = layer.kernel()
        return w.abs().reshape(w.shape[0], -1).mean(dim=1)
    w = layer.weight.detach()
    return w.abs().reshape(w.shape[0], -1).mean(dim=1)


@torch.no_grad()
def _couplings(
    model: nn.Module, name: str, x: torch.Tensor, shift: float = 1e3, chunk: int = 64
) -> dict[str, torch.Tensor] | None:
    """For producer `name`: {direct consumer: bool (C_out, C_in_consumer)} dependence.

    Batch copy c has producer channel c shifted by +shift (which moves ReLU, MaxMin, max and
    min pooling alike); the last copy is clean. Every other parametric layer outputs the clean
    copy's result, so a shift is seen only by the layers that consume the producer directly.
    """
    layers = dict(model.named_modules())
    producer = layers[name]
    n_out = producer.weight.shape[0]
    found: dict[str, list[torch.Tensor]] = {}
    for lo in range(0, n_out, chunk):
        chans = list(range(lo, min(n_out, lo + chunk)))
        copies = len(chans) + 1
        captured: dict[str, torch.Tensor] = {}

        # Inside a layer the batch may hold several rows per image (a model that cuts images
        # into patches on the batch axis): copy c is the c-th block of out.shape[0] // copies.
        def perturb(
            mod: nn.Module, args: Any, out: torch.Tensor, chans=chans, copies=copies
        ) -> torch.Tensor:
            d = _out_dim(mod, out)
            out = out.clone()
            kk = out.shape[0] // copies
            for i, c in enumerate(chans):
                out[i * kk : (i + 1) * kk].narrow(d, c, 1).add_(shift)
            return out

        def freeze(mod: nn.Module, args: Any, out: torch.Tensor, copies=copies) -> torch.Tensor:
            clean = out[-(out.shape[0] // copies) :]
            return clean.repeat(copies, *([1] * (out.dim() - 1)))

        def capture(key: str, store: dict[str, torch.Tensor] = captured):
            def hook(mod: nn.Module, args: tuple[Any, ...]) -> None:
                store[key] = args[0].detach()

            return hook

        handles = [producer.register_forward_hook(perturb)]
        for key, mod in layers.items():
            if key != name and isinstance(mod, PRUNABLE):
                handles.append(mod.register_forward_pre_hook(capture(key)))
                handles.append(mod.register_forward_hook(freeze))
        try:
            model(x.repeat(copies, *([1] * (x.dim() - 1))))
        finally:
            for h in handles:
                h.remove()
        for key, inp in captured.items():
            d = _out_dim(layers[key], inp)
            kk = inp.shape[0] // copies
            diff = (inp.reshape(copies, kk, *inp.shape[1:]) - inp[-kk:]).abs()[:-1]
            moved = diff.movedim(d + 1, -1).reshape(len(chans), -1, inp.shape[d]).amax(dim=1)
            found.setdefault(key, []).append(moved > 1e-6)
    deps = {key: torch.cat(parts) for key, parts in found.items()}
    deps = {key: m for key, m in deps.items() if m.any()}
    return deps or None


def _groups(deps: dict[str, torch.Tensor], n_out: int) -> list[list[int]]:
    """Connected components of producer channels through shared consumer columns."""
    parent = list(range(n_out))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for mat in deps.values():
        for col in range(mat.shape[1]):
            rows = torch.nonzero(mat[:, col]).flatten().tolist()
            for r in rows[1:]:
                parent[find(r)] = find(rows[0])
    comps: dict[int, list[int]] = {}
    for i in range(n_out):
        comps.setdefault(find(i), []).append(i)
    return list(comps.values())


def slice_layer(
    layer: nn.Module,
    keep_out: torch.Tensor | None,
    keep_in: torch.Tensor | None,
    fit_steps: int = 150,
) -> nn.Module:
    """A new, smaller layer of the same type with the given output rows / input columns.

    `fit_steps`: Adam steps fitting a smaller `ExplicitOrthConv2d` to its sliced kernel (0
    when the weights are about to be loaded from a checkpoint anyway).
    """
    if isinstance(layer, ExplicitOrthConv2d):
        return _slice_explicit(layer, keep_out, keep_in, fit_steps)
    w = layer.weight.detach()
    bias = getattr(layer, "bias", None)
    if keep_out is not None:
        w = w[keep_out]
        bias = bias.detach()[keep_out] if bias is not None else None
    elif bias is not None:
        bias = bias.detach()
    if isinstance(layer, OrthConv2d):
        s2 = layer.stride**2
        if keep_in is not None:
            cols = (keep_in[:, None] * s2 + torch.arange(s2)).flatten()
            w = w[:, cols]
        new = OrthConv2d(
            w.shape[1] // s2,
            w.shape[0],
            layer.kernel_size,
            layer.stride,
            bias=bias is not None,
            cache_entries=layer.cache_entries,
            cache_bytes=layer.cache_bytes,
            device=w.device,
            dtype=w.dtype,
        )
    elif isinstance(layer, OrthLinear):
        if keep_in is not None:
            w = w[:, keep_in]
        new = OrthLinear(
            w.shape[1],
            w.shape[0],
            bias=bias is not None,
            learn_scale=isinstance(layer.scale, nn.Parameter),
            device=w.device,
            dtype=w.dtype,
        )
        with torch.no_grad():
            new.scale.copy_(layer.scale.detach())
    elif isinstance(layer, nn.Conv2d):
        if keep_in is not None:
            w = w[:, keep_in]
        new = copy.deepcopy(layer)
        new.in_channels, new.out_channels = w.shape[1], w.shape[0]
    else:
        if keep_in is not None:
            w = w[:, keep_in]
        new = copy.deepcopy(layer)
        new.in_features, new.out_features = w.shape[1], w.shape[0]
    new.weight = nn.Parameter(w.clone())
    if bias is not None:
        new.bias = nn.Parameter(bias.clone())
    return new.train(layer.training)


def _slice_explicit(
    layer: ExplicitOrthConv2d,
    keep_out: torch.Tensor | None,
    keep_in: torch.Tensor | None,
    fit_steps: int,
) -> ExplicitOrthConv2d:
    with torch.no_grad():
        k = layer.kernel()
    bias = layer.bias.detach() if layer.bias is not None else None
    if keep_out is not None:
        k = k[keep_out]
        bias = bias[keep_out] if bias is not None else None
    s2 = layer.stride**2
    n_in = layer.in_channels
    if keep_in is not None:
        cols = (keep_in[:, None] * s2 + torch.arange(s2)).flatten()
        k = k[:, cols]
        n_in = len(keep_in)
    new, _ = explicit_from_kernel(
        k, n_in, layer.stride, layer.kernel_size, bias, steps=fit_steps,
        padding_mode=layer.padding_mode,
    )  # fmt: skip
    return new.train(layer.training)


def _set(model: nn.Module, name: str, layer: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, layer)


def prune(
    module: nn.Module,
    tau: float | None = None,
    fraction: float | None = None,
    example_input: torch.Tensor | Sequence[int] = (1, 3, 64, 64),
    layers: Sequence[str] | None = None,
    fit_steps: int = 150,
) -> tuple[nn.Module, PruneReport]:
    """Return a pruned copy: per layer, channel groups with mean |w| < tau (or the lowest
    `fraction` of groups) are removed. Exactly one of `tau` / `fraction` must be given.
    `fit_steps`: Adam steps fitting each smaller `ExplicitOrthConv2d` (see `slice_layer`).
    """
    if (tau is None) == (fraction is None):
        raise ValueError("prune: give exactly one of tau or fraction")
    if fraction is not None and not 0.0 <= fraction < 1.0:
        raise ValueError("prune: fraction must be in [0, 1)")
    model = copy.deepcopy(module).eval()
    p = next(iter(model.parameters()))
    x = (
        example_input.to(p)
        if isinstance(example_input, torch.Tensor)
        else torch.rand(tuple(example_input), generator=torch.Generator().manual_seed(0)).to(p)
    )
    report = PruneReport(params_before=count_parameters(model))
    names = list(layers) if layers is not None else [
        n for n, m in model.named_modules() if isinstance(m, PRUNABLE)
    ]  # fmt: skip
    for name in names:
        producer = model.get_submodule(name)
        deps = _couplings(model, name, x)
        if deps is None:
            report.skipped[name] = "no consumer layer found (feeds the output directly)"
            continue
        n_out = producer.weight.shape[0]
        groups = _groups(deps, n_out)
        scores = _channel_scores(producer)
        gscore = torch.stack([scores[g].mean() for g in groups])
        if tau is not None:
            drop = [i for i in range(len(groups)) if float(gscore[i]) < tau]
        else:
            k = int(fraction * len(groups))
            drop = torch.argsort(gscore)[:k].tolist()
        drop = drop[: len(groups) - 1]  # never remove every channel
        if not drop:
            continue
        gone = sorted(c for i in drop for c in groups[i])
        keep_out = torch.tensor([c for c in range(n_out) if c not in set(gone)])
        trial = copy.deepcopy(model)
        _set(trial, name, slice_layer(producer, keep_out, None, fit_steps))
        for cname, mat in deps.items():
            cols_gone = mat[gone].any(dim=0)
            keep_in = torch.nonzero(~cols_gone).flatten()
            consumer = trial.get_submodule(cname)
            _set(trial, cname, slice_layer(consumer, None, keep_in, fit_steps))
        try:
            # torch.fx prints the whole traceback of a failing traced forward to stderr
            # before raising; the failure is expected here and recorded in the report.
            with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
                out = trial(x)
            ok = all(torch.isfinite(t).all() for t in _flat(out))
        except (RuntimeError, ValueError, IndexError) as exc:
            report.skipped[name] = f"surgery breaks the forward pass: {str(exc)[:120]}"
            continue
        if not ok:
            report.skipped[name] = "non-finite output after pruning"
            continue
        model = trial
        report.removed[name] = len(gone)
    report.params_after = count_parameters(model)
    return model, report


def _flat(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _flat(o)]
    return []
