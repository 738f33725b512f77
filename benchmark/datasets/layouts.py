"""Loaders for the official releases of real IQA datasets, and for plain image folders.

Each loader reads the release's own index file with its own column names, validates it
up front (missing column, non-numeric MOS, duplicate ids, paths escaping the root are
`DataError`s naming file and row) and loads images lazily. An image that is listed but
missing or unreadable makes `load` raise, so `IQADataset.__iter__` logs and records it
in `dataset.skipped` instead of stopping a benchmark.

Image ids are the file names as the release lists them (paths relative to the image
folder, with `/` separators), so results stay comparable across machines.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import ClassVar

import torch
from PIL import Image

from benchmark.datasets.base import DatasetInfo, IQADataset, Sample
from benchmark.datasets.card import DatasetCard, assign_split
from benchmark.datasets.images import load_image
from benchmark.errors import ConfigError, DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Item:
    image_id: str
    path: Path
    mos: float | None
    ref: Path | None
    group: str  # content group for splits: the reference image, or the image itself


def safe_relative(name: str, where: str) -> str:
    """Reject names that are absolute or climb out of their folder (`../../etc/passwd`)."""
    text = name.strip()
    posix = text.replace("\\", "/")
    parts = PurePosixPath(posix).parts
    bad = (
        not text
        or "\x00" in text
        or posix.startswith("/")
        or (len(posix) > 1 and posix[1] == ":")  # C:\...
        or ".." in parts
    )
    if bad:
        raise DataError(
            f"{where}: image name {name!r} is empty, absolute or outside the dataset root"
        )
    return "/".join(p for p in parts if p != ".")


def parse_mos(value: str | None, where: str) -> float:
    try:
        mos = float(value) if value is not None else math.nan
    except ValueError:
        mos = math.nan
    if not math.isfinite(mos):
        raise DataError(f"{where}: MOS {value!r} is not a finite number")
    return mos


class CardDataset(IQADataset):
    """Shared machinery: root checks, split selection, lazy loading with references."""

    layout: ClassVar[str]
    index_name: ClassVar[str]  # the release's score file, relative to the root
    release_hint: ClassVar[str]  # what to put under the root

    def __init__(self, card: DatasetCard, root: Path, split: str | None = None) -> None:
        super().__init__()
        self.card = card
        self.root = root
        self._last_ref: tuple[Path, torch.Tensor] | None = None
        split = card.default_split() if split is None else split
        if split != "all" and split not in card.split_names():
            choices = ", ".join(("all", *card.split_names()))
            raise ConfigError(
                f"dataset {card.name!r} has no split {split!r}; choose from {choices}"
            )
        self.check_root()
        items = self.read_index()
        if split != "all":
            items = [it for it in items if assign_split(it.group, card.splits) == split]
        self._items = {it.image_id: it for it in items}
        self._ids = [it.image_id for it in items]
        self.info = DatasetInfo(
            name=card.name,
            layout=card.layout,
            mos_range=card.mos_range,
            has_refs=any(it.ref is not None for it in items),
            split=split,
            description=card.description,
        )

    @classmethod
    def missing_message(cls, card: DatasetCard, root: Path) -> str:
        where = f" from {card.url}" if card.url else ""
        return (
            f"data not found: download {card.description or card.name}{where} and put "
            f"{cls.release_hint} under {root} (or set {card.env_var} or BENCHMARK_DATA_DIR)"
        )

    @classmethod
    def probe(cls, card: DatasetCard, root: Path) -> str | None:
        """Cheap usability check for listings: None if usable, else the reason."""
        if not (root / cls.index_name).is_file():
            return cls.missing_message(card, root)
        return None

    def check_root(self) -> None:
        reason = self.probe(self.card, self.root)
        if reason is not None:
            raise DataError(reason)

    @abstractmethod
    def read_index(self) -> list[Item]:
        """Parse and validate the release's index into items, in the release's order."""

    def ids(self) -> list[str]:
        return list(self._ids)

    def item(self, image_id: str) -> Item:
        try:
            return self._items[image_id]
        except KeyError:
            raise DataError(f"dataset {self.name!r} has no image {image_id!r}") from None

    def group(self, image_id: str) -> str:
        return self.item(image_id).group

    def load(self, image_id: str) -> Sample:
        it = self.item(image_id)
        image = load_image(it.path, self.card.policy, self.card.size)
        ref = None
        if it.ref is not None:
            # Items are listed reference by reference: keep the last one decoded.
            if self._last_ref is None or self._last_ref[0] != it.ref:
                self._last_ref = (it.ref, load_image(it.ref, self.card.policy, self.card.size))
            ref = self._last_ref[1].clone()
        return Sample(image_id=image_id, image=image, mos=it.mos, ref=ref)

    # -- helpers for subclasses --------------------------------------------------------

    def read_csv(self, path: Path, columns: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
        """Rows of a CSV with their line numbers; missing columns are a DataError."""
        try:
            with open(path, newline="", encoding="utf-8-sig") as fh:
                reader = csv.DictReader(fh)
                header = [h.strip() for h in (reader.fieldnames or [])]
                missing = [c for c in columns if c not in header]
                if missing:
                    raise DataError(
                        f"{path}: missing column(s) {', '.join(repr(c) for c in missing)} "
                        f"(found: {', '.join(header) or 'no header'})"
                    )
                reader.fieldnames = header
                rows = []
                for row in reader:
                    if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
                        continue  # blank line
                    rows.append((reader.line_num, row))
                return rows
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise DataError(f"{path}: cannot read CSV: {exc}") from exc

    def check_mos_range(self, mos: float, where: str) -> None:
        lo, hi = self.card.mos_range or (-math.inf, math.inf)
        if not lo <= mos <= hi:
            raise DataError(
                f"{where}: MOS {mos:g} is outside the card's mos_range [{lo:g}, {hi:g}] "
                "(wrong column or scale?)"
            )

    @staticmethod
    def check_duplicate(image_id: str, seen: dict[str, int], line: int, where: str) -> None:
        if image_id in seen:
            raise DataError(
                f"{where}: duplicate image {image_id!r} (first listed at row {seen[image_id]})"
            )
        seen[image_id] = line


class KonIQ10k(CardDataset):
    """KonIQ-10k (Hosu et al. 2020): in-the-wild photos, MOS on 1-5, no references."""

    layout = "koniq10k"
    index_name = "koniq10k_scores_and_distributions.csv"
    image_dirs = ("1024x768", "512x384")
    release_hint = (
        "koniq10k_scores_and_distributions.csv and the 1024x768/ (or 512x384/) image folder"
    )

    @classmethod
    def probe(cls, card: DatasetCard, root: Path) -> str | None:
        reason = super().probe(card, root)
        if reason is None and not any((root / d).is_dir() for d in cls.image_dirs):
            return (
                f"{root}: image folder 1024x768/ (or 512x384/) not found; "
                + cls.missing_message(card, root)
            )
        return reason

    def read_index(self) -> list[Item]:
        index = self.root / self.index_name
        image_dir = next(self.root / d for d in self.image_dirs if (self.root / d).is_dir())
        items: list[Item] = []
        seen: dict[str, int] = {}
        for line, row in self.read_csv(index, ("image_name", "MOS")):
            where = f"{index} row {line}"
            name = safe_relative(row["image_name"] or "", where)
            mos = parse_mos(row["MOS"], where)
            self.check_mos_range(mos, where)
            self.check_duplicate(name, seen, line, where)
            items.append(Item(name, image_dir / name, mos, None, name))
        return items


class KADID10k(CardDataset):
    """KADID-10k (Lin et al. 2019): 81 references x 25 distortions x 5 levels, DMOS 1-5 higher better."""

    layout = "kadid10k"
    index_name = "dmos.csv"
    release_hint = "dmos.csv and the images/ folder"

    def read_index(self) -> list[Item]:
        index = self.root / self.index_name
        image_dir = self.root / "images"
        items: list[Item] = []
        seen: dict[str, int] = {}
        for line, row in self.read_csv(index, ("dist_img", "ref_img", "dmos")):
            where = f"{index} row {line}"
            name = safe_relative(row["dist_img"] or "", where)
            ref = safe_relative(row["ref_img"] or "", where)
            mos = parse_mos(row["dmos"], where)
            self.check_mos_range(mos, where)
            self.check_duplicate(name, seen, line, where)
            items.append(
                Item(name, image_dir / name, mos, image_dir / ref, PurePosixPath(ref).stem)
            )
        return items


class TID2013(CardDataset):
    """TID2013 (Ponomarenko et al. 2015): 25 references x 24 distortions x 5 levels, MOS 0-9.

    File names differ in case between the index and the disk (`I01.BMP`, `i25.bmp`), so
    both folders are matched case-insensitively.
    """

    layout = "tid2013"
    index_name = "mos_with_names.txt"
    release_hint = "mos_with_names.txt and the distorted_images/ and reference_images/ folders"

    def read_index(self) -> list[Item]:
        index = self.root / self.index_name
        distorted = _casefold_listing(self.root / "distorted_images")
        references = _casefold_listing(self.root / "reference_images")
        try:
            lines = index.read_text(encoding="utf-8-sig", errors="strict").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{index}: cannot read: {exc}") from exc
        items: list[Item] = []
        seen: dict[str, int] = {}
        for line_no, text in enumerate(lines, start=1):
            if not text.strip():
                continue
            where = f"{index} row {line_no}"
            fields = text.split()
            if len(fields) != 2:
                raise DataError(f"{where}: expected 'MOS filename', got {text.strip()!r}")
            mos = parse_mos(fields[0], where)
            self.check_mos_range(mos, where)
            name = safe_relative(fields[1], where)
            self.check_duplicate(name.lower(), seen, line_no, where)
            ref_name = f"{name.split('_', 1)[0]}.bmp".lower()
            path = distorted.get(name.lower(), self.root / "distorted_images" / name)
            ref = references.get(ref_name, self.root / "reference_images" / ref_name.upper())
            items.append(Item(name, path, mos, ref, ref_name.split(".")[0]))
        return items


def _casefold_listing(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found (part of the dataset release)")
    return {entry.name.lower(): Path(entry.path) for entry in os.scandir(folder) if entry.is_file()}


def image_extensions() -> frozenset[str]:
    """File extensions PIL can open here (lower-case, with the dot)."""
    Image.init()
    return frozenset(ext.lower() for ext in Image.registered_extensions())


class FolderDataset(CardDataset):
    """Every image under a folder, recursively and sorted; no MOS, no references.

    Non-image files are skipped with a debug log; hidden files and folders (`.git`) are
    ignored; symlinked folders are not followed (no cycles).
    """

    layout = "folder"
    index_name = ""
    release_hint = "your images"

    @classmethod
    def probe(cls, card: DatasetCard, root: Path) -> str | None:
        if not root.is_dir():
            return f"image folder {root} not found"
        return None

    def read_index(self) -> list[Item]:
        exts = image_extensions()
        items: list[Item] = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for fname in sorted(filenames):
                path = Path(dirpath) / fname
                rel = path.relative_to(self.root).as_posix()
                if fname.startswith("."):
                    continue
                if path.suffix.lower() not in exts:
                    log.debug("folder %s: ignoring non-image file %s", self.root, rel)
                    continue
                # A name that is not valid UTF-8 (surrogate-escaped by os.walk) keeps its real
                # path but gets a printable id: ids are stored as UTF-8 text.
                image_id = rel.encode("utf-8", "surrogateescape").decode(
                    "utf-8", "backslashreplace"
                )
                items.append(Item(image_id, path, None, None, image_id))
        if not items:
            raise DataError(
                f"{self.root}: no image files found (looked recursively for {len(exts)} PIL formats)"
            )
        items.sort(key=lambda it: it.image_id)
        return items


def folder_card(path: str) -> DatasetCard:
    """The implicit card of `folder:PATH`: no MOS, images kept at their own size."""
    return DatasetCard(
        name=f"folder:{path}", layout="folder", root=path, description=f"images under {path}"
    )


LAYOUT_CLASSES: dict[str, type[CardDataset]] = {
    cls.layout: cls for cls in (KonIQ10k, KADID10k, TID2013, FolderDataset)
}
