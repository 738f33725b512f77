"""In-memory form of one stored cell: what the store writes and the leaderboard reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from benchmark.budget import budget_label

Status = Literal["done", "not_applicable", "failed"]

# Per-image arrays of a cell, in this order on disk.
PER_IMAGE_FIELDS = ("mos", "clean", "attacked", "linf", "l2", "psnr", "ssim", "seconds")
# Per-image arrays a cell may lack (None): cells stored before they existed, and `queries`
# for attacks that do not count model evaluations. Readers that predate them ignore them.
OPTIONAL_PER_IMAGE_FIELDS = ("l0", "queries")  # pixels changed; score queries per image
# Attack presets that need no input gradient, for cells stored before the runner recorded
# `gradient_free` (from AttackInfo) in the attack config.
KNOWN_GRADIENT_FREE = frozenset({"square"})
# Per-image arrays of a smoothed model's certificate (`CellResult.certified`), all optional:
# certified lower/upper bound of the smoothed score (raw units) at the L2 radius that contains
# the cell's threat, the same at L2 radius eps, that radius, noise samples, abstained (0/1).
CERTIFIED_FIELDS = ("lower", "upper", "lower_l2eps", "upper_l2eps", "radius", "n_samples",
                    "abstain")  # fmt: skip


@dataclass(frozen=True, order=True)
class CellKey:
    """One unit of work: a model attacked by one preset at one budget on one dataset."""

    model: str
    dataset: str
    attack: str
    eps: float
    direction: str = "up"

    @property
    def eps_label(self) -> str:
        return budget_label(self.eps)

    def __str__(self) -> str:
        return f"{self.model} | {self.dataset} | {self.attack} @ {self.eps_label} {self.direction}"


@dataclass
class CellResult:
    """Per-image raw scores (model's own units and orientation) plus provenance.

    `clean`/`attacked` are raw model outputs; scores.py turns them into quality-up,
    normalised values using `model_info["lower_better"]` and `model_info["score_range"]`.
    For status "not_applicable" (e.g. a gradient attack on a model without input
    gradient) `attacked` and the distance arrays are NaN; `clean` is still filled.
    """

    key: CellKey
    status: Status
    image_id: np.ndarray  # str
    mos: np.ndarray
    clean: np.ndarray
    attacked: np.ndarray
    linf: np.ndarray
    l2: np.ndarray
    psnr: np.ndarray
    ssim: np.ndarray
    seconds: np.ndarray
    model_info: dict[str, Any]
    attack_config: dict[str, Any]
    gradient: Literal["ok", "none"] = "ok"
    reason: str = ""
    meta: dict[str, Any] = field(default_factory=dict)  # versions, git, device, wall time, seed
    # For trained (universal/generative) attacks: the first image's perturbation, mapped from
    # [-eps, eps] to uint8 (H, W, 3), so the leaderboard can show what the attack learned.
    example_delta: np.ndarray | None = None
    # Pixels changed per image (L0), and model evaluations per image for score-based attacks.
    l0: np.ndarray | None = None
    queries: np.ndarray | None = None

    # Each image's group, its source photograph (images cut from one photograph are not
    # independent: intervals resample groups); None for cells stored before groups were.
    group: np.ndarray | None = None

    # For a smoothed model (benchmark.models.smoothing): the certificate of each image, keyed
    # by CERTIFIED_FIELDS; None for every other cell and for cells stored before it existed.
    certified: dict[str, np.ndarray] | None = None

    # The per-cell scores (`report.tables.cell_summary`) computed when the cell was written,
    # so a leaderboard need not recompute them; None for cells stored without one.
    summary: dict[str, Any] | None = None

    def __len__(self) -> int:
        return int(self.image_id.shape[0])

    def load(self) -> CellResult:
        """This cell (a `StoredCell` reads its arrays here; a `CellResult` has them)."""
        return self

    @property
    def has_example(self) -> bool:
        return self.example_delta is not None

    @property
    def uses_gradient(self) -> bool:
        """Whether the attack needs the model's input gradient: the one rule the leaderboard,
        `compare` and the attack sanity checks share. The recorded `gradient_free` decides;
        older files without it fall back to the family, a BPDA surrogate, or the preset name."""
        cfg = self.attack_config
        if "gradient_free" in cfg:
            return not bool(cfg["gradient_free"])
        params = cfg.get("params") or {}
        if cfg.get("family") == "query" or cfg.get("bpda") or params.get("bpda"):
            return False
        return not ({str(cfg.get("name", "")), self.key.attack} & KNOWN_GRADIENT_FREE)


# Fields a `StoredCell` reads from the file only when asked (the per-image arrays).
LAZY_FIELDS = (
    "image_id", *PER_IMAGE_FIELDS, *OPTIONAL_PER_IMAGE_FIELDS, "example_delta", "group", "certified"
)  # fmt: skip


class StoredCell:
    """A stored cell's header (key, status, configs, provenance, stored summary) whose
    per-image arrays are read from the file on access, not kept.

    Why: a leaderboard of 10,000 cells of 2,000 images needs each cell's summary, not its
    arrays (1.3 GB of them); the few views that need arrays (paired checks, plots) read
    them when they ask. Same attribute names as `CellResult`, so the report takes either;
    `load()` gives the full cell once for repeated access.
    """

    def __init__(
        self,
        key: CellKey,
        status: Status,
        gradient: Literal["ok", "none"],
        reason: str,
        model_info: dict[str, Any],
        attack_config: dict[str, Any],
        meta: dict[str, Any],
        summary: dict[str, Any] | None,
        n_images: int,
        has_example: bool,
        loader: Any,
    ) -> None:
        self.key = key
        self.status = status
        self.gradient = gradient
        self.reason = reason
        self.model_info = model_info
        self.attack_config = attack_config
        self.meta = meta
        self.summary = summary
        self.n_images = n_images
        self.has_example = has_example
        self._loader = loader

    def load(self) -> CellResult:
        """The full cell, read from the file now."""
        return self._loader()

    def __getattr__(self, name: str) -> Any:
        if name in LAZY_FIELDS:
            return getattr(self.load(), name)
        raise AttributeError(name)

    def __len__(self) -> int:
        return self.n_images

    uses_gradient = CellResult.uses_gradient


# What the report reads: a cell with its arrays, or a stored header that reads them on access.
Cell = CellResult | StoredCell
