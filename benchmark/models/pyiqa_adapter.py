"""pyiqa metrics as IQAModels, and a fast offline check of which ones can be built.

Metrics are created with `as_loss=True, loss_reduction="none"`: pyiqa's default
(`as_loss=False`) wraps the forward in `torch.set_grad_enabled(False)`, which would
make every gradient attack silently find nothing. Their float64 convolutions run through
the FFT on the CPU (`benchmark.models.fftconv`): same numbers to float64 rounding, several times faster
forward+backward for SSIM, SSIM-C and MS-SSIM (docs/speed.md, scripts/fftconv_speed.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from benchmark.errors import ModelUnavailable
from benchmark.models.base import IQAModel, ModelInfo
from benchmark.models.fftconv import fast_float64_conv
from benchmark.models.offline import (
    explain_load_failure,
    no_downloads,
    pkg_resources_shim,
    standin_caches,
)
from benchmark.params import count_parameters
from benchmark.paths import atomic_write

log = logging.getLogger(__name__)


def parse_score_range(text: str | None) -> tuple[tuple[float, float] | None, bool]:
    """pyiqa writes ranges as free text ("0, 1", "~0, ~100", "0, ~"); return numbers or None.

    The flag says whether pyiqa marked either end as approximate ("~").
    """
    if not text or ";" in text or ":" in text:
        return None, False
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2:
        return None, False
    approx = any(p.startswith("~") for p in parts)
    try:
        lo, hi = (float(p.lstrip("~")) for p in parts)
    except ValueError:
        return None, approx
    return ((lo, hi), approx) if lo < hi else (None, approx)


def pyiqa_configs() -> dict[str, dict[str, Any]]:
    from pyiqa.default_model_configs import DEFAULT_CONFIGS

    return dict(DEFAULT_CONFIGS)


def pyiqa_info(name: str, params: int | None = None) -> ModelInfo:
    cfg = pyiqa_configs()[name]
    score_range, approx = parse_score_range(cfg.get("score_range"))
    return ModelInfo(
        name=name,
        kind=cfg.get("metric_mode", "NR"),
        lower_better=bool(cfg.get("lower_better", False)),
        score_range=score_range,
        source="pyiqa",
        params=params,
        description=f"pyiqa metric {cfg['metric_opts'].get('type', name)}",
        extra={"score_range_approximate": approx, "pyiqa_score_range": cfg.get("score_range")},
    )


# EOT draws per gradient for a metric that samples at random (crops, patches): each draw is
# one seeded evaluation of the whole metric, so an attack follows the expected score rather
# than one draw's crops (as for the random-resize purifier, benchmark.models.purified).
EOT_SAMPLES = 4
# Square sizes tried, smallest first, when a metric refuses a small image: the smallest that
# scores is the side images are upscaled to (bilinear, differentiable), and it is recorded.
SIZE_LADDER = (32, 64, 128, 224, 256, 384, 512)


def _grad_wanted(x: torch.Tensor) -> bool:
    return x.requires_grad and torch.is_grad_enabled()


def _image_key(x: torch.Tensor) -> int:
    """A seed from one image's pixels: its random crops depend on the image alone, not on
    its batch or on how many times the model was called."""
    pixels = x.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy().tobytes()
    return int.from_bytes(hashlib.blake2b(pixels, digest_size=7).digest(), "little")


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """torch, numpy and `random` seeded inside the block, the caller's streams untouched."""
    np_state, py_state = np.random.get_state(), random.getstate()
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


def _rng_states() -> tuple[torch.Tensor, Any, Any]:
    return torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()


def _rng_used(before: tuple[torch.Tensor, Any, Any]) -> bool:
    after = _rng_states()
    return not (
        torch.equal(before[0], after[0])
        and np.array_equal(before[1], after[1])
        and before[2] == after[2]
    )


