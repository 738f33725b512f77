"""Trainable NR architectures by name: pyiqa's (random init, offline) and our own."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from benchmark.errors import ConfigError
from benchmark.registry import unknown_name_message


def _cnniqa(**kw: Any) -> nn.Module:
    from pyiqa.archs.cnniqa_arch import CNNIQA

    return CNNIQA(pretrained=False, **kw)


def _wadiqam_nr(**kw: Any) -> nn.Module:
    from pyiqa.archs.wadiqam_arch import WaDIQaM

    return WaDIQaM(metric_type="NR", pretrained=False, **kw)


ARCHS: dict[str, Callable[..., nn.Module]] = {
    "cnniqa": _cnniqa,
    "wadiqam_nr": _wadiqam_nr,
}


def build_arch(name: str, **params: Any) -> nn.Module:
    if name not in ARCHS:
        raise ConfigError(unknown_name_message("architecture", name, ARCHS))
    try:
        return ARCHS[name](**params)
    except TypeError as exc:
        raise ConfigError(f"architecture {name!r}: bad parameters {params}: {exc}") from exc
