"""Fail fast instead of hanging on downloads: machines here reach no model hub.

`no_downloads()` turns every weight download pyiqa/torchvision/timm would start into an
immediate `MissingFile` that names the file and where to put it. Set
BENCHMARK_ALLOW_DOWNLOAD=1 on a machine with network to let pyiqa fetch its weights.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import types
from collections.abc import Iterator
from pathlib import Path

from benchmark.errors import ModelUnavailable

# A file of this name in a weight cache marks it as holding random stand-in weights (made by
# scripts/pyiqa_standins.py for tests): the availability probe never reports such a cache usable.
STANDIN_MARKER = "BENCHMARK-STAND-IN-WEIGHTS"

_HUB_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


class MissingFile(ModelUnavailable):
    def __init__(self, url: str, dest: str) -> None:
        self.url = url
        self.dest = dest
        super().__init__(
            f"weights not found: put {Path(dest).name} in {Path(dest).parent}/ (download it from {url})"
        )


def downloads_allowed() -> bool:
    return os.environ.get("BENCHMARK_ALLOW_DOWNLOAD", "") == "1"


def _refuse(url: str, dst: str, *args: object, **kwargs: object) -> None:
    raise MissingFile(url, dst)


@contextlib.contextmanager
def no_downloads() -> Iterator[None]:
    """Within the block, hub lookups are offline and URL downloads raise MissingFile."""
    if downloads_allowed():
        yield
        return
    import torch.hub

    saved_env = {k: os.environ.get(k) for k in _HUB_ENV}
    patched: list[tuple[object, str, object]] = [
        (torch.hub, "download_url_to_file", torch.hub.download_url_to_file)
    ]
    try:
        import pyiqa.utils.download_util as pyiqa_dl

        patched.append((pyiqa_dl, "download_url_to_file", pyiqa_dl.download_url_to_file))
    except ImportError:
        pass
    try:  # huggingface_hub reads HF_HUB_OFFLINE once, at import: flip its constant too
        import huggingface_hub.constants as hf_constants

        patched.append((hf_constants, "HF_HUB_OFFLINE", hf_constants.HF_HUB_OFFLINE))
    except ImportError:
        hf_constants = None
    os.environ.update(_HUB_ENV)
    for obj, attr, _ in patched:
        setattr(obj, attr, _refuse)
    if hf_constants is not None:
        hf_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        for obj, attr, original in patched:
            setattr(obj, attr, original)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def pkg_resources_shim() -> Iterator[None]:
    """Let openai-clip import where setuptools>=81 no longer ships `pkg_resources`.

    Why: `clip/clip.py` (the CLIP-based pyiqa metrics: clipiqa, clipscore, liqe, laion_aes,
    qualiclip, ...) does `from pkg_resources import packaging` only to compare torch versions.
    While the block runs, a missing `pkg_resources` is a module holding just `packaging`
    (the real package, which setuptools vendored); it is removed afterwards, so nothing
    outside a metric's construction sees it. A real `pkg_resources` is left alone.
    """
    if "pkg_resources" in sys.modules or importlib.util.find_spec("pkg_resources") is not None:
        yield
        return
    import packaging.version

    shim = types.ModuleType("pkg_resources")
    shim.packaging = packaging  # type: ignore[attr-defined]
    shim.__doc__ = "benchmark.models.offline shim: only `packaging`, for openai-clip"
    sys.modules["pkg_resources"] = shim
    try:
        yield
    finally:
        if sys.modules.get("pkg_resources") is shim:
            del sys.modules["pkg_resources"]


def standin_caches() -> list[Path]:
    """The weight caches in use that hold stand-in weights (scripts/pyiqa_standins.py)."""
    import torch.hub

    hub = Path(torch.hub.get_dir())
    hf = Path(
        os.environ.get("HF_HUB_CACHE")
        or Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"
    )
    return [d for d in (hub, hf) if (d / STANDIN_MARKER).is_file()]


def explain_load_failure(exc: BaseException) -> str:
    """One line a user can act on, from whatever a model constructor raised offline."""
    if isinstance(exc, MissingFile):
        return str(exc)
    name = type(exc).__name__
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, ModuleNotFoundError):
        if exc.name == "pkg_resources":
            return "needs pkg_resources, removed from setuptools>=81: pip install 'setuptools<81'"
        return f"needs the Python package {exc.name!r}: pip install {exc.name}"
    if name in ("LocalEntryNotFoundError", "OfflineModeIsEnabled") or "huggingface" in msg.lower():
        return (
            "weights not found in the Hugging Face cache (~/.cache/huggingface/hub): "
            "download them on a machine with network (BENCHMARK_ALLOW_DOWNLOAD=1) and copy the cache"
        )
    if name in ("URLError", "ConnectionError", "gaierror", "timeout"):
        return f"tries to download files at construction and no network is reachable ({name})"
    return f"{name}: {msg[:200]}"
