"""In-memory form of one stored cell: what the store writes and the leaderboard reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from benchmark.budget import budget_label

Status = Literal["done", "not_applicable", "failed"]

# Per-image arrays of a cell, in this order on disk.
PER_IMAGE_FIELDS = ("mos", "clean", "attacked", "linf", "l2", "psnr", "ssim", "seconds")
# Attack presets that need no input gradient, for cells stored before the runner recorded
# `gradient_free` (from AttackInfo) in the attack config.
KNOWN_GRADIENT_FREE = frozenset({"square"})


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

    def __len__(self) -> int:
        return int(self.image_id.shape[0])

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
