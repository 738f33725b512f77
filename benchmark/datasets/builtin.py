"""The built-in dataset: the offline default, generated once from photos in installed wheels.

Why: a benchmark must run on a machine with no network and no licensed datasets. This
module cuts pristine photographs that ship inside installed packages into crops,
distorts them KADID-style (`distortions.py`, 16 types x 5 levels) and labels every image
with a **pseudo-MOS** from offline full-reference metrics. The pseudo-MOS stands in for
human opinion scores; it is not one.

Sources (all loaded from files, no network): scikit-image's data photographs (colour:
astronaut, chelsea, coffee, rocket, hubble_deep_field, ihc, retina, motorcycle_left and
motorcycle_right; grey: camera, coins, moon, brick, grass, gravel), matplotlib's
grace_hopper.jpg, and the five pristine TID2013/KADID reference photos (I03, I04, I06,
I08, I19) that pyiqa's wheel installs in `site-packages/ResultsCalibra/ref_dir`. A
missing source is skipped with a warning; the recipe hash (and so the cache folder) then
differs, so a partial build is never mistaken for the full one.

Recipe: each source is downscaled (Lanczos) so its short side is at most 384 px, which
also hides its own compression noise; `crops_per_source` 192x192 crops are taken where
the mean luma gradient is highest (textured content, not flat sky or black borders),
overlapping at most 30%. Each crop is distorted by every distortion at every level (colour-only
distortions are skipped for grey sources); the crop itself is kept as the pristine item
(distortion `none`, level 0, MOS 1). Random distortions (noise, motion-blur angle...)
are seeded from sha256(source, crop, distortion): all levels share the pattern and differ
only in strength.

Pseudo-MOS (1 = pristine quality, 0 = as bad as the worst anchors)::

    q_m = clip((v_m - worst_m) / (ideal_m - worst_m), 0.05, 1)     for each metric m
    G   = (prod_m q_m) ** (1 / M)                                  geometric mean
    MOS = (G - 0.05) / (1 - 0.05)

with metrics (value for a pristine image -> anchor of "worst"):

    ms_ssim       MS-SSIM on Y (pyiqa's `ms_ssim` function, float32)   1 -> 0.5
    fsim          FSIMc (pyiqa `fsim`, chromatic)                      1 -> 0.5
    gmsd          GMSD (pyiqa `gmsd`)                                  0 -> 0.30
    nlpd          NLPD (pyiqa `nlpd`)                                  0 -> 0.80
    ciede2000_lp  mean CIEDE2000 between 4x4 area-averaged images      0 -> 20

The last term is an S-CIELAB-like colour/tone fidelity: averaging before Lab removes
zero-mean noise, so it measures colour, brightness and contrast shifts that the four
luma-structure metrics barely see (SSIM-like metrics give near-flat labels for
desaturation or colour casts). The geometric mean lets a large deficit on any one axis
pull quality down, which a plain average would dilute 1:4. Anchors were set near the
1st/99th percentile of each metric over the strongest distortions. pyiqa's MS-SSIM
wrapper casts to float64, which is much slower on CPU with values equal to 4 decimals,
so the same pyiqa function is called on float32 input.

Splits are by source photograph (the two motorcycle views are one group): `test`
= chelsea, coffee, camera, I08; `val` = rocket, grass; `train` = the rest. With the
default recipe that is 628 test, 304 val and 2350 train images.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from multiprocessing import current_process, get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from benchmark.datasets.base import DatasetInfo, IQADataset, Sample
from benchmark.datasets.distortions import DISTORTIONS, get_distortion
from benchmark.datasets.images import load_image, to_rgb8
from benchmark.datasets.layouts import parse_mos, safe_relative
from benchmark.errors import ConfigError, DataError

log = logging.getLogger(__name__)

BUILTIN_VERSION = 1  # bump whenever the recipe changes in a way the config does not capture
SPLITS = ("train", "val", "test")
TEST_GROUPS = ("chelsea", "coffee", "camera", "I08")
VAL_GROUPS = ("rocket", "grass")
MIN_MS_SSIM_SIZE = 161  # MS-SSIM's 5 scales with an 11x11 window need >= 161 px
EPS = 0.05  # floor of each normalised metric (geometric mean of zeros is undefined)
SECONDS_PER_IMAGE = 0.1  # single-core cost of the metrics per image, for time estimates

INDEX_COLUMNS = (
    "image_id",
    "source",
    "group",
    "crop",
    "box",
    "distortion",
    "level",
    "split",
    "ref_id",
    "mos",
)


@dataclass(frozen=True)
class MetricSpec:
    name: str
    ideal: float  # value for an undistorted image
    worst: float  # value mapped to the floor EPS
    description: str

    def normalise(self, value: np.ndarray) -> np.ndarray:
        q = (np.asarray(value, dtype=np.float64) - self.worst) / (self.ideal - self.worst)
        return np.clip(q, EPS, 1.0)


METRICS: dict[str, MetricSpec] = {
    m.name: m
    for m in (
        MetricSpec("ms_ssim", 1.0, 0.5, "MS-SSIM on luma (pyiqa)"),
        MetricSpec("fsim", 1.0, 0.5, "FSIMc (pyiqa)"),
        MetricSpec("gmsd", 0.0, 0.30, "GMSD (pyiqa)"),
        MetricSpec("nlpd", 0.0, 0.80, "NLPD (pyiqa)"),
        MetricSpec(
            "ciede2000_lp", 0.0, 20.0, "mean CIEDE2000 of 4x4 area-averaged images (scikit-image)"
        ),
    )
}


def pseudo_mos(values: dict[str, np.ndarray]) -> np.ndarray:
    """Combine raw metric values into the pseudo-MOS (module docstring has the formula)."""
    if not values:
        raise ConfigError("pseudo-MOS needs at least one metric")
    logs = [np.log(METRICS[name].normalise(v)) for name, v in values.items()]
    g = np.exp(np.mean(logs, axis=0))
    return np.clip((g - EPS) / (1.0 - EPS), 0.0, 1.0)


# -- sources ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    name: str
    group: str  # split unit: views of one scene share a group
    path: Path
    package: str
    split: str | None = None  # None: the default recipe's split of `group` (split_of)

    def split_name(self) -> str:
        return self.split if self.split is not None else split_of(self.group)


_SKIMAGE_FILES = {
    "astronaut": "astronaut.png",
    "chelsea": "chelsea.png",
    "coffee": "coffee.png",
    "rocket": "rocket.jpg",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "ihc": "ihc.png",
    "retina": "retina.jpg",
    "motorcycle_left": "motorcycle_left.png",
    "motorcycle_right": "motorcycle_right.png",
    "camera": "camera.png",
    "coins": "coins.png",
    "moon": "moon.png",
    "brick": "brick.png",
    "grass": "grass.png",
    "gravel": "gravel.png",
}
_TID_REFS = ("I03", "I04", "I06", "I08", "I19")
_GROUPS = {"motorcycle_left": "motorcycle", "motorcycle_right": "motorcycle"}


def _package_dir(package: str) -> Path | None:
    """A package's folder without importing it (listing must stay fast)."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def all_sources() -> list[Source]:
    """Every source this recipe knows, whether or not its file exists here."""
    sources: list[Source] = []
    sk = _package_dir("skimage")
    for name, fname in _SKIMAGE_FILES.items():
        path = (sk / "data" / fname) if sk else Path("skimage-not-installed") / fname
        sources.append(Source(name, _GROUPS.get(name, name), path, "scikit-image"))
    mpl = _package_dir("matplotlib")
    path = (
        mpl / "mpl-data" / "sample_data" / "grace_hopper.jpg"
        if mpl
        else Path("matplotlib-not-installed")
    )
    sources.append(Source("grace_hopper", "grace_hopper", path, "matplotlib"))
    iqa = _package_dir("pyiqa")
    ref_dir = iqa.parent / "ResultsCalibra" / "ref_dir" if iqa else Path("pyiqa-not-installed")
    for name in _TID_REFS:
        sources.append(Source(name, name, ref_dir / f"{name}.bmp", "pyiqa (ResultsCalibra)"))
    return sources


