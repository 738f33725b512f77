"""pyiqa metrics as IQAModels, and a fast offline check of which ones can be built.

Metrics are created with `as_loss=True, loss_reduction="none"`: pyiqa's default
(`as_loss=False`) wraps the forward in `torch.set_grad_enabled(False)`, which would
make every gradient attack silently find nothing. Their float64 convolutions run through
the FFT on the CPU (`benchmark.models.fftconv`): same numbers to float64 rounding, several times faster
forward+backward for SSIM, SSIM-C and MS-SSIM (docs/speed.md, scripts/fftconv_speed.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmark.errors import ModelUnavailable
from benchmark.models.base import IQAModel, ModelInfo
from benchmark.models.fftconv import fast_float64_conv
from benchmark.models.offline import explain_load_failure, no_downloads
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


class PyiqaNet(torch.nn.Module):
    """Calls the pyiqa network directly (keeps autograd on, no input-range asserts)."""

    def __init__(self, metric: torch.nn.Module, kind: str) -> None:
        super().__init__()
        self.metric = metric
        self.kind = kind

    def forward(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        with fast_float64_conv():
            out = self.metric(x, ref) if self.kind == "FR" else self.metric(x)
        return out[0] if isinstance(out, tuple) else out


def pyiqa_metric(name: str, device: str | torch.device = "cpu") -> torch.nn.Module:
    """pyiqa's own metric with gradients on, never downloading: what the adapter wraps, and
    the reference its numbers are tested against."""
    import pyiqa

    with no_downloads():
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
    return IQAModel(PyiqaNet(metric, info.kind), info)


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
    """Which pyiqa metrics can be built here; cached until the weight caches change."""
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
