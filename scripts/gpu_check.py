"""GPU check: every model family under one attack of each kind, on a device against a reference.

    python scripts/gpu_check.py [--device cuda] [--reference-device cpu] [--quick]
        [--images 8] [--fr psnr,ssim,...|all] [--models M1,M2] [--tf32] [--no-speed]
        [--out DIR] [--dataset builtin] [--data-root DIR] [--split S]

Runs the same configuration (same seed, same images, batch size = number of images) twice,
each side in its own process with its own cache of trained attacks (so UAP and FACPA are
trained on each device, not loaded from the other side's artifact), into two HDF5 files, then
compares them cell by cell and prints one PASS/FAIL line per cell:

- clean scores: per image, |q_A - q_B| <= 1e-3 in quality units (the model's score normalised
  to its declared range: 1e-3 of that range), and the same images finite on both sides;
- the attack: the cell's status is the same on both sides (done, or not applicable on both),
  every attacked image is inside its budget on both sides (L_inf <= eps + 1e-6), and the mean
  gain (attacked - clean quality) agrees: |G_A - G_B| <= max(0.02, 0.10 * max(|G_A|, |G_B|)).
  Gradient attacks on a GPU follow slightly different float sums (and nondeterministic
  backward kernels), so a signed step can flip where a gradient is near zero; APGD's random
  start is drawn from the device's own generator, so its start differs between CPU and CUDA.

Models (default): the pyiqa full-reference metrics psnr, ssim, ms_ssim, gmsd and nlpd (they
need no weights; `--fr all` takes every offline FR metric `list models` marks usable, fsim, vif,
vsi, cw_ssim, ... too, except mad, minutes per image on a CPU), every zoo architecture
(cnniqa-builtin, wadiqam-nr-builtin, resnet-small-builtin), a RobustBlock model
(robust-cnniqa-builtin) and a purified one (jpeg50+cnniqa-builtin: BPDA through a
differentiable JPEG). Attacks, each shipped card with a few parameters overridden (written as
cards `check-<name>` so that one run per side covers them all): ifgsm (signed gradient, 5
steps), apgd (5 steps), square (20 queries), uap (8 Adam steps of lr 5e-3 on 16 images of the
train split: enough to reach the budget) and facpa (trained on 16 images, 1 epoch, 8 Adam
steps). On 8 images of the test split, in one batch.

Then, on `--device` alone: the runner's throughput table (scripts/throughput.py: floor /
runner / per-image loop) and OrthConv2d against nn.Conv2d (scripts/orthconv_speed.py).

TF32: the two sides run with TF32 off (float32 convolutions and matmuls), so that a
difference means a device bug rather than TF32 rounding; `--tf32` keeps PyTorch's default
(TF32 convolutions on Ampere and later), which is what `benchmark run --device cuda` uses.
The speed tables always use PyTorch's default.

`--quick` (the test suite's mode): 4 images, ssim, cnniqa-builtin, robust-cnniqa-builtin and
jpeg50+cnniqa-builtin, cheaper attacks and speed tables. Exit status: 0 all PASS, 1 any FAIL,
2 a bad argument or no CUDA where CUDA was asked for. Details: docs/gpu-check.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# -- what is checked -------------------------------------------------------------------------

FR_DEFAULT = ("psnr", "ssim", "ms_ssim", "gmsd", "nlpd")
FR_SLOW = ("mad",)  # left out of `--fr all`: minutes per image on a CPU
ZOO = ("cnniqa-builtin", "wadiqam-nr-builtin", "resnet-small-builtin")
ROBUST = ("robust-cnniqa-builtin",)
PURIFIED = ("jpeg50+cnniqa-builtin",)
QUICK_MODELS = ("ssim", "cnniqa-builtin", "robust-cnniqa-builtin", "jpeg50+cnniqa-builtin")

# The attacks, one of each kind, with the parameters the check overrides in the shipped card.
# They are written as cards `check-<name>` (in the work folder, $BENCHMARK_ATTACK_DIRS), so
# that one run per side covers them all: a run's `params` would apply to every attack.
CARD_PREFIX = "check-"
ATTACKS: dict[str, dict[str, dict[str, Any]]] = {
    "full": {
        "ifgsm": {"steps": 5},
        "apgd": {"steps": 5},
        "square": {"queries": 20},
        # 8 Adam steps of 5e-3: enough to reach the budget (the card's 1e-3 needs ~40)
        "uap": {"train_images": 16, "epochs": 1, "batch_size": 2, "lr": 5e-3},
        "facpa": {"train_images": 16, "epochs": 1},
    },
    "quick": {
        "ifgsm": {"steps": 2},
        "apgd": {"steps": 2},
        "square": {"queries": 8},
        "uap": {"train_images": 4, "epochs": 1, "batch_size": 1, "lr": 1e-2},
        "facpa": {"train_images": 4, "epochs": 1},
    },
}

# Tolerances (quality units: a model's score normalised to [0, 1] by its declared range).
CLEAN_TOL = 1e-3  # per image
GAIN_ABS_TOL = 0.02  # on the cell's mean gain ...
GAIN_REL_TOL = 0.10  # ... or this fraction of the larger |mean gain|, whichever is larger
LINF_SLACK = 1e-6  # every attacked image: L_inf <= eps + this, on both sides

TIME_TARGET_S = 8 * 60  # the whole script on one GPU


@dataclass
class CellCheck:
    """The comparison of one cell (model, dataset, attack, eps, direction) across the sides."""

    model: str
    attack: str
    eps: float
    status: str  # "done" / "not_applicable" / "a|b" when they differ
    clean_diff: float = math.nan  # max per-image |q_A - q_B| of the clean scores
    gain_a: float = math.nan
    gain_b: float = math.nan
    gain_tol: float = math.nan
    linf_a: float = math.nan
    linf_b: float = math.nan
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


# -- comparison ------------------------------------------------------------------------------


def _finite_mask_equal(a: Any, b: Any) -> bool:
    import numpy as np

    return bool((np.isfinite(a) == np.isfinite(b)).all())


def compare_cell(model: str, attack: str, eps: float, a: Any, b: Any) -> CellCheck:
    """Compare one cell's rows from two `benchmark.load_results` frames (sides A and B)."""
    import numpy as np

    sa, sb = str(a["status"].iloc[0]), str(b["status"].iloc[0])
    check = CellCheck(model, attack, eps, sa if sa == sb else f"{sa}|{sb}")
    if sa != sb:
        check.problems.append(f"status {sa} on A, {sb} on B")
    for side, s in (("A", sa), ("B", sb)):
        if s == "failed":
            check.problems.append(f"cell failed on {side}")
    a = a.set_index("image_id")
    b = b.set_index("image_id")
    if set(a.index) != set(b.index) or len(a) != len(b):
        check.problems.append(f"images differ ({len(a)} on A, {len(b)} on B)")
        return check
    b = b.loc[a.index]
    qa, qb = a["quality_clean"].to_numpy(float), b["quality_clean"].to_numpy(float)
    if not _finite_mask_equal(qa, qb):
        check.problems.append("clean scores finite on different images")
    both = np.isfinite(qa) & np.isfinite(qb)
    check.clean_diff = float(np.abs(qa[both] - qb[both]).max()) if both.any() else math.nan
    if not both.any():
        check.problems.append("no finite clean score")
    elif not check.clean_diff <= CLEAN_TOL:
        check.problems.append(f"clean |dq| {check.clean_diff:.2e} > {CLEAN_TOL:g}")
    if sa != "done" or sb != "done":
        return check
    gains = []
    for side, frame in (("A", a), ("B", b)):
        linf = frame["linf"].to_numpy(float)
        worst = float(np.nanmax(linf)) if np.isfinite(linf).any() else math.nan
        if side == "A":
            check.linf_a = worst
        else:
            check.linf_b = worst
        if not np.isfinite(linf).all():
            check.problems.append(f"L_inf missing on {side}")
        elif (linf > eps + LINF_SLACK).any():
            n = int((linf > eps + LINF_SLACK).sum())
            check.problems.append(f"{n} image(s) over budget on {side} (max {worst:.6f})")
        g = frame["quality_attacked"].to_numpy(float) - frame["quality_clean"].to_numpy(float)
        gains.append(g)
    if not _finite_mask_equal(gains[0], gains[1]):
        check.problems.append("attacked scores finite on different images")
    ok = np.isfinite(gains[0]) & np.isfinite(gains[1])
    if not ok.any():
        check.problems.append("no finite gain")
        return check
    check.gain_a, check.gain_b = float(gains[0][ok].mean()), float(gains[1][ok].mean())
    check.gain_tol = max(GAIN_ABS_TOL, GAIN_REL_TOL * max(abs(check.gain_a), abs(check.gain_b)))
    diff = abs(check.gain_a - check.gain_b)
    if not diff <= check.gain_tol:
        check.problems.append(f"|dG| {diff:.4f} > {check.gain_tol:.4f}")
    return check