def find_sources(names: Sequence[str] | None = None) -> list[Source]:
    """Available sources (optionally a subset by name); missing files are warned about."""
    known = {s.name: s for s in all_sources()}
    if names is not None:
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ConfigError(
                f"unknown builtin source(s) {', '.join(unknown)}; known: {', '.join(known)}"
            )
        wanted = [known[n] for n in names]
    else:
        wanted = list(known.values())
    found = []
    for src in wanted:
        if src.path.is_file():
            found.append(src)
        else:
            log.warning(
                "builtin source %s not found at %s (from %s); skipping it",
                src.name,
                src.path,
                src.package,
            )
    if not found:
        raise DataError("no builtin source photographs found: is scikit-image installed?")
    return found


def split_of(group: str) -> str:
    if group in TEST_GROUPS:
        return "test"
    if group in VAL_GROUPS:
        return "val"
    return "train"


# -- configuration and cache --------------------------------------------------------------


@dataclass(frozen=True)
class BuildConfig:
    """What to generate. The defaults are the benchmark's built-in dataset."""

    sources: tuple[str, ...] | None = None  # None: every available source
    crops_per_source: int = 2
    crop_size: int = 192
    source_short_side: int = 384
    levels: tuple[int, ...] = (1, 2, 3, 4, 5)
    distortions: tuple[str, ...] | None = None  # None: all of distortions.DISTORTIONS
    metrics: tuple[str, ...] = tuple(METRICS)

    def validate(self) -> None:
        for name in self.distortion_names():
            get_distortion(name)
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown or not self.metrics:
            raise ConfigError(f"unknown or no metrics {unknown}; known: {', '.join(METRICS)}")
        if self.crops_per_source < 1 or self.crop_size < 8:
            raise ConfigError("builtin build needs crops_per_source >= 1 and crop_size >= 8")
        if "ms_ssim" in self.metrics and self.crop_size < MIN_MS_SSIM_SIZE:
            raise ConfigError(
                f"ms_ssim needs crop_size >= {MIN_MS_SSIM_SIZE}; drop it from metrics for smaller crops"
            )
        if self.source_short_side < self.crop_size:
            raise ConfigError("source_short_side must be >= crop_size")
        if not self.levels or any(lv not in (1, 2, 3, 4, 5) for lv in self.levels):
            raise ConfigError(f"levels must be a non-empty subset of 1..5, got {self.levels}")

    def distortion_names(self) -> tuple[str, ...]:
        return tuple(DISTORTIONS) if self.distortions is None else self.distortions


