"""Trainable NR architectures by name: pyiqa's (random init, offline) and our own.

Names: `cnniqa`, `wadiqam_nr`, `resnet_small` (ours), and `pyiqa:<ArchClass>` for any
architecture in pyiqa's ARCH_REGISTRY whose constructor works offline (built with
`pretrained=False` where it takes that argument, downloads refused).

Every zoo network maps a whole image (N,3,H,W) in [0,1] to one score per image and is
differentiable w.r.t. the input, because the benchmark attacks it with gradients. Patch
models are trained on small patches; `PatchAverage` makes them score whole images by
averaging a grid of patches *inside* the module, so the average stays in the graph.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.errors import ConfigError, ModelUnavailable
from benchmark.registry import unknown_name_message

PYIQA_PREFIX = "pyiqa:"


class PatchAverage(nn.Module):
    """Score = mean of `net` over a grid of `patch` x `patch` windows (stride `stride`).

    Inputs of exactly one patch go straight through (that is the training path: the
    trainer feeds random patches), larger ones are unfolded into patches; the last row
    and column of the grid are aligned to the border so that every pixel is covered.
    """

    def __init__(self, net: nn.Module, patch: int = 32, stride: int | None = None) -> None:
        super().__init__()
        if patch < 1 or (stride is not None and stride < 1):
            raise ConfigError(
                f"PatchAverage: patch and stride must be positive, got {patch}, {stride}"
            )
        self.net = net
        self.patch = int(patch)
        self.stride = int(stride or patch)

    def _starts(self, size: int) -> list[int]:
        starts = list(range(0, size - self.patch + 1, self.stride))
        if starts[-1] != size - self.patch:
            starts.append(size - self.patch)
        return starts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        p = self.patch
        if h < p or w < p:
            raise ConfigError(f"images must be at least {p}x{p} for this model, got {h}x{w}")
        if h == p and w == p:
            return self.net(x).reshape(n)
        ys, xs = self._starts(h), self._starts(w)
        patches = torch.stack([x[:, :, i : i + p, j : j + p] for i in ys for j in xs], dim=1)
        scores = self.net(patches.reshape(-1, c, p, p)).reshape(n, len(ys) * len(xs))
        return scores.mean(dim=1)


class MSCN(nn.Module):
    """Mean-subtracted contrast-normalised channels (BRISQUE; the LCN input of Kang's CNNIQA).

    Why: dividing out local mean and contrast removes most of the content, so a model
    trained on a few dozen photographs learns the distortion, not the photograph. The
    Gaussian window is a fixed, non-persistent buffer (not in checkpoints).
    """

    def __init__(self, size: int = 7, sigma: float = 7 / 6, c: float = 1 / 255) -> None:
        super().__init__()
        r = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
        g = torch.exp(-(r**2) / (2 * sigma**2))
        k = torch.outer(g, g) / torch.outer(g, g).sum()
        self.register_buffer("kernel", k.expand(3, 1, size, size).clone(), persistent=False)
        self.pad = size // 2
        self.c = float(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel.to(x.dtype)
        xp = F.pad(x, (self.pad,) * 4, mode="reflect")
        mu = F.conv2d(xp, k, groups=3)
        var = F.conv2d(xp * xp, k, groups=3) - mu * mu
        return (x - mu) / (torch.sqrt(var.clamp_min(0) + 1e-8) + self.c)


class WithMSCN(nn.Module):
    """Feeds `body` the MSCN channels (3), or raw and MSCN together (6) when `keep_raw`."""

    def __init__(self, body: nn.Module, keep_raw: bool = False) -> None:
        super().__init__()
        self.mscn = MSCN()
        self.body = body
        self.keep_raw = keep_raw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.mscn(x)
        return self.body(torch.cat([x - 0.5, m], dim=1) if self.keep_raw else m)


class _Block(nn.Module):
    """Pre-activation-free basic residual block (conv-BN-ReLU-conv-BN + shortcut)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.short: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.short = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.short(x))