KEY = ["model", "dataset", "attack", "eps", "direction"]


def compare(a: Any, b: Any) -> list[CellCheck]:
    """Every cell of two `benchmark.load_results` frames, compared (a cell on one side only
    is a failure)."""
    groups_a = dict(tuple(a.groupby(KEY, sort=True)))
    groups_b = dict(tuple(b.groupby(KEY, sort=True)))
    out = []
    for key in sorted(set(groups_a) | set(groups_b), key=str):
        model, _, attack, eps, _ = key
        if key not in groups_a or key not in groups_b:
            where = "B" if key in groups_a else "A"
            out.append(CellCheck(model, attack, float(eps), "missing", problems=[f"missing on {where}"]))  # fmt: skip
            continue
        out.append(compare_cell(model, attack, float(eps), groups_a[key], groups_b[key]))
    return out


def _num(v: float, fmt: str) -> str:
    return "-" if not math.isfinite(v) else format(v, fmt)


def print_checks(checks: Sequence[CellCheck], label_a: str, label_b: str) -> None:
    print(f"\n== cells: A = {label_a}, B = {label_b} ==")
    print(f"tolerances: clean |dq| <= {CLEAN_TOL:g} per image (quality units: 1 = the model's "
          f"score range); |dG| <= max({GAIN_ABS_TOL:g}, {GAIN_REL_TOL:.0%} of |G|) on the mean "
          f"gain; L_inf <= eps + {LINF_SLACK:g} per image on both sides")  # fmt: skip
    cols = (("model", "<24"), ("attack", "<8"), ("eps", ">8"), (" status", "<15"),
            ("clean|dq|", ">10"), ("G_A", ">8"), ("G_B", ">8"), ("|dG|", ">8"), ("tol", ">7"),
            ("Linf_A*255", ">11"), ("Linf_B*255", ">11"))  # fmt: skip
    print("".join(format(name, fmt) for name, fmt in cols) + "  verdict")
    for c in checks:
        values = (c.model, c.attack.removeprefix(CARD_PREFIX), f"{c.eps * 255:.4g}/255", " " + c.status,
                  _num(c.clean_diff, ".1e"), _num(c.gain_a, ".4f"), _num(c.gain_b, ".4f"),
                  _num(abs(c.gain_a - c.gain_b), ".4f"), _num(c.gain_tol, ".3f"),
                  _num(c.linf_a * 255, ".4f"), _num(c.linf_b * 255, ".4f"))  # fmt: skip
        row = "".join(format(v, fmt) for v, (_, fmt) in zip(values, cols, strict=True))
        print(row + "  " + ("PASS" if c.ok else "FAIL: " + "; ".join(c.problems)))
    n_bad = sum(not c.ok for c in checks)
    tail = f", {n_bad} FAIL" if n_bad else ""
    print(f"{len(checks) - n_bad} of {len(checks)} cells PASS{tail}")