DEFAULT_CONFIG = BuildConfig()


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("pillow", "pyiqa", "scikit-image", "torch", "numpy", "scipy"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "missing"
    return out


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def recipe(config: BuildConfig, sources: Sequence[Source]) -> dict[str, Any]:
    """Everything the output depends on; its hash names the cache folder.

    Sources that carry their own split (datasets whose card lists photographs) add their
    groups and splits; the default recipe's dict, and so its hash, is unchanged.
    """
    out = {
        "version": BUILTIN_VERSION,
        "config": asdict(config) | {"distortions": list(config.distortion_names())},
        "distortion_params": {n: list(DISTORTIONS[n].params) for n in config.distortion_names()},
        "metric_anchors": {m: [METRICS[m].ideal, METRICS[m].worst] for m in config.metrics},
        "eps": EPS,
        "splits": {"test": list(TEST_GROUPS), "val": list(VAL_GROUPS)},
        "sources": {s.name: _file_sha256(s.path) for s in sources},
        "libraries": _versions(),
    }
    if any(s.split is not None for s in sources):
        out["splits"] = {s.name: [s.group, s.split_name()] for s in sources}
    return out


def recipe_hash(
    config: BuildConfig = DEFAULT_CONFIG, sources: Sequence[Source] | None = None
) -> str:
    if sources is None:
        sources = find_sources(config.sources)
    text = json.dumps(recipe(config, sources), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def cache_root() -> Path:
    """$BENCHMARK_CACHE, else ~/.cache/iqa-benchmark."""
    env = os.environ.get("BENCHMARK_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "iqa-benchmark"


def default_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the default built-in dataset lives (it may not be built yet)."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    return root / f"builtin-{recipe_hash()}"


def is_built(out_dir: Path, expected_hash: str | None = None) -> bool:
    """A complete build: the manifest is written last, inside the temp dir, before the rename."""
    try:
        manifest = json.loads((out_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    if not (out_dir / "index.csv").is_file() or not manifest.get("complete"):
        return False
    return expected_hash is None or manifest.get("hash") == expected_hash


def expected_images(config: BuildConfig, sources: Sequence[Source]) -> int:
    dists = [DISTORTIONS[n] for n in config.distortion_names()]
    total = 0
    for src in sources:
        n_d = sum(1 for d in dists if not (d.colour_only and is_grey_file(src.path)))
        total += config.crops_per_source * (1 + n_d * len(config.levels))
    return total


def estimate_minutes(
    config: BuildConfig = DEFAULT_CONFIG,
    workers: int | None = None,
    sources: Sequence[Source] | None = None,
) -> float:
    if sources is None:
        sources = find_sources(config.sources)
    n = expected_images(config, sources)
    return n * SECONDS_PER_IMAGE / _n_workers(workers, len(sources)) / 60 + 0.2


def is_grey_file(path: Path) -> bool:
    with Image.open(path) as im:
        return im.mode in ("1", "L", "I", "I;16", "F")


# -- building -----------------------------------------------------------------------------


def load_source(src: Source, short_side: int) -> np.ndarray:
    """RGB uint8 array, downscaled so the short side is at most `short_side`."""
    with Image.open(src.path) as im:
        im.load()
        rgb = to_rgb8(im)
    w, h = rgb.size
    scale = short_side / min(w, h)
    if scale < 1:
        rgb = rgb.resize((round(w * scale), round(h * scale)), Image.Resampling.LANCZOS)
    return np.asarray(rgb, dtype=np.uint8).copy()


def select_crops(
    image: np.ndarray, n: int, size: int, max_overlap: float = 0.3
) -> list[tuple[int, int]]:
    """Top-left corners of the `n` most detailed size x size windows, greedily non-overlapping.

    Detail = mean luma gradient magnitude; windows with more than a quarter of clipped
    (near-black or near-white) pixels are ranked last, so black borders and empty sky are
    not chosen while anything else is available.
    """
    h, w = image.shape[:2]
    if h < size or w < size:
        raise DataError(f"source of {w}x{h} is smaller than the {size}x{size} crop")
    luma = image.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / 255.0
    gy, gx = np.gradient(luma)
    grad_sum = _window_sums(np.hypot(gx, gy), size)
    clipped = _window_sums(((luma < 0.03) | (luma > 0.97)).astype(np.float64), size)
    stride = max(4, size // 12)
    ys = sorted(set(range(0, h - size + 1, stride)) | {h - size})
    xs = sorted(set(range(0, w - size + 1, stride)) | {w - size})
    cands = []
    for y in ys:
        for x in xs:
            usable = clipped[y, x] / size**2 <= 0.25
            cands.append((not usable, -round(grad_sum[y, x], 6), y, x))
    cands.sort()
    chosen: list[tuple[int, int]] = []
    for limit in (max_overlap, 1.0 - 1e-9):
        for _, _, y, x in cands:
            if len(chosen) == n:
                return chosen
            if (y, x) in chosen:
                continue
            if all(_overlap(y, x, cy, cx, size) <= limit for cy, cx in chosen):
                chosen.append((y, x))
    if len(chosen) < n:
        raise DataError(f"cannot place {n} distinct {size}x{size} crops in a {w}x{h} source")
    return chosen


def _window_sums(a: np.ndarray, size: int) -> np.ndarray:
    integral = np.pad(a, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    return (
        integral[size:, size:]
        - integral[:-size, size:]
        - integral[size:, :-size]
        + integral[:-size, :-size]
    )


def _overlap(y0: int, x0: int, y1: int, x1: int, size: int) -> float:
    dy = max(0, size - abs(y0 - y1))
    dx = max(0, size - abs(x0 - x1))
    return dy * dx / size**2


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "big")


_METRIC_CACHE: dict[str, Any] = {}


def _metric_fn(name: str) -> Any:
    """Callable (dist, ref) -> per-image values, created once per process."""
    if name in _METRIC_CACHE:
        return _METRIC_CACHE[name]
    if name == "ms_ssim":
        from pyiqa.archs.func_util import preprocess_rgb
        from pyiqa.archs.ssim_arch import ms_ssim
        from pyiqa.matlab_utils import fspecial

        win = fspecial(11, 1.5, 1)

        def fn(x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
            return ms_ssim(
                preprocess_rgb(x, True, 255),
                preprocess_rgb(r, True, 255),
                win=win.to(x),
                data_range=255,
            )

    elif name == "ciede2000_lp":
        from skimage.color import deltaE_ciede2000, rgb2lab

        def fn(x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
            xs = torch.nn.functional.avg_pool2d(x.double(), 4).permute(0, 2, 3, 1).numpy()
            rs = torch.nn.functional.avg_pool2d(r.double(), 4).permute(0, 2, 3, 1).numpy()
            return torch.tensor(
                [
                    deltaE_ciede2000(rgb2lab(a), rgb2lab(b)).mean()
                    for a, b in zip(xs, rs, strict=True)
                ]
            )

    else:
        import pyiqa

        pyiqa_log = logging.getLogger("pyiqa")
        saved = pyiqa_log.level
        pyiqa_log.setLevel(logging.WARNING)  # "Network [FSIM] is created" once per process
        try:
            fn = pyiqa.create_metric(name, as_loss=False, device="cpu")
        finally:
            pyiqa_log.setLevel(saved)
    _METRIC_CACHE[name] = fn
    return fn


def compute_metrics(
    images: torch.Tensor, refs: torch.Tensor, names: Sequence[str], batch_size: int = 32
) -> dict[str, np.ndarray]:
    """Raw FR metric values, float64 arrays of length N, for images vs refs (N,3,H,W) in [0,1]."""
    out: dict[str, np.ndarray] = {}
    with torch.inference_mode():
        for name in names:
            fn = _metric_fn(name)
            vals = [
                torch.as_tensor(fn(images[i : i + batch_size], refs[i : i + batch_size]))
                .reshape(-1)
                .double()
                for i in range(0, len(images), batch_size)
            ]
            arr = torch.cat(vals).numpy()
            if not np.all(np.isfinite(arr)):
                raise DataError(
                    f"metric {name} returned non-finite values while building the builtin dataset"
                )
            out[name] = arr
    return out


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    """One torch thread: identical float results whatever the machine's core count."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _worker_init() -> None:
    import warnings

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")


def build_source(src: Source, config: BuildConfig, images_dir: Path) -> list[dict[str, Any]]:
    """Crops, distortions, PNGs and metric rows for one source photograph."""
    image = load_source(src, config.source_short_side)
    grey = is_grey_file(src.path)
    size = config.crop_size
    dists = [get_distortion(n) for n in config.distortion_names()]
    split = src.split_name()
    rows: list[dict[str, Any]] = []
    for k, (y, x) in enumerate(select_crops(image, config.crops_per_source, size)):
        crop = np.ascontiguousarray(image[y : y + size, x : x + size])
        crop_dir = f"{src.name}/c{k}"
        ref_id = f"{crop_dir}/pristine.png"
        (images_dir / crop_dir).mkdir(parents=True, exist_ok=True)
        _save_png(crop, images_dir / ref_id)
        base = {
            "source": src.name,
            "group": src.group,
            "crop": k,
            "box": f"{x} {y} {size}",
            "split": split,
            "ref_id": ref_id,
        }
        ideal = {m: METRICS[m].ideal for m in config.metrics}
        rows.append(
            {"image_id": ref_id, "distortion": "none", "level": 0, "mos": 1.0, **base, **ideal}
        )
        outs, meta = [], []
        for dist in dists:
            if dist.colour_only and grey:
                continue
            for level in config.levels:
                # One seed per (crop, distortion): levels differ in strength only, never in
                # noise pattern, blur angle or cast direction, so quality falls with level.
                rng = np.random.default_rng(_seed(src.name, k, dist.name))
                out = dist.apply(crop, level, rng)
                image_id = f"{crop_dir}/{dist.name}_{level}.png"
                _save_png(out, images_dir / image_id)
                outs.append(out)
                meta.append({"image_id": image_id, "distortion": dist.name, "level": level, **base})
        if not outs:
            continue
        dist_t = torch.from_numpy(np.stack(outs)).permute(0, 3, 1, 2).float().div_(255.0)
        ref_t = (
            torch.from_numpy(crop)
            .permute(2, 0, 1)
            .float()
            .div_(255.0)
            .expand_as(dist_t)
            .contiguous()
        )
        values = compute_metrics(dist_t, ref_t, config.metrics)
        mos = pseudo_mos(values)
        for i, m in enumerate(meta):
            rows.append(
                m | {"mos": float(mos[i])} | {name: float(v[i]) for name, v in values.items()}
            )
    return rows


def _save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, format="PNG", compress_level=6)


def _n_workers(workers: int | None, n_tasks: int) -> int:
    if workers is None:
        workers = min(os.cpu_count() or 1, 8)
    return max(1, min(workers, n_tasks))


def _run_tasks(
    sources: Sequence[Source], config: BuildConfig, images_dir: Path, workers: int, bar: tqdm
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    if workers <= 1:
        with _single_thread():
            for src in sources:
                part = build_source(src, config, images_dir)
                rows += part
                bar.update(len(part))
        return rows
    ctx = get_context("spawn")  # fork after torch has started threads can deadlock
    try:
        with ProcessPoolExecutor(
            max_workers=workers, mp_context=ctx, initializer=_worker_init
        ) as pool:
            futures = [pool.submit(build_source, src, config, images_dir) for src in sources]
            for fut in as_completed(futures):
                part = fut.result()
                rows += part
                bar.update(len(part))
    except BrokenProcessPool as exc:
        # A worker died (out of memory, or a calling script without a __main__ guard):
        # redo everything in this process; files are rewritten with identical content.
        log.warning("builtin build workers failed (%s); building in this process instead", exc)
        bar.reset()
        return _run_tasks(sources, config, images_dir, 1, bar)
    return rows


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6f}"
    return str(value)


def _write_index(rows: list[dict[str, Any]], config: BuildConfig, path: Path) -> None:
    columns = list(INDEX_COLUMNS) + list(config.metrics)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_format(row[c]) for c in columns])


def _sort_key(order: dict[str, int], dist_order: dict[str, int]) -> Any:
    return lambda r: (
        order[r["source"]],
        r["crop"],
        dist_order.get(r["distortion"], -1),
        r["level"],
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_stale(out_dir: Path) -> None:
    """Remove temp folders of builds whose process is gone (killed mid-build)."""
    for tmp in out_dir.parent.glob(f".{out_dir.name}.tmp-*"):
        try:
            pid = int(tmp.name.rsplit(".tmp-", 1)[1].split("-")[0])
        except (IndexError, ValueError):
            continue
        if not _pid_alive(pid):
            log.info("removing the leftover of an interrupted build: %s", tmp)
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _build_lock(out_dir: Path) -> Iterator[None]:
    """Serialise builds of one folder across processes; the OS drops the lock if we die."""
    try:
        import fcntl
    except ImportError:  # not POSIX: the atomic rename alone keeps the cache consistent
        yield
        return
    lock_path = out_dir.parent / f".{out_dir.name}.lock"
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def generate_builtin(
    out_dir: str | os.PathLike[str],
    config: BuildConfig = DEFAULT_CONFIG,
    *,
    sources: Sequence[Source] | None = None,
    workers: int | None = None,
    progress: bool = True,
    force: bool = False,
) -> Path:
    """Build the dataset described by `config` into `out_dir`, atomically; returns `out_dir`.

    `sources` (default: the wheels' photographs named by `config.sources`) lets a dataset
    built from other photographs, such as Debian's (`debian.py`), reuse this recipe.
    Work happens in a sibling temp folder that replaces `out_dir` only when complete, so a
    killed or concurrent build never leaves a half dataset that is later trusted. An
    existing complete build with the same recipe is reused unless `force`.
    """
    if getattr(current_process(), "_inheriting", False):
        # We are a spawned worker re-running a script that has no `if __name__ == "__main__":`
        # guard: building here would wait forever on the parent's lock.
        raise RuntimeError(
            "builtin dataset build started while a worker process was bootstrapping; "
            'guard the calling script with `if __name__ == "__main__":`'
        )
    config.validate()
    out = Path(out_dir).expanduser().resolve()
    if sources is None:
        sources = find_sources(config.sources)
    elif not sources:
        raise DataError("no source photographs to build from")
    digest = hashlib.sha256(
        json.dumps(recipe(config, sources), sort_keys=True).encode()
    ).hexdigest()[:12]
    out.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(out):
        if not force and is_built(out, digest):
            log.info("builtin dataset already built at %s", out)
            return out
        if out.exists() and not force and not is_built(out):
            raise DataError(
                f"{out} exists but is not a complete builtin dataset; remove it or use --force"
            )
        if out.exists() and not force:
            raise DataError(
                f"{out} holds a builtin dataset of another recipe; remove it or use --force"
            )
        _clean_stale(out)
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            _build_into(tmp, config, sources, digest, workers, progress)
            if out.exists():
                old = out.parent / f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
                os.replace(out, old)
                os.replace(tmp, out)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, out)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return out


def _build_into(
    tmp: Path,
    config: BuildConfig,
    sources: Sequence[Source],
    digest: str,
    workers: int | None,
    progress: bool,
) -> None:
    start = time.perf_counter()
    images_dir = tmp / "images"
    images_dir.mkdir(parents=True)
    n_workers = _n_workers(workers, len(sources))
    total = expected_images(config, sources)
    log.info(
        "building the builtin dataset: %d images from %d sources, %d worker(s)",
        total,
        len(sources),
        n_workers,
    )
    with tqdm(total=total, desc="builtin dataset", unit="img", disable=not progress) as bar:
        rows = _run_tasks(sources, config, images_dir, n_workers, bar)
    order = {s.name: i for i, s in enumerate(sources)}
    dist_order = {n: i for i, n in enumerate(config.distortion_names())}
    rows.sort(key=_sort_key(order, dist_order))
    _write_index(rows, config, tmp / "index.csv")
    seconds = time.perf_counter() - start
    counts = {s: sum(1 for r in rows if r["split"] == s) for s in SPLITS}
    manifest = {
        "hash": digest,
        "recipe": recipe(config, sources),
        "images": len(rows),
        "splits": counts,
        "build_seconds": round(seconds, 1),
        "workers": n_workers,
        "formula": "q_m = clip((v_m - worst_m)/(ideal_m - worst_m), 0.05, 1); "
        "MOS = ((prod_m q_m)^(1/M) - 0.05)/0.95",
        "complete": True,
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    log.info("builtin dataset built in %.0f s: %s", seconds, counts)


def build_builtin(cache_dir: str | os.PathLike[str] | None = None, force: bool = False) -> Path:
    """Build (or reuse) the default built-in dataset under the cache; returns its folder."""
    out = default_dir(cache_dir)
    if not force and is_built(out, out.name.removeprefix("builtin-")):
        return out
    log.info("generating the builtin dataset into %s (~%.0f min, once)", out, estimate_minutes())
    return generate_builtin(out, DEFAULT_CONFIG, force=force)


def builtin_status(cache_dir: str | os.PathLike[str] | None = None) -> tuple[bool, str]:
    """(built?, a line for listings); never builds."""
    try:
        out = default_dir(cache_dir)
    except DataError as exc:
        return False, str(exc)
    if is_built(out, out.name.removeprefix("builtin-")):
        return True, f"cached at {out}"
    return False, f"generated on first use (~{estimate_minutes():.0f} min) into {out}"


# -- the dataset ----------------------------------------------------------------------------


@dataclass
class _Row:
    mos: float
    ref_id: str
    split: str
    distortion: str
    level: int
    source: str
    group: str


class BuiltinDataset(IQADataset):
    """A built builtin folder (index.csv + images/), one split of it; references included."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str | None = "test",
        *,
        name: str = "builtin",
        description: str = "",
        policy: str = "none",
        size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.root = Path(root)
        split = "test" if split is None else split
        if split not in (*SPLITS, "all"):
            raise ConfigError(
                f"dataset {name!r} has no split {split!r}; choose from all, {', '.join(SPLITS)}"
            )
        self.policy, self.size = policy, size
        self._rows = self._read_index(split, name)
        self._ids = list(self._rows)
        self._ref_cache: tuple[str, torch.Tensor] | None = None
        self.info = DatasetInfo(name, "builtin", (0.0, 1.0), True, split, description)

    def _read_index(self, split: str, name: str) -> dict[str, _Row]:
        index = self.root / "index.csv"
        if not index.is_file():
            raise DataError(
                f"{index}: {name} index not found; run `python -m benchmark build-dataset {name}`"
            )
        rows: dict[str, _Row] = {}
        with open(index, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in INDEX_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{index}: missing column(s) {', '.join(missing)}")
            for row in reader:
                where = f"{index} row {reader.line_num}"
                if split != "all" and row["split"] != split:
                    continue
                image_id = safe_relative(row["image_id"], where)
                if image_id in rows:
                    raise DataError(f"{where}: duplicate image {image_id!r}")
                rows[image_id] = _Row(
                    mos=parse_mos(row["mos"], where),
                    ref_id=safe_relative(row["ref_id"], where),
                    split=row["split"],
                    distortion=row["distortion"],
                    level=int(row["level"]),
                    source=row["source"],
                    group=row["group"],
                )
        return rows

    def ids(self) -> list[str]:
        return list(self._ids)

    def row(self, image_id: str) -> _Row:
        try:
            return self._rows[image_id]
        except KeyError:
            raise DataError(f"dataset {self.name!r} has no image {image_id!r}") from None

    def group(self, image_id: str) -> str:
        return self.row(image_id).group

    def load(self, image_id: str) -> Sample:
        row = self.row(image_id)
        image = load_image(self.root / "images" / image_id, self.policy, self.size)
        if self._ref_cache is None or self._ref_cache[0] != row.ref_id:
            self._ref_cache = (
                row.ref_id,
                load_image(self.root / "images" / row.ref_id, self.policy, self.size),
            )
        return Sample(image_id, image, row.mos, self._ref_cache[1].clone())


def label_spread(root: str | os.PathLike[str]) -> dict[str, dict[str, float]]:
    """Per distortion: std of the pseudo-MOS and its mean at each level (a sanity report)."""
    import pandas as pd

    df = pd.read_csv(Path(root) / "index.csv")
    df = df[df["distortion"] != "none"]
    out: dict[str, dict[str, float]] = {}
    for name, g in df.groupby("distortion", sort=False):
        stats = {"std": float(g["mos"].std(ddof=0))}
        stats |= {f"level{lv}": float(m) for lv, m in g.groupby("level")["mos"].mean().items()}
        out[str(name)] = stats
    return out


def label_ceiling(root: str | os.PathLike[str]) -> dict[str, float]:
    """Test SROCC of predictors that know each image's distortion (how learnable the labels are).

    Each test image is scored by the mean train-split MOS of its (distortion, level), of its
    distortion, or by its level alone. A no-reference model has to infer type and level from
    the pixels of unseen photographs, so these bound what the zoo's bar asks of it from above.
    """
    import pandas as pd
    from scipy.stats import spearmanr

    df = pd.read_csv(Path(root) / "index.csv")
    train, test = df[df["split"] == "train"], df[df["split"] == "test"]
    by_type_level = train.groupby(["distortion", "level"])["mos"].mean()
    keys = pd.MultiIndex.from_frame(test[["distortion", "level"]])
    preds = {
        "distortion_and_level": by_type_level.reindex(keys).to_numpy(),
        "distortion": test["distortion"].map(train.groupby("distortion")["mos"].mean()),
        "level": -test["level"],
    }
    return {k: float(spearmanr(v, test["mos"])[0]) for k, v in preds.items()}


__all__ = [
    "BuildConfig",
    "BuiltinDataset",
    "DEFAULT_CONFIG",
    "build_builtin",
    "builtin_status",
    "generate_builtin",
    "label_ceiling",
    "label_spread",
    "pseudo_mos",
]
