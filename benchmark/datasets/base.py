"""The dataset interface: an ordered collection of (image_id, image, mos, ref)."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


@dataclass
class Sample:
    image_id: str
    image: torch.Tensor  # (3, H, W) float32 in [0, 1]
    mos: float | None
    ref: torch.Tensor | None = None  # pristine reference for full-reference metrics


@dataclass
class Batch:
    ids: list[str]
    images: torch.Tensor  # (N, 3, H, W)
    mos: torch.Tensor  # (N,) float64, NaN where unknown
    refs: torch.Tensor | None  # (N, 3, H, W) or None when the dataset has no references


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    layout: str  # builtin | koniq10k | kadid10k | tid2013 | folder
    mos_range: tuple[float, float] | None  # None: the dataset has no MOS
    has_refs: bool
    split: str = "all"
    description: str = ""


class IQADataset(ABC):
    """Subclasses list their items cheaply (`ids`) and load images lazily (`load`).

    Unreadable images are logged and skipped by `__iter__`, never silently: the
    skipped ids are kept in `self.skipped` with the reason.
    """

    info: DatasetInfo

    def __init__(self) -> None:
        self.skipped: dict[str, str] = {}

    @property
    def name(self) -> str:
        return self.info.name

    @abstractmethod
    def ids(self) -> list[str]:
        """Image ids in a fixed order."""

    @abstractmethod
    def load(self, image_id: str) -> Sample:
        """Load one item; raises DataError naming the file when it cannot be read."""

    def group(self, image_id: str) -> str:
        """The image's content group (its source photograph or reference): images of one
        group are not independent, so intervals resample groups. Default: its own group."""
        return image_id

    def __len__(self) -> int:
        return len(self.ids())

    def __iter__(self) -> Iterator[Sample]:
        return self.iter_ids(self.ids())

    def iter_ids(self, ids: list[str]) -> Iterator[Sample]:
        """Load `ids` in order; unreadable files are recorded in `skipped` and logged."""
        from benchmark.errors import DataError

        for image_id in ids:
            try:
                yield self.load(image_id)
            except DataError as exc:
                if image_id not in self.skipped:  # once per dataset, not once per pass
                    log.warning("skipping %s: %s", image_id, exc)
                self.skipped[image_id] = str(exc)

    def batches(
        self, batch_size: int, limit: int | None = None, sample: int | None = None
    ) -> Iterator[Batch]:
        """Consecutive samples of equal shape, at most `batch_size` per batch.

        `limit` keeps the first N images; `sample` keeps N images evenly spaced over the
        split (splits are ordered by source photograph, so the first N may all be one).
        """
        buf: list[Sample] = []
        for n, item in enumerate(self.iter_ids(spread(self.ids(), sample))):
            if limit is not None and n >= limit:
                break
            if buf and (buf[0].image.shape != item.image.shape or len(buf) >= batch_size):
                yield collate(buf)
                buf = []
            buf.append(item)
        if buf:
            yield collate(buf)


def spread(ids: list[str], n: int | None) -> list[str]:
    """`n` ids evenly spaced over `ids` (all of them when n is None or >= len)."""
    if n is None or n >= len(ids):
        return list(ids)
    return [ids[(i * len(ids)) // n] for i in range(n)]


def collate(samples: list[Sample]) -> Batch:
    refs = [s.ref for s in samples]
    has_refs = all(r is not None for r in refs)
    return Batch(
        ids=[s.image_id for s in samples],
        images=torch.stack([s.image for s in samples]),
        mos=torch.tensor(
            [float("nan") if s.mos is None else s.mos for s in samples], dtype=torch.float64
        ),
        refs=torch.stack(refs) if has_refs else None,  # type: ignore[arg-type]
    )