class PyiqaNet(torch.nn.Module):
    """Calls the pyiqa network directly (keeps autograd on, no input-range asserts).

    Two policies, decided when the model is built (`fit_input_policy`) and recorded in its
    info: images whose short side is below `min_side` are upscaled to it (bilinear,
    differentiable), and a metric that draws random numbers is evaluated per image with the
    RNGs seeded from the image's pixels (the same image always scores the same), averaging
    `eot` seeded draws whenever an input gradient is taken (EOT).
    """

    def __init__(self, metric: torch.nn.Module, kind: str) -> None:
        super().__init__()
        self.metric = metric
        self.kind = kind
        self.min_side = 0
        self.stochastic = False
        self.eot = 1

    def _fit(self, t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None or min(t.shape[-2:]) >= self.min_side:
            return t
        scale = self.min_side / min(t.shape[-2:])
        size = [max(self.min_side, round(s * scale)) for s in t.shape[-2:]]
        return F.interpolate(t, size=size, mode="bilinear", align_corners=False)

    def _raw(self, x: torch.Tensor, ref: torch.Tensor | None) -> torch.Tensor:
        # Copies: some metrics (A-FINE) write into their input, which must neither change the
        # caller's images nor fail autograd on a leaf that requires grad.
        x, ref = x.clone(), (None if ref is None else ref.clone())
        with fast_float64_conv():
            out = self.metric(x, ref) if self.kind == "FR" else self.metric(x)
        out = out[0] if isinstance(out, tuple) else out
        out = torch.as_tensor(out, device=x.device)
        return out.reshape(x.shape[0], -1).mean(dim=1)

    def forward(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        draws = self.eot if _grad_wanted(x) else 1
        x, ref = self._fit(x), self._fit(ref)
        if not self.stochastic:
            return self._raw(x, ref)
        scores = []
        for i in range(x.shape[0]):
            xi, ri = x[i : i + 1], (None if ref is None else ref[i : i + 1])
            key = _image_key(xi)
            draw = []
            for k in range(draws):
                with _seeded(key + k, x.device):
                    draw.append(self._raw(xi, ri))
            scores.append(torch.stack(draw).mean(dim=0))
        return torch.cat(scores)


def _scores(net: PyiqaNet, side: int, device: torch.device) -> torch.Tensor | None:
    """The score of a fixed random side x side image, or None if the metric refuses it."""
    x = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(side)).to(device)
    try:
        with torch.no_grad():
            return net._raw(x, x.clone() if net.kind == "FR" else None)
    except (RuntimeError, ValueError, IndexError, AssertionError, ZeroDivisionError):
        return None


def fit_input_policy(net: PyiqaNet, device: torch.device) -> dict[str, Any]:
    """Find the smallest square input the metric scores and whether it samples at random.

    Why: pyiqa metrics crop, resize and sample in their own ways; a metric that refuses a
    small image would fail every cell, and one whose score changes from call to call would
    make clean and attacked scores incomparable (pyiqa issue 48). The smallest side is
    bisected between the ladder's rungs, so an image the metric accepts is never resized.
    One scoring of a fixed image per size tried, without gradient. Raises the metric's own
    error if no size scores.
    """
    prev = 0
    for side in SIZE_LADDER:
        before = _rng_states()
        out = _scores(net, side, device)
        if out is None:
            prev = side
            continue
        net.stochastic = _rng_used(before)
        lo, hi = prev, side  # lo refused (or 0), hi scores
        while hi - lo > 1 and lo > 0:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if _scores(net, mid, device) is not None else (mid, hi)
        net.min_side = hi if prev else 0
        net.eot = EOT_SAMPLES if net.stochastic else 1
        policy = (
            f"refuses a short side below {hi}: upscaled (bilinear) to it"
            if net.min_side
            else "any size"
        )
        if not torch.isfinite(out).all():
            policy += "; non-finite score on a random image"
        return {
            "input_policy": policy,
            "min_side": net.min_side,
            "stochastic": net.stochastic,
            "eot_samples": net.eot,
        }
    x = torch.rand(1, 3, SIZE_LADDER[-1], SIZE_LADDER[-1]).to(device)
    with torch.no_grad():  # raises the metric's own error
        net._raw(x, x.clone() if net.kind == "FR" else None)
    raise RuntimeError(f"no score for sides {SIZE_LADDER}")


def pyiqa_metric(name: str, device: str | torch.device = "cpu") -> torch.nn.Module:
    """pyiqa's own metric with gradients on, never downloading: what the adapter wraps, and
    the reference its numbers are tested against."""
    import pyiqa

    with no_downloads(), pkg_resources_shim():
        return pyiqa.create_metric(
            name, as_loss=True, loss_reduction="none", device=torch.device(device)
        )


def create_pyiqa_model(name: str, device: str | torch.device = "cpu") -> IQAModel:
    try:
        metric = pyiqa_metric(name, device)
    except Exception as exc:  # any constructor failure is "unavailable here", with the reason
        raise ModelUnavailable(
            f"pyiqa model {name!r} is unavailable: {explain_load_failure(exc)}"
        ) from exc
    metric.eval()
    for p in metric.parameters():
        p.requires_grad_(False)
    info = pyiqa_info(name, params=count_parameters(metric.net))
    net = PyiqaNet(metric, info.kind)
    try:
        policy = fit_input_policy(net, torch.device(device))
    except Exception as exc:  # built, but scores no image of any size tried
        raise ModelUnavailable(
            f"pyiqa model {name!r} builds but scores no image of sides {SIZE_LADDER}: "
            f"{explain_load_failure(exc)}"
        ) from exc
    extra = {**info.extra, **policy}
    if standin_caches():  # made by scripts/pyiqa_standins.py for tests: say so in every cell
        extra["standin_weights"] = True
    return IQAModel(net, replace(info, extra=extra))


@dataclass(frozen=True)
class Availability:
    usable: bool
    reason: str


def _weights_fingerprint() -> str:
    """Changes whenever files appear in the caches pyiqa, torchvision, timm or HF read."""
    import pyiqa

    hub = Path(torch.hub.get_dir())
    hf = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"
    h = hashlib.sha256(f"{pyiqa.__version__}|{torch.__version__}".encode())
    # Names and sizes only: probing itself touches files (torch.hub's trusted_list) and mtimes.
    for folder in (hub / "pyiqa", hub / "checkpoints", hf):
        if folder.is_dir():
            for entry in sorted(folder.iterdir()):
                h.update(f"{entry.name}:{entry.stat().st_size}".encode())
    if hub.is_dir():  # repositories that torch.hub.load would use
        h.update(":".join(sorted(e.name for e in hub.iterdir() if e.is_dir())).encode())
    try:
        import pkg_resources  # noqa: F401  (CLIP-based metrics import it)

        h.update(b"pkg_resources")
    except ImportError:
        pass
    return h.hexdigest()[:16]


def _probe(name: str) -> Availability:
    try:
        pyiqa_metric(name)
    except Exception as exc:
        return Availability(False, explain_load_failure(exc))
    return Availability(True, "weights present" if _needs_weights(name) else "no weights needed")


def _needs_weights(name: str) -> bool:
    return name not in CLASSICAL_METRICS


# Metrics computed by formula, with no learned weights (they run offline anywhere).
CLASSICAL_METRICS = frozenset(
    {
        "psnr",
        "psnry",
        "ssim",
        "ssimc",
        "ms_ssim",
        "cw_ssim",
        "fsim",
        "gmsd",
        "vif",
        "vsi",
        "nlpd",
        "mad",
        "piqe",
        "entropy",
    }
)


def pyiqa_availability(cache_dir: Path) -> dict[str, Availability]:
    """Which pyiqa metrics can be built here; cached until the weight caches change.

    A cache holding stand-in weights (random, made for tests by scripts/pyiqa_standins.py)
    makes no metric that needs weights usable: their scores mean nothing.
    """
    standins = standin_caches()
    if standins:
        why = f"only stand-in weights (random, for tests) in {standins[0]}: not usable"
        return {
            name: _probe(name) if not _needs_weights(name) else Availability(False, why)
            for name in pyiqa_configs()
        }
    cache_file = cache_dir / "pyiqa-availability.json"
    key = _weights_fingerprint()
    if cache_file.is_file():
        try:
            data = json.loads(cache_file.read_text())
            if data.get("key") == key:
                return {k: Availability(**v) for k, v in data["models"].items()}
        except (json.JSONDecodeError, KeyError, TypeError):
            log.warning("ignoring unreadable availability cache %s", cache_file)
    log.info("checking which pyiqa metrics can be built offline (once; cached in %s)", cache_file)
    loggers = [logging.getLogger(n) for n in ("pyiqa", "timm", "huggingface_hub")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = {name: _probe(name) for name in pyiqa_configs()}
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
    text = json.dumps({"key": key, "models": {k: vars(v) for k, v in result.items()}}, indent=1)
    atomic_write(cache_file, lambda tmp: tmp.write_text(text))
    return result
