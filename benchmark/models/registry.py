"""The model registry: pyiqa metrics, the project's zoo cards, and user plugins.

Names resolve in this order: a registered name (pyiqa metric, zoo card, entry point),
else a plugin path `path/to/file.py:Class` or `module:attr`.
"""

from __future__ import annotations

import contextlib
import functools
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from benchmark.errors import ConfigError, ModelUnavailable
from benchmark.models.base import IQAModel, ModelInfo
from benchmark.models.purified import parse_purified, purified_model
from benchmark.models.pyiqa_adapter import create_pyiqa_model, pyiqa_availability, pyiqa_info
from benchmark.params import count_parameters
from benchmark.paths import cache_dir
from benchmark.registry import Entry, Registry, load_target


@dataclass(frozen=True)
class ModelStatus:
    name: str
    source: str
    kind: str
    lower_better: bool | None
    usable: bool
    reason: str
    base: str | None = None  # the model a defense or RobustBlock conversion wraps


@functools.cache
def model_registry() -> Registry:
    reg = Registry("model", entry_point_group="benchmark.models")
    from benchmark.models.pyiqa_adapter import pyiqa_configs

    for name, cfg in pyiqa_configs().items():
        reg.register(
            name,
            functools.partial(create_pyiqa_model, name),
            source="pyiqa",
            kind=cfg.get("metric_mode", "NR"),
            lower_better=bool(cfg.get("lower_better", False)),
        )
    from benchmark.models.zoo import zoo_entries

    for name, target, meta in zoo_entries():
        reg.register(name, target, **meta)
    return reg


def is_plugin_path(name: str) -> bool:
    return ":" in name and name not in model_registry() and parse_purified(name) is None


def create_model(name: str, device: str | torch.device = "cpu") -> IQAModel:
    """Build any model by name; raises ModelUnavailable (with the reason) or UnknownNameError.

    `<purifier><param>+<base>` (e.g. `jpeg50+cnniqa-builtin`) puts a purification defense in
    front of any base model (benchmark.models.purified).
    """
    purified = parse_purified(name)
    if purified is not None:
        return purified_model(name, create_model(purified[2], device)).to(device)
    if is_plugin_path(name):
        model = wrap_plugin(load_target(name), name)
    else:
        entry = model_registry().get(name)
        obj = entry.load()
        model = (
            obj(device=device) if entry.meta.get("source") != "plugin" else wrap_plugin(obj, name)
        )
    return model.to(device)


def wrap_plugin(obj: Any, name: str) -> IQAModel:
    """A user's defense: an IQAModel, an nn.Module class/instance, or a callable x -> scores."""
    if isinstance(obj, type):
        try:
            obj = obj()
        except Exception as exc:
            raise ModelUnavailable(f"plugin {name!r} failed to construct: {exc}") from exc
    if isinstance(obj, IQAModel):
        return obj
    if not callable(obj):
        raise ConfigError(f"plugin {name!r} is not callable (got {type(obj).__name__})")
    attr = functools.partial(getattr, obj)
    kind = attr("kind", "NR")
    score_range = attr("score_range", None)
    info = ModelInfo(
        name=name,
        kind=kind,
        lower_better=bool(attr("lower_better", False)),
        score_range=tuple(score_range) if score_range is not None else None,
        source="plugin",
        params=count_parameters(obj),
        base=attr("base", None),
        description=(getattr(obj, "__doc__", "") or "").strip().split("\n")[0],
    )
    if isinstance(obj, nn.Module):
        for p in obj.parameters():
            p.requires_grad_(False)
        obj.eval()
    return IQAModel(obj, info)


def model_info_static(entry: Entry) -> dict[str, Any]:
    return dict(entry.meta)


def list_models(check: bool = True) -> list[ModelStatus]:
    """Every registered model and whether it can be built here (without building zoo/plugins)."""
    from benchmark.models.zoo import zoo_status

    avail = {}
    if check:
        with contextlib.redirect_stdout(io.StringIO()):  # pyiqa prints "Downloading: ..."
            avail = pyiqa_availability(cache_dir())
    out = []
    for entry in model_registry():
        meta = entry.meta
        source = meta.get("source", "plugin")
        if source == "pyiqa":
            a = avail.get(entry.name)
            usable, reason = (a.usable, a.reason) if a else (None, "not checked")
        elif source in ("zoo", "robustblock", "defense"):
            usable, reason = zoo_status(entry)
        else:
            usable, reason = True, f"entry point {entry.target}"
        out.append(
            ModelStatus(
                entry.name,
                source,
                meta.get("kind", "?"),
                meta.get("lower_better"),
                bool(usable),
                reason,
                meta.get("base"),
            )
        )
    return out


def resolve_model_names(
    spec: str, *, usable_only: Callable[[], list[ModelStatus]] = list_models
) -> list[str]:
    """`all` = every model usable here; else a comma-separated list (kept in order)."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise ConfigError("--models is empty")
    out: list[str] = []
    for n in names:
        if n == "all":
            out.extend(s.name for s in usable_only() if s.usable)
        elif n in ("all-nr", "all-fr"):
            out.extend(s.name for s in usable_only() if s.usable and s.kind == n[-2:].upper())
        else:
            base = n
            while (purified := parse_purified(base)) is not None:
                base = purified[2]
            if not is_plugin_path(base):
                model_registry().get(base)  # raises UnknownNameError with suggestions
            out.append(n)
    return list(dict.fromkeys(out))


def select_models(
    models: str | Sequence[str], exclude: str | Sequence[str] = ""
) -> tuple[str, ...]:
    """Models as every command and the API read them: names, `all`, `all-nr`, `all-fr`,
    purifier compositions and plugins (a comma list or a sequence), minus `exclude`."""
    spec = models if isinstance(models, str) else ",".join(models)
    drop = exclude if isinstance(exclude, str) else ",".join(exclude)
    excluded = set(resolve_model_names(drop)) if drop.strip() else set()
    names = tuple(m for m in resolve_model_names(spec) if m not in excluded)
    if not names:
        raise ConfigError(
            "no usable model matches --models (see `python -m benchmark list models`)"
        )
    return names


__all__ = [
    "ModelStatus",
    "create_model",
    "list_models",
    "model_registry",
    "pyiqa_info",
    "resolve_model_names",
    "select_models",
]