# -- one side (a worker process) -------------------------------------------------------------


def run_side(spec: dict[str, Any]) -> int:
    """One side: every model under every check attack into spec['out']; 0 when no cell failed
    and every model could be built."""
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    import benchmark

    if spec["device"].startswith("cuda") and not spec["tf32"]:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    result = benchmark.run(
        models=spec["models"],
        attacks=spec["attacks"],
        dataset=spec["dataset"],
        data_root=spec["data_root"],
        split=spec["split"],
        limit=spec["images"],
        seed=spec["seed"],
        device=spec["device"],
        batch_size=spec["images"],
        out=spec["out"],
        progress=False,
    )
    rep = result.report
    print(f"  [{spec['label']}] {len(rep.computed)} cells in {rep.wall_s:.0f} s", flush=True)
    for key, why in rep.failed:
        print(f"  [{spec['label']}] FAILED {key}: {why}", flush=True)
    for name, why in rep.unavailable.items():
        print(f"  [{spec['label']}] UNAVAILABLE {name}: {why}", flush=True)
    return 1 if rep.failed or rep.unavailable else 0


def write_cards(folder: Path, attacks: dict[str, dict[str, Any]]) -> list[str]:
    """The check's attack cards: each shipped card renamed `check-<name>`, its [params]
    updated; returns their names."""
    import tomllib

    import tomli_w

    from benchmark.cards import CARD_DIRS

    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for name, params in attacks.items():
        with open(CARD_DIRS["attack"] / f"{name}.toml", "rb") as fh:
            card = tomllib.load(fh)
        card["name"] = CARD_PREFIX + name
        card["description"] = f"scripts/gpu_check.py's {name}, {params}: {card['description']}"
        card["params"] = {**card.get("params", {}), **params}
        (folder / f"{card['name']}.toml").write_text(tomli_w.dumps(card))
        names.append(card["name"])
    return names


