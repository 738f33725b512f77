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

PACKAGE_DIR = Path(__file__).resolve().parent
# The checkout in a source tree or an editable install; site-packages in a regular install.
REPO_ROOT = PACKAGE_DIR.parent
# Where a built wheel carries the cards: setup.py's build_py copies the repository's
# attacks/*.toml, datasets/*.toml and models/<name>/{card.toml,checkpoint} here.
SHIPPED_DIR = PACKAGE_DIR / "shipped"
# Installed from a wheel: the package carries its cards. Otherwise the code runs from the
# checkout (a source tree or an editable install), whose own folders are the cards.
INSTALLED = SHIPPED_DIR.is_dir()
IN_CHECKOUT = not INSTALLED and (REPO_ROOT / "pyproject.toml").is_file()
_FOLDER_OF = {"model": "models", "attack": "attacks", "dataset": "datasets"}
# The shipped cards of each kind: `benchmark/shipped/<kind>s/` in an installed package,
# else the checkout's `<kind>s/` (the source of those copies).
CARD_DIRS = {
    kind: (SHIPPED_DIR if INSTALLED else REPO_ROOT) / folder for kind, folder in _FOLDER_OF.items()
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


# Extra folders of cards (os.pathsep-separated), searched after the shipped ones.
MODEL_DIRS_ENV = "BENCHMARK_MODEL_DIRS"
ATTACK_DIRS_ENV = "BENCHMARK_ATTACK_DIRS"
DATASET_DIRS_ENV = "BENCHMARK_DATASET_DIRS"
DIRS_ENV = {"model": MODEL_DIRS_ENV, "attack": ATTACK_DIRS_ENV, "dataset": DATASET_DIRS_ENV}


def card_folders(kind: str) -> list[Path]:
    """The shipped folder of `kind` (`CARD_DIRS`), then the user's folders from
    $BENCHMARK_MODEL_DIRS, $BENCHMARK_ATTACK_DIRS or $BENCHMARK_DATASET_DIRS.

    Why: a model trained with `train -o elsewhere/<name>` (an ablation, a private model), an
    attack preset or a dataset card of one's own should be usable by name without copying it
    into the package (or the repo, where `--models all` would pick it up for everyone). A
    name defined in two folders is an error naming both files, never a silent override.
    """
    if kind not in CARD_DIRS:
        raise ValueError(f"card kind must be one of {', '.join(CARD_DIRS)}, got {kind!r}")
    env = DIRS_ENV[kind]
    folders = [CARD_DIRS[kind]]
    for raw in os.environ.get(env, "").split(os.pathsep):
        if not raw.strip():
            continue
        folder = Path(raw).expanduser().resolve()
        if not folder.is_dir():
            raise ConfigError(f"{env}: {raw!r} is not a folder")
        if folder not in folders:
            folders.append(folder)
    return folders


def card_paths(kind: str) -> list[Path]:
    return [
        path
        for folder in card_folders(kind)
        for path in sorted(folder.glob("*.toml")) + sorted(folder.glob("*/card.toml"))
    ]
