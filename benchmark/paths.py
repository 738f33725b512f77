"""Where the benchmark keeps caches (built-in dataset, availability probe, attack artifacts)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def cache_dir() -> Path:
    """$BENCHMARK_CACHE, else ~/.cache/iqa-benchmark."""
    env = os.environ.get("BENCHMARK_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "iqa-benchmark"


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Write through `write(tmp)` to a temporary file beside `path`, then move it into place:
    readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; cache files are shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