def side_cache(root: Path, label: str) -> Path:
    """A cache folder of its own for one side: the built-in dataset and the pyiqa availability
    probe linked from the real cache, trained-attack artifacts and batch sizes its own."""
    from benchmark.paths import cache_dir

    real = cache_dir()
    mine = root / f"cache-{label}"
    mine.mkdir(parents=True)
    if real.is_dir():
        for entry in real.iterdir():
            if entry.name.startswith("builtin-") or entry.name == "pyiqa-availability.json":
                (mine / entry.name).symlink_to(entry.resolve())
    return mine


def launch_side(spec: dict[str, Any], cache: Path, timeout: float) -> tuple[int, float]:
    env = dict(os.environ, BENCHMARK_CACHE=str(cache))
    env["BENCHMARK_ATTACK_DIRS"] = os.pathsep.join(
        filter(None, [spec["cards"], env.get("BENCHMARK_ATTACK_DIRS")])
    )
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    t0 = time.perf_counter()
    try:
        rc = subprocess.run(cmd, env=env, timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        print(f"  [{spec['label']}] timed out after {timeout:.0f} s", flush=True)
        rc = 124
    return rc, time.perf_counter() - t0


# -- set-up, header, speed -------------------------------------------------------------------


def cuda_problem(device: str) -> str | None:
    """Why `device` cannot be used here (None when it can)."""
    import torch

    if device == "cpu":
        return None
    if not device.startswith("cuda"):
        return f"device must be cpu or cuda[:N], got {device!r}"
    if not torch.cuda.is_available():
        return (f"--device {device} asked for, but torch sees no CUDA device here (torch "
                f"{torch.__version__}, built with CUDA {torch.version.cuda or 'none'}). Run on a "
                "machine with a GPU, or test the script itself with --device cpu "
                "--reference-device cpu")  # fmt: skip
    index = device.partition(":")[2]
    if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
        return f"{device}: torch sees {torch.cuda.device_count()} CUDA device(s)"
    return None


def print_header(devices: Sequence[str], tf32: bool) -> None:
    import torch

    from benchmark.provenance import git_revision, package_versions

    versions = package_versions()
    print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA "
          f"{torch.version.cuda or 'none'}, cuDNN {torch.backends.cudnn.version() or 'none'}, "
          f"pyiqa {versions.get('pyiqa')}, benchmark {versions.get('benchmark')} "
          f"(git {git_revision()})")  # fmt: skip
    print(f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{torch.get_num_threads()} torch threads")  # fmt: skip
    for dev in dict.fromkeys(devices):
        if dev.startswith("cuda"):
            props = torch.cuda.get_device_properties(torch.device(dev))
            print(f"{dev}: {props.name}, {props.total_memory / 2**30:.1f} GiB, compute "
                  f"capability {props.major}.{props.minor}, driver-visible devices "
                  f"{torch.cuda.device_count()}")  # fmt: skip
    if any(d.startswith("cuda") for d in devices):
        mode = "PyTorch's default (--tf32)" if tf32 else "off (float32 throughout)"
        print(f"TF32 in the two sides: {mode}; in the speed tables: PyTorch's default (cuDNN "
              f"TF32 {'on' if torch.backends.cudnn.allow_tf32 else 'off'})")  # fmt: skip


def _load_script(name: str) -> ModuleType:
    path = Path(__file__).resolve().parent / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_gpu_check_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def speed_settings(device: str, quick: bool) -> dict[str, Any]:
    """Throughput and OrthConv2d settings: the scripts' own defaults on a GPU, smaller on a
    CPU (this project's CPU numbers are in docs/speed.md) and in quick mode."""
    if quick:
        return {"throughput": dict(images=4, repeats=1, batch_size="4", attacks="fgsm",
                                   model_names=("cnniqa-builtin",)),
                "orthconv": dict(rounds=1, batch=2, size=32, channels=16)}  # fmt: skip
    if device == "cpu":
        return {"throughput": dict(images=4, repeats=1, attacks="fgsm,uap,facpa"),
                "orthconv": dict(rounds=3)}  # fmt: skip
    return {"throughput": {}, "orthconv": {}}


def print_speed(device: str, quick: bool) -> bool:
    """The throughput table and the OrthConv2d ratios on `device`; False if either failed."""
    settings = speed_settings(device, quick)
    ok = True
    for title, script, fn, kwargs in (
        ("throughput (scripts/throughput.py)", "throughput", "measure", settings["throughput"]),
        ("OrthConv2d against nn.Conv2d (scripts/orthconv_speed.py)", "orthconv_speed", "measure",
         settings["orthconv"]),
    ):  # fmt: skip
        print(f"\n== {title} on {device} ==", flush=True)
        t0 = time.perf_counter()
        try:
            getattr(_load_script(script), fn)(device=device, **kwargs)
        except Exception as exc:  # noqa: BLE001 -- report and go on to the next table
            print(f"FAIL: {type(exc).__name__}: {exc}")
            ok = False
        print(f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return ok


def resolve_models(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """(models to run, problems): the default families, or --models as given. A model that
    cannot be built here is reported by the sides (and fails the check)."""
    if args.models:
        return [m.strip() for m in args.models.split(",") if m.strip()], []
    if args.quick:
        return list(QUICK_MODELS), []
    if args.fr != "all":
        fr = [m.strip() for m in args.fr.split(",") if m.strip()]
        return [*fr, *ZOO, *ROBUST, *PURIFIED], []
    from benchmark.models.registry import list_models  # probes every pyiqa metric (cached)

    fr = sorted(
        s.name
        for s in list_models()
        if s.source == "pyiqa" and s.kind == "FR" and s.usable and s.name not in FR_SLOW
    )
    if not fr:
        return [*ZOO, *ROBUST, *PURIFIED], ["no pyiqa full-reference metric is usable here"]
    return [*fr, *ZOO, *ROBUST, *PURIFIED], []


# -- main ------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="the device checked (default cuda)")
    p.add_argument("--reference-device", default="cpu", help="compared against (default cpu)")
    p.add_argument("--quick", action="store_true", help="fewer models, images and steps")
    p.add_argument("--images", type=int, default=None, help="images per cell (default 8; quick 4)")
    p.add_argument("--fr", default=",".join(FR_DEFAULT),
                   help="pyiqa FR metrics, comma list, or 'all' (every offline one but mad)")  # fmt: skip
    p.add_argument("--models", default="", help="run exactly these models instead")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reference-seed", type=int, default=None,
                   help="seed of side B (default: --seed); another seed shows how much the "
                   "random streams alone move the gains")  # fmt: skip
    p.add_argument("--tf32", action="store_true", help="keep PyTorch's TF32 default on CUDA")
    p.add_argument("--no-speed", action="store_true", help="skip the throughput/OrthConv2d tables")
    p.add_argument("--dataset", default="builtin")
    p.add_argument("--data-root", default=None)
    p.add_argument("--split", default=None, help="default: the dataset's test split")
    p.add_argument("--out", default=None, help="keep the two results files in this folder")
    p.add_argument("--side-timeout", type=float, default=3600, help="seconds per side")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        return run_side(json.loads(args.worker))
    t_start = time.perf_counter()
    for dev in (args.device, args.reference_device):
        why = cuda_problem(dev)
        if why:
            print(f"gpu_check: {why}", file=sys.stderr)
            return 2
    images = args.images or (4 if args.quick else 8)
    if images < 1:
        print("gpu_check: --images must be positive", file=sys.stderr)
        return 2
    from benchmark.errors import BenchmarkError
    from benchmark.models.registry import select_models

    models, problems = resolve_models(args)
    try:
        select_models(models)  # names known (typos caught here, not in the sides)
    except BenchmarkError as exc:
        print(f"gpu_check: {exc}", file=sys.stderr)
        return 2
    print_header((args.device, args.reference_device), args.tf32)
    for line in problems:
        print(f"FAIL: {line}")
    if args.dataset == "builtin" and args.data_root is None:
        from benchmark.datasets.builtin import build_builtin, builtin_status

        if not builtin_status()[0]:
            t0 = time.perf_counter()
            print("building the built-in dataset first (once; not part of the check) ...", flush=True)  # fmt: skip
            build_builtin()
            print(f"built in {time.perf_counter() - t0:.0f} s", flush=True)
            t_start = time.perf_counter()
    overrides = ATTACKS["quick" if args.quick else "full"]
    print(f"models ({len(models)}): {', '.join(models)}")
    print(f"attacks (card params overridden): {', '.join(f'{n} {json.dumps(p)}' for n, p in overrides.items())}; "
          f"{images} images of {args.dataset} ({args.split or 'test'} split), batch {images}")  # fmt: skip

    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    attacks = write_cards(work / "attack-cards", overrides)
    sides = []
    ok = not problems
    try:
        for tag, dev, seed in (
            ("A", args.device, args.seed),
            ("B", args.reference_device, args.seed if args.reference_seed is None else args.reference_seed),
        ):  # fmt: skip
            label = f"{tag}-{dev.replace(':', '')}"
            out = work / f"{label}.h5"
            out.unlink(missing_ok=True)  # a fresh run, never a resumed one
            caches = work / "caches"
            shutil.rmtree(caches / f"cache-{label}", ignore_errors=True)
            spec = {
                "label": label,
                "device": dev,
                "models": models,
                "attacks": attacks,
                "cards": str(work / "attack-cards"),
                "images": images,
                "seed": seed,
                "tf32": args.tf32,
                "dataset": args.dataset,
                "data_root": args.data_root,
                "split": args.split,
                "out": str(out),
            }
            print(f"\n== side {tag}: {dev} (seed {seed}) ==", flush=True)
            rc, wall = launch_side(spec, side_cache(caches, label), args.side_timeout)
            print(f"side {tag} ({dev}): {wall:.0f} s, exit {rc}", flush=True)
            if rc:
                ok = False
                print(f"FAIL: side {tag} ({dev}) exited {rc}")
            sides.append((f"{dev} (seed {seed})", out))

        import benchmark

        frames = []
        for _, path in sides:
            frames.append(benchmark.load_results(path) if path.exists() else None)
        if any(f is None for f in frames):
            print("FAIL: a side wrote no results file")
            ok = False
        else:
            checks = compare(frames[0], frames[1])
            expected = len(models) * len(attacks)
            if len(checks) != expected:
                print(f"FAIL: {len(checks)} cells compared, {expected} expected")
                ok = False
            print_checks(checks, sides[0][0], sides[1][0])
            ok = ok and all(c.ok for c in checks)
    finally:
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)
    t_check = time.perf_counter() - t_start
    if not args.no_speed:
        ok = print_speed(args.device, args.quick) and ok
    total = time.perf_counter() - t_start
    print(f"\ncheck {t_check:.0f} s, total {total:.0f} s"
          + (f" (over the {TIME_TARGET_S // 60}-minute target)" if args.device != "cpu"
             and total > TIME_TARGET_S else ""))  # fmt: skip
    print("GPU CHECK: " + ("PASS" if ok else "FAIL"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
