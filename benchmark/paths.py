"""Where the benchmark keeps caches (built-in dataset, availability probe, attack artifacts)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$BENCHMARK_CACHE, else ~/.cache/iqa-benchmark."""
    env = os.environ.get("BENCHMARK_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "iqa-benchmark"
