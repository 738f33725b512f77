"""What a run is: its configuration (hashed beside every cell) and its report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from benchmark.attacks.registry import expand_attack_sets
from benchmark.errors import ConfigError
from benchmark.store.cell import CellKey


@dataclass(frozen=True)
class RunConfig:
    """Everything a run depends on; what is recorded (hashed) beside each cell."""

    models: tuple[str, ...]
    attacks: tuple[str, ...]
    dataset: str = "builtin"
    split: str | None = None
    eps: tuple[float, ...] = ()  # empty: each attack card's default
    directions: tuple[str, ...] = ("up",)
    limit: int | None = None
    sample: int | None = None  # N images evenly spaced over the split
    seed: int = 0
    device: str = "cpu"
    batch_size: int | None = None  # None: measured per model (`benchmark.engine.batching`)
    params: dict[str, Any] = field(default_factory=dict)  # attack parameter overrides
    data_root: str | None = None
    attack_source: str | None = None  # transfer: craft on this model, score on each target

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be a positive integer, got {self.limit}")
        if self.sample is not None and self.sample < 1:
            raise ConfigError(f"--sample must be a positive integer, got {self.sample}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"--batch-size must be a positive integer, got {self.batch_size}")
        for d in self.directions:
            if d not in ("up", "down"):
                raise ConfigError(f"direction must be 'up' or 'down', got {d!r}")
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise ConfigError(f"--device must be cpu or cuda[:N], got {self.device!r}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError("--device cuda asked for, but torch sees no CUDA device here")


@dataclass
class RunReport:
    """What a run did, for the CLI's last lines and the exit code."""

    computed: list[CellKey] = field(default_factory=list)
    skipped: list[CellKey] = field(default_factory=list)
    failed: list[tuple[CellKey, str]] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)
    wall_s: float = 0.0


def resolve_attacks(spec: str) -> tuple[str, ...]:
    """`--attacks`: a comma list of preset names and named sets (`msu`: the MSU benchmark's
    nine), each expanded in place."""
    names = tuple(s.strip() for s in spec.split(",") if s.strip())
    if not names:
        raise ConfigError("--attacks is empty")
    return expand_attack_sets(names)