class ResNetSmall(nn.Module):
    """Our compact NR model: a 4-stage ResNet, fully convolutional, mean+std pooled.

    `mscn=True` adds MSCN channels to the RGB input (see `MSCN`).

    Why this shape: it is cheap enough to train from scratch on 2 CPU cores, and being
    fully convolutional it scores any image size >= 32 px directly (no patch loop), with
    the global pooling acting as the patch average. Mean and standard deviation pooling
    together let the head see both the level of a feature and its spread over the image.
    """

    def __init__(
        self, widths: tuple[int, ...] | list[int] = (24, 48, 96, 128), mscn: bool = False
    ) -> None:
        super().__init__()
        self.mscn = MSCN() if mscn else None
        widths = [int(w) for w in widths]
        if len(widths) < 1 or min(widths) < 1:
            raise ConfigError(f"resnet_small: widths must be positive, got {widths}")
        self.stem = nn.Sequential(
            nn.Conv2d(6 if mscn else 3, widths[0], 3, 2, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
        )
        blocks = []
        c = widths[0]
        for i, w in enumerate(widths):
            blocks.append(_Block(c, w, 1 if i == 0 else 2))
            c = w
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Linear(2 * c, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inp = x - 0.5 if self.mscn is None else torch.cat([x - 0.5, self.mscn(x)], dim=1)
        h = self.blocks(self.stem(inp))
        flat = h.flatten(2)
        pooled = torch.cat([flat.mean(dim=2), flat.std(dim=2, unbiased=False)], dim=1)
        return self.head(pooled).reshape(-1)


def _cnniqa(
    patch: int | None = None, stride: int | None = None, mscn: bool = False, **kw: Any
) -> nn.Module:
    from pyiqa.archs.cnniqa_arch import CNNIQA

    net: nn.Module = CNNIQA(pretrained=None, **kw)
    if mscn:
        net = WithMSCN(net)
    return net if patch is None else PatchAverage(net, patch, stride)


def _wadiqam_nr(**kw: Any) -> nn.Module:
    """WaDIQaM-NR with He-initialised convolutions.

    Why: its 10-layer VGG has no BatchNorm, and with PyTorch's default init the signal
    dies on the way down: trained from scratch it collapsed to a constant output here.
    """
    from pyiqa.archs.wadiqam_arch import WaDIQaM

    net = WaDIQaM(metric_type="NR", pretrained=False, **kw)
    for m in net.features.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return net


def _resnet_small(patch: int | None = None, stride: int | None = None, **kw: Any) -> nn.Module:
    net = ResNetSmall(**kw)
    return net if patch is None else PatchAverage(net, patch, stride)


def core_module(net: nn.Module) -> nn.Module:
    """The network inside the patch-average and MSCN wrappers (where pyiqa weights go)."""
    while isinstance(net, PatchAverage | WithMSCN):
        net = net.net if isinstance(net, PatchAverage) else net.body
    return net


ARCHS: dict[str, Callable[..., nn.Module]] = {
    "cnniqa": _cnniqa,
    "wadiqam_nr": _wadiqam_nr,
    "resnet_small": _resnet_small,
}


def pyiqa_arch_class(class_name: str) -> type[nn.Module]:
    """A class from pyiqa's ARCH_REGISTRY, importing its module on demand."""
    import pyiqa.archs
    from pyiqa.utils.registry import ARCH_REGISTRY

    if class_name not in ARCH_REGISTRY:
        lazy = getattr(pyiqa.archs, "_lazy_import_arch", None)
        if lazy is not None:
            lazy(class_name)
    try:
        return ARCH_REGISTRY.get(class_name)
    except KeyError:
        known = list(getattr(ARCH_REGISTRY, "_obj_map", {}))
        raise ConfigError(unknown_name_message("pyiqa architecture", class_name, known)) from None


def _build_pyiqa(class_name: str, **params: Any) -> nn.Module:
    from benchmark.models.offline import explain_load_failure, no_downloads

    cls = pyiqa_arch_class(class_name)
    accepted = inspect.signature(cls.__init__).parameters
    if "pretrained" in accepted and "pretrained" not in params:
        # Some take a bool, others a weight-set key whose `None` means "no weights".
        default = accepted["pretrained"].default
        params = {**params, "pretrained": None if isinstance(default, str) else False}
    try:
        with no_downloads():
            return cls(**params)
    except TypeError as exc:
        raise ConfigError(
            f"pyiqa architecture {class_name}: bad parameters {params}: {exc}"
        ) from exc
    except Exception as exc:  # constructors fail offline in many ways; say which
        raise ModelUnavailable(
            f"pyiqa architecture {class_name} cannot be built here: {explain_load_failure(exc)}"
        ) from exc


def arch_names() -> list[str]:
    return [*ARCHS, f"{PYIQA_PREFIX}<ArchClass>"]


def build_arch(name: str, **params: Any) -> nn.Module:
    if name.startswith(PYIQA_PREFIX):
        return _build_pyiqa(name[len(PYIQA_PREFIX) :], **params)
    if name not in ARCHS:
        raise ConfigError(unknown_name_message("architecture", name, arch_names()))
    try:
        return ARCHS[name](**params)
    except TypeError as exc:
        raise ConfigError(f"architecture {name!r}: bad parameters {params}: {exc}") from exc
