"""Choose each model's attack batch size by measuring it on the device, not by a constant.

An iterative attack costs about k forward+backward passes of the model per batch, so its
throughput is that of one forward+backward at the batch size used. The best size differs
by orders of magnitude between a 0.7 M-parameter CNN on a 2-core CPU (saturated at a few
images) and a transformer on an H200 (hundreds). `choose_batch_size` times one
forward+backward per image at doubling sizes and keeps the smallest size within
`tolerance` of the fastest. It stops doubling when:

- the next size would not fit: CUDA runs out of memory, or the activations autograd keeps
  for backward (counted exactly with saved-tensor hooks) would pass `memory_fraction` of
  the device's free memory;
- throughput has stopped improving for two sizes in a row (saturated);
- one pass already takes `slow_s` (per-batch overheads are amortised, and probing larger
  batches of a slow model would cost more than it could save).

The measurement is cached on disk (`batch-sizes.json` in the benchmark cache) per model
fingerprint, input shape, device, thread count and torch version, so a rerun does not pay
for it again. Attack results do not depend on the batch (random starts are keyed per image),
only their float rounding does: fix `--batch-size` for bit-identical reruns.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from benchmark.models.base import IQAModel
from benchmark.paths import atomic_write

log = logging.getLogger(__name__)

MAX_BATCH = 256


@dataclass(frozen=True)
class BatchChoice:
    size: int
    why: str  # what ended the search
    per_image_ms: dict[int, float] = field(default_factory=dict)  # measured, per size
    cached: bool = False  # read from the cache file rather than measured now

    def to_dict(self) -> dict[str, object]:
        return {
            "size": self.size,
            "why": self.why,
            "per_image_ms": {str(k): round(v, 4) for k, v in self.per_image_ms.items()},
            "cached": self.cached,
        }

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> BatchChoice:
        per_image = {int(k): float(v) for k, v in dict(d["per_image_ms"]).items()}  # type: ignore[arg-type]
        return cls(int(d["size"]), str(d["why"]), per_image, cached=True)  # type: ignore[arg-type]


def free_memory_bytes(device: torch.device) -> int:
    """Memory a batch may still take: CUDA's free memory, or the host's MemAvailable."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30  # unknown: assume a small machine


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _pass(model: IQAModel, x: torch.Tensor, ref: torch.Tensor | None) -> int:
    """One forward+backward w.r.t. the input, as an attack step does; returns saved bytes."""
    saved = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    xi = x.detach().clone().requires_grad_(True)
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        q = model.quality(xi, ref)
    if q.requires_grad:
        (grad,) = torch.autograd.grad(q.sum(), xi, allow_unused=True)
        del grad
    return saved


def _repeat(x: torch.Tensor | None, n: int) -> torch.Tensor | None:
    if x is None:
        return None
    reps = -(-n // x.shape[0])
    return x.repeat(reps, 1, 1, 1)[:n]


def choose_batch_size(
    model: IQAModel,
    images: torch.Tensor,
    ref: torch.Tensor | None = None,
    max_size: int = MAX_BATCH,
    tolerance: float = 0.05,
    memory_fraction: float = 0.5,
    slow_s: float = 2.0,
    repeats: int = 2,
) -> BatchChoice:
    """The smallest batch size whose per-image forward+backward time is within `tolerance`
    of the fastest size that fits. `images` (and `ref`) are real images of the run, repeated
    to each probed size."""
    device = images.device
    max_size = max(1, int(max_size))
    budget = memory_fraction * free_memory_bytes(device)
    per_image: dict[int, float] = {}
    why = f"reached the largest useful size ({max_size})"
    size, stalled = 1, 0
    while True:
        x, r = _repeat(images, size), _repeat(ref, size)
        try:
            saved = _pass(model, x, r)  # warm-up: allocator, kernel selection, lazy caches
            times = []
            for _ in range(repeats):
                _sync(device)
                t0 = time.perf_counter()
                _pass(model, x, r)
                _sync(device)
                times.append(time.perf_counter() - t0)
        except torch.OutOfMemoryError:
            why = f"batch {size} ran out of device memory"
            if device.type == "cuda":
                torch.cuda.empty_cache()
            break
        t = statistics.median(times)
        best_before = min(per_image.values(), default=float("inf"))
        per_image[size] = 1000 * t / size
        stalled = 0 if per_image[size] < best_before * (1 - tolerance) else stalled + 1
        if size >= max_size:
            break
        if saved * min(2 * size, max_size) / size > budget:
            why = f"batch {min(2 * size, max_size)} would pass {memory_fraction:.0%} of free memory"
            break
        if stalled >= 2:
            why = "throughput saturated"
            break
        if t >= slow_s:
            why = f"one pass at batch {size} takes {t:.1f} s (overheads amortised)"
            break
        size = min(2 * size, max_size)
    if not per_image:  # even one image did not fit: let the attack say so itself
        return BatchChoice(1, why, per_image)
    best = min(per_image.values())
    chosen = min(s for s, v in per_image.items() if v <= best * (1 + tolerance))
    return BatchChoice(chosen, why, per_image)


def _probe_key(
    model: IQAModel, images: torch.Tensor, ref: torch.Tensor | None, max_size: int
) -> str:
    from benchmark.attacks.artifacts import model_fingerprint

    device = images.device
    if device.type == "cuda":
        hardware = torch.cuda.get_device_name(device)
    else:
        hardware = (
            f"{platform.machine()} {platform.processor()} {len(os.sched_getaffinity(0))} cpus"
        )
    record = [
        model_fingerprint(model),
        list(images.shape[1:]),
        ref is not None,
        device.type,
        hardware,
        torch.get_num_threads(),
        torch.__version__,
        max_size,
    ]
    return hashlib.sha256(json.dumps(record).encode()).hexdigest()[:24]


def measured_batch_size(
    model: IQAModel,
    images: torch.Tensor,
    ref: torch.Tensor | None,
    max_size: int,
    cache_file: Path | None,
) -> BatchChoice:
    """`choose_batch_size`, read from `cache_file` when this exact setting was measured before."""
    key = _probe_key(model, images, ref, max_size) if cache_file is not None else ""
    entries: dict[str, dict[str, object]] = {}
    if cache_file is not None and cache_file.is_file():
        try:
            entries = json.loads(cache_file.read_text())
            return BatchChoice.from_dict(entries[key])
        except KeyError:
            pass
        except (OSError, ValueError, TypeError) as exc:  # a damaged cache is measured again
            log.warning("ignoring the batch-size cache %s: %s", cache_file, exc)
            entries = {}
    choice = choose_batch_size(model, images, ref, max_size=max_size)
    if cache_file is not None:
        entries[key] = choice.to_dict()
        try:
            atomic_write(cache_file, lambda p: p.write_text(json.dumps(entries, indent=1)))
        except OSError as exc:
            log.warning("could not write the batch-size cache %s: %s", cache_file, exc)
    return choice


def parse_batch_size(text: str) -> int | None:
    """`auto` (measure per model) or a positive integer, for `--batch-size`."""
    from benchmark.errors import ConfigError

    if text.strip().lower() == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(
            f"--batch-size must be 'auto' or a positive integer, got {text!r}"
        ) from None
    if value < 1:
        raise ConfigError(f"--batch-size must be 'auto' or a positive integer, got {text!r}")
    return value
