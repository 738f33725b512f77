"""TOML cards: the declarative half of the registries. Read strictly: unknown keys and
wrong types are errors that name the file, never silently ignored."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w

from benchmark.errors import ConfigError
from benchmark.paths import atomic_write

REPO_ROOT = Path(__file__).resolve().parent.parent
CARD_DIRS = {
    "model": REPO_ROOT / "models",
    "attack": REPO_ROOT / "attacks",
    "dataset": REPO_ROOT / "datasets",
}


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read card: {exc}") from exc


def write_toml(path: Path, data: Mapping[str, Any]) -> None:
    text = tomli_w.dumps(dict(data))
    atomic_write(path, lambda tmp: tmp.write_text(text))


# A field spec: key -> (allowed python types, required?)
FieldSpec = Mapping[str, tuple[tuple[type, ...], bool]]


def check_fields(data: Mapping[str, Any], spec: FieldSpec, where: str) -> dict[str, Any]:
    """Validate keys and types of one card table; bool is not accepted where a number is."""
    unknown = sorted(set(data) - set(spec))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(spec))}"
        )
    out: dict[str, Any] = {}
    for key, (types, required) in spec.items():
        if key not in data:
            if required:
                raise ConfigError(f"{where}: missing required key {key!r}")
            continue
        value = data[key]
        is_bool = isinstance(value, bool)
        if (is_bool and bool not in types) or not isinstance(value, types):
            names = "/".join(t.__name__ for t in types)
            raise ConfigError(
                f"{where}: key {key!r} must be {names}, got {type(value).__name__} {value!r}"
            )
        out[key] = value
    return out


# Extra folders of model cards (os.pathsep-separated), searched after `models/`.
MODEL_DIRS_ENV = "BENCHMARK_MODEL_DIRS"


def card_folders(kind: str) -> list[Path]:
    """`models/` etc. in the repo, plus for models the folders in $BENCHMARK_MODEL_DIRS.

    Why: a model trained with `train -o elsewhere/<name>` (an ablation, a private model)
    should be usable by name without copying it into the repo, where `--models all` would
    pick it up for everyone.
    """
    folders = [CARD_DIRS[kind]]
    if kind == "model":
        for raw in os.environ.get(MODEL_DIRS_ENV, "").split(os.pathsep):
            if not raw.strip():
                continue
            folder = Path(raw).expanduser().resolve()
            if not folder.is_dir():
                raise ConfigError(f"{MODEL_DIRS_ENV}: {raw!r} is not a folder")
            folders.append(folder)
    return folders


def card_paths(kind: str) -> list[Path]:
    return [
        path
        for folder in card_folders(kind)
        for path in sorted(folder.glob("*.toml")) + sorted(folder.glob("*/card.toml"))
    ]
