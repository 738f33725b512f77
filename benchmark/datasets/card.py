"""Dataset cards (`datasets/*.toml`): strict parsing and data-root resolution.

A card says what a dataset is and where its files live; the layout code knows the file
and column names of the official release. Schema (unknown keys and wrong types are
`ConfigError`s naming the file):

    name        = "koniq10k"              # must equal the file name stem
    layout      = "koniq10k"              # builtin | koniq10k | kadid10k | tid2013 | folder
    root        = "~/data/koniq10k"       # where the release is unpacked (not used by builtin)
    description = "..."
    mos_range   = [1.0, 5.0]              # required for layouts with MOS, absent for folder
    url         = "https://..."           # where to download it
    citation    = "..."
    [splits]                              # optional: fractions by content group, sum 1
    train = 0.7
    test = 0.3
    [image]
    policy = "resize"                     # none | resize | center-crop | crop
    size = [384, 512]                     # [height, width]
    [[photos]]                            # builtin layout only: the source photographs
    name = "mate_aqua"                    # its folder in the built dataset
    origin = "deb"                        # deb (a Debian package) | wheel (an installed wheel)
    package = "mate-backgrounds"
    version = "1.26.0-1"                  # the version checked (a deb's sha256 is enforced)
    path = "usr/share/backgrounds/mate/nature/Aqua.jpg"   # inside the package
    license = "GPL-2+"                    # as the package's copyright file states it
    copyright = "2008, Charles Barbin"
    sha256 = "..."
    split = "test"                        # train | val | test
    group = "..."                         # optional: views of one scene share a group

A builtin card without `[[photos]]` is the default built-in dataset (the wheels'
photographs, `builtin.py`); with them, the dataset is built from exactly those (`debian.py`).

A relative `root` written in a card is relative to the card's folder; one given as an
argument, in the environment or as `folder:PATH` is relative to the current folder (an
installed package has no repository root to be relative to). The root can be overridden, in
this order, by the `root` argument of `create_dataset`, `$BENCHMARK_DATA_<NAME>` (name
upper-cased, non-alphanumerics as `_`) and `$BENCHMARK_DATA_DIR/<name>`.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.cards import check_fields, read_toml
from benchmark.datasets.images import POLICIES
from benchmark.errors import ConfigError

LAYOUTS = ("builtin", "koniq10k", "kadid10k", "tid2013", "folder")
_MOS_LAYOUTS = {"builtin", "koniq10k", "kadid10k", "tid2013"}
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
_SPLIT_RE = re.compile(r"^[a-z][a-z0-9_-]*$")

_CARD_SPEC = {
    "name": ((str,), True),
    "layout": ((str,), True),
    "root": ((str,), False),
    "description": ((str,), False),
    "mos_range": ((list,), False),
    "splits": ((dict,), False),
    "image": ((dict,), False),
    "url": ((str,), False),
    "citation": ((str,), False),
    "photos": ((list,), False),
}
_PHOTO_SPEC = {
    "name": ((str,), True),
    "origin": ((str,), True),
    "package": ((str,), True),
    "version": ((str,), True),
    "path": ((str,), True),
    "license": ((str,), True),
    "copyright": ((str,), False),
    "upstream_license": ((str,), False),
    "sha256": ((str,), True),
    "split": ((str,), True),
    "group": ((str,), False),
}
PHOTO_ORIGINS = ("deb", "wheel")
PHOTO_SPLITS = ("train", "val", "test")
_PHOTO_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_IMAGE_SPEC = {"policy": ((str,), True), "size": ((list,), False)}


@dataclass(frozen=True)
class PhotoRecord:
    """One source photograph of a builtin-layout card, with its provenance (data, not prose)."""

    name: str
    origin: str  # "deb" | "wheel"
    package: str
    version: str
    path: str  # inside the package (deb: the extracted tree; wheel: below site-packages)
    license: str
    sha256: str
    split: str
    group: str
    copyright: str = ""
    upstream_license: str = ""


@dataclass(frozen=True)
class DatasetCard:
    name: str
    layout: str
    root: str | None = None
    description: str = ""
    mos_range: tuple[float, float] | None = None
    splits: Mapping[str, float] = field(default_factory=dict)  # split -> fraction, in card order
    policy: str = "none"
    size: tuple[int, int] | None = None
    url: str = ""
    citation: str = ""
    path: Path | None = None  # the card file, None for `folder:PATH`
    photos: tuple[PhotoRecord, ...] = ()  # builtin layout: its own source photographs

    @property
    def env_var(self) -> str:
        return "BENCHMARK_DATA_" + re.sub(r"[^A-Za-z0-9]", "_", self.name).upper()

    def split_names(self) -> tuple[str, ...]:
        if self.layout == "builtin":
            return ("train", "val", "test")
        return tuple(self.splits)

    def default_split(self) -> str:
        """`test` where the dataset has one (benchmarks run on held-out content), else `all`."""
        return "test" if "test" in self.split_names() else "all"


def card_name_for(path: Path) -> str:
    """The name a card file must declare: `datasets/<name>.toml` or `datasets/<name>/card.toml`."""
    return path.parent.name if path.name == "card.toml" else path.stem


def read_dataset_card(path: Path) -> DatasetCard:
    """Parse and validate one card; every problem is a ConfigError naming `path`."""
    data = check_fields(read_toml(path), _CARD_SPEC, str(path))
    name, layout = data["name"], data["layout"]
    if not _NAME_RE.match(name):
        raise ConfigError(
            f"{path}: name {name!r} must be lower-case letters, digits, '_', '-', '.'"
        )
    if name != card_name_for(path):
        raise ConfigError(f"{path}: name {name!r} must equal the file name {card_name_for(path)!r}")
    if layout not in LAYOUTS:
        raise ConfigError(f"{path}: unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")
    if layout not in ("builtin",) and "root" not in data:
        raise ConfigError(f"{path}: layout {layout!r} needs a root")

    mos_range = None
    if "mos_range" in data:
        if layout == "folder":
            raise ConfigError(f"{path}: a folder dataset has no MOS, remove mos_range")
        mos_range = _parse_range(data["mos_range"], path)
    elif layout in _MOS_LAYOUTS:
        raise ConfigError(f"{path}: layout {layout!r} needs mos_range = [lo, hi]")

    splits = _parse_splits(data.get("splits", {}), path)
    if splits and layout == "builtin":
        raise ConfigError(
            f"{path}: the builtin dataset's splits are fixed by source photograph; remove [splits]"
        )

    policy, size = "none", None
    if "image" in data:
        image = check_fields(data["image"], _IMAGE_SPEC, f"{path} [image]")
        policy = image["policy"]
        if policy not in POLICIES:
            raise ConfigError(
                f"{path} [image]: policy {policy!r} must be one of {', '.join(POLICIES)}"
            )
        if "size" in image:
            raw = image["size"]
            if len(raw) != 2 or any(
                isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in raw
            ):
                raise ConfigError(
                    f"{path} [image]: size must be [height, width] of positive integers, got {raw!r}"
                )
            size = (raw[0], raw[1])
        if policy != "none" and size is None:
            raise ConfigError(f"{path} [image]: policy {policy!r} needs size = [height, width]")
        if policy == "none" and size is not None:
            raise ConfigError(f"{path} [image]: policy 'none' keeps the size; remove size")

    photos = _parse_photos(data.get("photos", []), path)
    if photos and layout != "builtin":
        raise ConfigError(f"{path}: [[photos]] is for the builtin layout only")

    return DatasetCard(
        name=name,
        layout=layout,
        root=data.get("root"),
        description=data.get("description", ""),
        mos_range=mos_range,
        splits=splits,
        policy=policy,
        size=size,
        url=data.get("url", ""),
        citation=data.get("citation", ""),
        path=path,
        photos=photos,
    )


def _parse_photos(raw: list[Any], path: Path) -> tuple[PhotoRecord, ...]:
    """Validate `[[photos]]`: unique names, known origins and splits, one split per group."""
    photos: list[PhotoRecord] = []
    split_of_group: dict[str, str] = {}
    for i, entry in enumerate(raw):
        where = f"{path} [[photos]] #{i + 1}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: must be a table")
        data = check_fields(entry, _PHOTO_SPEC, where)
        name = data["name"]
        if not _PHOTO_NAME_RE.match(name):
            raise ConfigError(f"{where}: name {name!r} must be letters, digits, '_', '-'")
        if data["origin"] not in PHOTO_ORIGINS:
            raise ConfigError(f"{where}: origin must be one of {', '.join(PHOTO_ORIGINS)}")
        if data["split"] not in PHOTO_SPLITS:
            raise ConfigError(f"{where}: split must be one of {', '.join(PHOTO_SPLITS)}")
        if not _SHA256_RE.match(data["sha256"]):
            raise ConfigError(f"{where}: sha256 must be 64 lower-case hex digits")
        rel = Path(data["path"])
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise ConfigError(f"{where}: path {data['path']!r} must be relative, without '..'")
        if any(p.name == name for p in photos):
            raise ConfigError(f"{where}: photo {name!r} is listed twice")
        group = data.get("group", name)
        if split_of_group.setdefault(group, data["split"]) != data["split"]:
            raise ConfigError(
                f"{where}: group {group!r} is in {split_of_group[group]!r} and {data['split']!r};"
                " a photograph's views must share a split"
            )
        photos.append(
            PhotoRecord(
                name=name,
                origin=data["origin"],
                package=data["package"],
                version=data["version"],
                path=data["path"],
                license=data["license"],
                sha256=data["sha256"],
                split=data["split"],
                group=group,
                copyright=data.get("copyright", ""),
                upstream_license=data.get("upstream_license", ""),
            )
        )
    return tuple(photos)


def _parse_range(raw: list[Any], path: Path) -> tuple[float, float]:
    ok = len(raw) == 2 and all(isinstance(v, int | float) and not isinstance(v, bool) for v in raw)
    if not ok or not all(math.isfinite(v) for v in raw) or raw[0] >= raw[1]:
        raise ConfigError(
            f"{path}: mos_range must be [lo, hi] with finite numbers lo < hi, got {raw!r}"
        )
    return float(raw[0]), float(raw[1])


def _parse_splits(raw: Mapping[str, Any], path: Path) -> dict[str, float]:
    splits: dict[str, float] = {}
    for key, value in raw.items():
        if not _SPLIT_RE.match(key) or key == "all":
            raise ConfigError(f"{path} [splits]: bad split name {key!r} ('all' is reserved)")
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
            raise ConfigError(f"{path} [splits]: {key} must be a fraction in (0, 1], got {value!r}")
        splits[key] = float(value)
    if splits and abs(sum(splits.values()) - 1.0) > 1e-6:
        raise ConfigError(f"{path} [splits]: fractions must sum to 1, got {sum(splits.values()):g}")
    return splits


def resolve_root(card: DatasetCard, override: str | os.PathLike[str] | None = None) -> Path:
    """The data root: argument, then $BENCHMARK_DATA_<NAME>, then $BENCHMARK_DATA_DIR/<name>, then card.

    Relative: a card's own `root` against the card's folder, anything else against the
    current folder.
    """
    base = Path.cwd()
    if override is not None:
        raw: str = os.fspath(override)
    elif os.environ.get(card.env_var):
        raw = os.environ[card.env_var]
    elif os.environ.get("BENCHMARK_DATA_DIR"):
        raw = os.path.join(os.environ["BENCHMARK_DATA_DIR"], card.name)
    elif card.root is not None:
        raw = card.root
        if card.path is not None:
            base = Path(card.path).parent
    else:
        raise ConfigError(f"dataset {card.name!r} has no root")
    root = Path(raw).expanduser()
    return root if root.is_absolute() else base / root


def assign_split(group: str, splits: Mapping[str, float]) -> str:
    """Deterministic split of a content group (reference image, or the image itself) by hash."""
    u = int.from_bytes(hashlib.sha256(group.encode("utf-8")).digest()[:8], "big") / 2**64
    acc = 0.0
    last = ""
    for name, fraction in splits.items():
        acc += fraction
        last = name
        if u < acc:
            return name
    return last
