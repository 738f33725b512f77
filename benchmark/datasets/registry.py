"""Dataset registry: cards in `datasets/*.toml`, `folder:PATH`, and plugin entry points.

`list_datasets()` is cheap (it checks that index files exist, never parses them, never
builds the builtin dataset); `create_dataset()` validates and opens one.
Plugins register a factory `f(split: str | None, root: str | None) -> IQADataset`
under the entry-point group `benchmark.datasets`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from benchmark.cards import card_paths
from benchmark.datasets.base import DatasetInfo, IQADataset
from benchmark.datasets.card import DatasetCard, card_name_for, read_dataset_card, resolve_root
from benchmark.errors import BenchmarkError, ConfigError, UnknownNameError
from benchmark.registry import Registry, unknown_name_message

FOLDER_PREFIX = "folder:"
ENTRY_POINT_GROUP = "benchmark.datasets"


@dataclass(frozen=True)
class DatasetStatus:
    name: str
    info: DatasetInfo
    usable: bool
    reason: str  # why not usable, or where the data is
    splits: tuple[str, ...] = ()
    card: Path | None = None
    root: Path | None = None


def card_files() -> dict[str, Path]:
    """Card name -> file, from file names alone (nothing is parsed)."""
    files: dict[str, Path] = {}
    for path in card_paths("dataset"):
        name = card_name_for(path)
        if name in files:
            raise ConfigError(f"{path}: dataset {name!r} is already defined by {files[name]}")
        files[name] = path
    return files


def load_card(name: str) -> DatasetCard:
    """The parsed card of one dataset; ConfigError naming the file if it is malformed."""
    files = card_files()
    if name not in files:
        raise UnknownNameError(unknown_name_message("dataset", name, [*files, "folder:PATH"]))
    return read_dataset_card(files[name])


def _plugins() -> Registry:
    return Registry("dataset", ENTRY_POINT_GROUP)


def create_dataset(
    name: str, split: str | None = None, root: str | os.PathLike[str] | None = None
) -> IQADataset:
    """Open a dataset by card name, `folder:PATH`, or plugin name.

    `split=None` picks the benchmarking default: `test` where the dataset has splits,
    else `all`. `root` overrides where the data is (for `builtin`: the cache folder).
    """
    if name.startswith(FOLDER_PREFIX):
        from benchmark.datasets.layouts import FolderDataset, folder_card

        path = name[len(FOLDER_PREFIX) :]
        if not path:
            raise ConfigError("folder: needs a path, e.g. folder:/path/to/images")
        card = folder_card(path)
        return FolderDataset(card, resolve_root(card, root), split)

    files = card_files()
    if name in files:
        return open_card(read_dataset_card(files[name]), split, root)
    plugins = _plugins()
    if name in plugins:
        factory = plugins.get(name).load()
        dataset = factory(split=split, root=None if root is None else os.fspath(root))
        if not isinstance(dataset, IQADataset):
            raise ConfigError(
                f"dataset plugin {name!r} returned {type(dataset).__name__}, not an IQADataset"
            )
        return dataset
    known = [*files, *plugins.names(), "folder:PATH"]
    raise UnknownNameError(unknown_name_message("dataset", name, known))


def open_card(
    card: DatasetCard, split: str | None = None, root: str | os.PathLike[str] | None = None
) -> IQADataset:
    if card.layout == "builtin":
        from benchmark.datasets.builtin import BuiltinDataset, build_builtin

        cache = root if root is not None else card.root
        cache_dir = None if cache is None else os.path.expanduser(os.fspath(cache))
        if card.photos:  # its own photographs, some from Debian packages
            from benchmark.datasets.debian import build_photos

            path = build_photos(card, cache_dir)
        else:
            path = build_builtin(cache_dir=cache_dir)
        return BuiltinDataset(
            path,
            split,
            name=card.name,
            description=card.description,
            policy=card.policy,
            size=card.size,
        )
    from benchmark.datasets.layouts import LAYOUT_CLASSES

    return LAYOUT_CLASSES[card.layout](card, resolve_root(card, root), split)


def list_datasets() -> list[DatasetStatus]:
    """Every known dataset with whether it is usable here and why not; builds nothing."""
    statuses = []
    for name, path in card_files().items():
        try:
            statuses.append(card_status(read_dataset_card(path)))
        except ConfigError as exc:  # one broken card must not hide the others
            info = DatasetInfo(name, "unknown", None, False, "all", "")
            statuses.append(DatasetStatus(name, info, False, f"bad card: {exc}", (), path))
    for entry in _plugins():
        info = DatasetInfo(entry.name, "plugin", None, False, "all", "plugin dataset")
        statuses.append(DatasetStatus(entry.name, info, True, f"plugin {entry.target}"))
    return statuses


def card_status(card: DatasetCard) -> DatasetStatus:
    has_refs = card.layout in ("builtin", "kadid10k", "tid2013")
    info = DatasetInfo(
        card.name, card.layout, card.mos_range, has_refs, card.default_split(), card.description
    )
    splits = card.split_names()
    if card.layout == "builtin":
        from benchmark.datasets.builtin import builtin_status, default_dir

        cache = None if card.root is None else os.path.expanduser(card.root)
        if card.photos:
            from benchmark.datasets.debian import photos_status

            usable, reason = photos_status(card, cache)
            return DatasetStatus(card.name, info, usable, reason, splits, card.path)
        try:
            _, reason = builtin_status(cache)
            root: Path | None = default_dir(cache)
        except BenchmarkError as exc:
            return DatasetStatus(card.name, info, False, str(exc), splits, card.path)
        # Usable either way: it is generated on first use.
        return DatasetStatus(card.name, info, True, reason, splits, card.path, root)
    from benchmark.datasets.layouts import LAYOUT_CLASSES

    root = resolve_root(card)
    problem = LAYOUT_CLASSES[card.layout].probe(card, root)
    if problem is not None:
        return DatasetStatus(card.name, info, False, problem, splits, card.path, root)
    return DatasetStatus(card.name, info, True, f"found at {root}", splits, card.path, root)
