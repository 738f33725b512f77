"""What is recorded beside every result: package versions, git revision, device, seed."""

from __future__ import annotations

import datetime as dt
import functools
import importlib.metadata
import platform
import subprocess
from typing import Any

import torch

from benchmark import __version__
from benchmark.cards import IN_CHECKOUT, REPO_ROOT

PACKAGES = (
    "torch",
    "torchvision",
    "pyiqa",
    "torchattacks",
    "numpy",
    "scipy",
    "h5py",
    "safetensors",
)


@functools.cache
def package_versions() -> dict[str, str]:
    out = {"benchmark": __version__, "torch_build": torch.__version__}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "missing"
    return out


@functools.cache
def git_revision() -> str:
    """HEAD of the checkout the code runs from, '+dirty' when tracked files differ; 'unknown'
    outside a git checkout (an installed wheel: site-packages may sit inside some other
    repository, whose revision says nothing about this code)."""
    if not IN_CHECKOUT:
        return "unknown"
    try:
        rev = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def run_meta(device: str, seed: int) -> dict[str, Any]:
    return {
        "versions": package_versions(),
        "git": git_revision(),
        "device": device_name(device),
        "python": platform.python_version(),
        "seed": seed,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"),
    }
