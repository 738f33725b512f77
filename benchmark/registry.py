"""A small generic registry: name -> lazy factory + metadata.

Targets are `module:attr` strings imported only when an entry is loaded, so listing
never builds heavy objects. Plugins arrive through Python entry points.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import importlib.util
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.errors import ConfigError, UnknownNameError


@dataclass(frozen=True)
class Entry:
    name: str
    target: str | Callable[..., Any]
    meta: Mapping[str, Any] = field(default_factory=dict)

    def load(self) -> Callable[..., Any]:
        return load_target(self.target) if isinstance(self.target, str) else self.target


def load_target(target: str) -> Any:
    """Import `module:attr` or `path/to/file.py:attr`; a clear error if either half is wrong."""
    if ":" not in target:
        raise ConfigError(f"target {target!r} must look like 'module:attr' or 'file.py:attr'")
    module_part, attr = target.rsplit(":", 1)
    if module_part.endswith(".py"):
        path = Path(module_part).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(f"plugin file not found: {path}")
        mod_name = f"benchmark_plugin_{abs(hash(str(path)))}"
        module = sys.modules.get(mod_name)
        if module is None:
            spec = importlib.util.spec_from_file_location(mod_name, path)
            if spec is None or spec.loader is None:
                raise ConfigError(f"cannot import plugin file {path}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            try:
                spec.loader.exec_module(module)
            except Exception as exc:
                del sys.modules[mod_name]
                raise ConfigError(f"plugin file {path} failed to import: {exc}") from exc
    else:
        try:
            module = importlib.import_module(module_part)
        except ImportError as exc:
            raise ConfigError(f"cannot import {module_part!r} for {target!r}: {exc}") from exc
    try:
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError as exc:
        raise ConfigError(f"{module_part!r} has no attribute {attr!r}") from exc
    return obj


class Registry:
    """Name -> Entry, with suggestions for unknown names and entry-point discovery."""

    def __init__(self, kind: str, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._entries: dict[str, Entry] = {}
        self._discovered = False

    def register(self, name: str, target: str | Callable[..., Any], **meta: Any) -> Entry:
        if name in self._entries:
            first, second = _origin(self._entries[name].meta), _origin(meta)
            raise ConfigError(
                f"{self.kind} {name!r} is registered twice: by {first} and by {second}; "
                "rename one of them"
            )
        entry = Entry(name, target, dict(meta))
        self._entries[name] = entry
        return entry

    def _discover(self) -> None:
        if self._discovered or not self.entry_point_group:
            self._discovered = True
            return
        self._discovered = True
        for ep in importlib.metadata.entry_points(group=self.entry_point_group):
            if ep.name not in self._entries:
                self._entries[ep.name] = Entry(ep.name, ep.value, {"source": "plugin"})

    def __contains__(self, name: object) -> bool:
        self._discover()
        return name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        self._discover()
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def names(self) -> list[str]:
        return [e.name for e in self]

    def get(self, name: str) -> Entry:
        self._discover()
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(unknown_name_message(self.kind, name, self._entries)) from None


def _origin(meta: Mapping[str, Any]) -> str:
    """Where an entry came from, for error messages: its card file, else its source."""
    if meta.get("card"):
        return f"card {meta['card']}"
    return f"source {meta.get('source', 'unknown')!r}"


def unknown_name_message(kind: str, name: str, known: Any) -> str:
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown {kind} {name!r}{hint} (see `python -m benchmark list {kind}s`)"
