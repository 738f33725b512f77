"""pyiqa's real metrics end to end offline, on stand-in weights (random tensors), and the table.

Why: offline, no pyiqa weight can be had, so no pyiqa network had ever gone through the
adapter, the gradient check and an attack here. This script (and tests/test_pyiqa_standins.py,
which imports it) makes, for one metric, files of random tensors with exactly the names and
shapes its loading code expects, under the file names its download URLs give, in a
TEMPORARY cache (`standin_cache`: TORCH_HOME, torch.hub, pyiqa's DEFAULT_CACHE_DIR, the
Hugging Face cache and the CLIP folders all point there, and are restored on exit). Then
`create_pyiqa_model` builds the metric through pyiqa's own loading code with downloads
refused, as for a user whose cache holds the real files. The scores mean nothing.

How the files are made (`make_standins`): a first build runs with downloads replaced by
empty placeholder files and `torch.load` / `safetensors.load_file` of a placeholder
returning a probe (an empty dict that records the keys read from it). Every
`load_state_dict` fed from a probe records the receiving module's own randomly initialised
state dict (names, shapes, dtypes) and the key path it came under (`ckpt['params']`, ...),
and loads nothing. The recorded dicts are written over the placeholders. CLIP files are
built directly (their loader infers the architecture from the tensors) from the published
hyper-parameters. One deviation from a user's path, recorded in the table: CLIP's SHA-256
check of its cached file is skipped (a stand-in cannot match it).

The stand-ins never touch a real cache and carry a marker file
(`benchmark.models.offline.STANDIN_MARKER`): the availability probe reports a cache with
that marker as "stand-in weights only", so `--models all` never picks them up.

Usage (the table in docs/pyiqa-metrics.md):
    OMP_NUM_THREADS=1 python scripts/pyiqa_standins.py --out docs/pyiqa-metrics.md
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without an install
    sys.path.insert(0, str(ROOT))

from benchmark.models.offline import (  # noqa: E402
    STANDIN_MARKER,
    MissingFile,
    pkg_resources_shim,
)

HF_REVISION = "0" * 40  # the commit hash the stand-in Hugging Face snapshots are filed under

# Published CLIP hyper-parameters (Radford et al. 2021, openai/CLIP model cards):
# embed_dim, image_resolution, vision_layers, vision_width, vision_patch_size,
# context_length, vocab_size, transformer_width, transformer_heads, transformer_layers.
CLIP_CONFIGS: dict[str, tuple[Any, ...]] = {
    "RN50": (1024, 224, (3, 4, 6, 3), 64, None, 77, 49408, 512, 8, 12),
    "RN101": (512, 224, (3, 4, 23, 3), 64, None, 77, 49408, 512, 8, 12),
    "RN50x4": (640, 288, (4, 6, 10, 6), 80, None, 77, 49408, 640, 10, 12),
    "ViT-B/32": (512, 224, 12, 768, 32, 77, 49408, 512, 8, 12),
    "ViT-B/16": (512, 224, 12, 768, 16, 77, 49408, 512, 8, 12),
    "ViT-L/14": (768, 224, 24, 1024, 14, 77, 49408, 768, 12, 12),
    "ViT-L/14@336px": (768, 336, 24, 1024, 14, 77, 49408, 768, 12, 12),
}

# Metrics this script does not try: multi-billion-parameter language models (no CPU run is
# meaningful) and distribution metrics that score a set of images, not one.
SKIP = {
    "qalign": "a 7B-parameter multimodal LLM (mPLUG-Owl2): not runnable on this CPU",
    "qalign_4bit": "a 7B-parameter multimodal LLM, 4-bit (bitsandbytes, CUDA only)",
    "qalign_8bit": "a 7B-parameter multimodal LLM, 8-bit (bitsandbytes, CUDA only)",
    "compare2score": "a 7B-parameter multimodal LLM (mPLUG-Owl2): not runnable on this CPU",
    "qrealign": "a multimodal LLM loaded with transformers.from_pretrained",
    "qrealign-lite": "a multimodal LLM loaded with transformers.from_pretrained",
    "qrealign-mini": "a multimodal LLM loaded with transformers.from_pretrained",
    "qrealign-pro": "a multimodal LLM loaded with transformers.from_pretrained",
    "fid": "scores a folder of images against statistics, not one image",
    "fid_dinov2": "scores a folder of images against statistics, not one image",
    "sfid": "scores a folder of images against statistics, not one image",
    "inception_score": "scores a set of images, not one image",
}


# -- the temporary cache ---------------------------------------------------------------------


def _clip_modules() -> list[Any]:
    """The three CLIP loaders pyiqa uses (its two copies and the `clip` package)."""
    mods = []
    for name in ("pyiqa.archs.clip_model", "pyiqa.archs.afineclip_model", "clip.clip"):
        with contextlib.suppress(Exception), pkg_resources_shim():
            mods.append(__import__(name, fromlist=["_download"]))
    return mods


@contextlib.contextmanager
def standin_cache(root: Path) -> Iterator[Path]:
    """Within the block every weight cache pyiqa reads is under `root`; restored on exit.

    Also trusts a CLIP file present in `root/clip` without its SHA-256 check (the one step of
    a user's loading path a stand-in cannot pass) and refuses to download a missing one.
    """
    import huggingface_hub.constants as hfc
    import pyiqa  # noqa: F401  (imports every arch module, whose DEFAULT_CACHE_DIR we move)
    import torch.hub

    root = Path(root)
    hub = root / "torch" / "hub"
    hf = root / "hf"
    for folder in (hub / "pyiqa", hub / "checkpoints", hf / "hub", root / "clip"):
        folder.mkdir(parents=True, exist_ok=True)
    for folder in (root, hub, hf / "hub"):
        (folder / STANDIN_MARKER).write_text("random stand-in weights: scores mean nothing\n")
    env = {"TORCH_HOME": str(root / "torch"), "HF_HOME": str(hf), "HF_HUB_CACHE": str(hf / "hub")}
    saved_env = {k: os.environ.get(k) for k in env}
    saved_hub = torch.hub._hub_dir
    saved: list[tuple[Any, str, Any]] = [
        (hfc, "HF_HUB_CACHE", hfc.HF_HUB_CACHE),
        (hfc, "HF_HOME", hfc.HF_HOME),
    ]
    pyiqa_dir = str(hub / "pyiqa")
    for mod in list(sys.modules.values()):
        if getattr(mod, "__name__", "").startswith("pyiqa") and hasattr(mod, "DEFAULT_CACHE_DIR"):
            saved.append((mod, "DEFAULT_CACHE_DIR", mod.DEFAULT_CACHE_DIR))
            mod.DEFAULT_CACHE_DIR = pyiqa_dir
    clip_root = root / "clip"

    def trusted(url: str, _root: str | None = None) -> str:
        path = clip_root / os.path.basename(url)
        if not path.is_file():
            raise MissingFile(url, str(path))
        return str(path)

    for mod in _clip_modules():
        saved.append((mod, "_download", mod._download))
        mod._download = trusted
    os.environ.update(env)
    torch.hub.set_dir(str(hub))
    hfc.HF_HUB_CACHE, hfc.HF_HOME = str(hf / "hub"), str(hf)
    try:
        yield root
    finally:
        for obj, attr, value in reversed(saved):
            setattr(obj, attr, value)
        torch.hub._hub_dir = saved_hub
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# -- recording what a metric's loaders read ----------------------------------------------------


class _Probe(dict):
    """What `torch.load` of a placeholder returns: empty, and it remembers the keys read."""

    def __init__(self, rec: _Recorder, file: str, keypath: tuple[str, ...]) -> None:
        super().__init__()
        self.rec, self.file, self.keypath = rec, file, keypath

    def __getitem__(self, key: str) -> _Probe:
        child = _Probe(self.rec, self.file, (*self.keypath, key))
        self.rec.current = child
        return child

    def __contains__(self, key: object) -> bool:
        return False

    def __delitem__(self, key: str) -> None:
        pass

    def pop(self, key: str, *default: Any) -> Any:
        return default[0] if default else self[key]


class _Recorder:
    """Placeholders handed out, and the state dicts that loaders then asked of them."""

    def __init__(self) -> None:
        self.placeholders: set[str] = set()
        self.current: _Probe | None = None
        self.records: dict[str, list[tuple[tuple[str, ...], dict[str, torch.Tensor]]]] = {}

    def placeholder(self, path: str) -> str:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(b"")
        self.placeholders.add(os.path.abspath(path))
        return path

    def is_placeholder(self, f: Any) -> str | None:
        name = f if isinstance(f, (str, os.PathLike)) else getattr(f, "name", None)
        if name is None:
            return None
        path = os.path.abspath(os.fspath(name))
        return path if path in self.placeholders else None

    def probe(self, path: str) -> _Probe:
        self.current = _Probe(self, path, ())
        return self.current


def _random_like(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The module's own random init, made finite (torch.empty leaves garbage in some buffers)."""
    out = {}
    for k, v in sd.items():
        v = v.detach().clone().contiguous()
        if v.is_floating_point() and not torch.isfinite(v).all():
            v = torch.randn_like(v) * 0.02
        out[k] = v
    return out


class _Holder(torch.nn.Module):
    """A TorchScript-able node that only holds tensors under their state-dict names."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _save_torchscript(sd: dict[str, torch.Tensor], path: Path) -> None:
    """Save `sd` as a TorchScript archive, the format of OpenAI's CLIP files.

    Why not torch.save: CLIP's loader tries torch.jit.load first and, on failure, reads the
    already-consumed file object again (EOFError), so only an archive passes its real path.
    """
    import warnings

    root = _Holder()
    for key, value in sd.items():
        *parents, leaf = key.split(".")
        node = root
        for part in parents:
            if not isinstance(getattr(node, part, None), torch.nn.Module):
                node.add_module(part, _Holder())
            node = getattr(node, part)
        node.register_buffer(leaf, value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, CLIP uses it
        torch.jit.save(torch.jit.script(root), str(path))


def _clip_state_dict(name: str) -> dict[str, torch.Tensor]:
    from pyiqa.archs.clip_model import CLIP

    if name not in CLIP_CONFIGS:
        raise KeyError(f"no published hyper-parameters for CLIP {name!r}")
    return _random_like(CLIP(*CLIP_CONFIGS[name]).state_dict())


@contextlib.contextmanager
def _recording(rec: _Recorder, root: Path) -> Iterator[None]:
    """Downloads become placeholders; loads of placeholders become probes (see module doc)."""
    import pyiqa.utils.download_util as pyiqa_dl
    import safetensors.torch
    import timm.models._hub as timm_hub
    import torch.hub

    clip_urls = {}
    for mod in _clip_modules():
        clip_urls.update({u: n for n, u in getattr(mod, "_MODELS", {}).items()})

    def download(url: str, dst: str, *args: Any, **kwargs: Any) -> None:
        rec.placeholder(dst)

    def hf_download(repo_id: str, filename: str, revision: str | None = None, **kw: Any) -> str:
        repo = root / "hf" / "hub" / f"models--{repo_id.replace('/', '--')}"
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / (revision or "main")).write_text(HF_REVISION)
        return rec.placeholder(str(repo / "snapshots" / HF_REVISION / filename))

    def clip_download(url: str, _root: str | None = None) -> str:
        path = root / "clip" / os.path.basename(url)
        if not path.is_file():
            _save_torchscript(_clip_state_dict(clip_urls[url]), path)
        return str(path)

    real_load, real_st_load, real_jit_load = torch.load, safetensors.torch.load_file, torch.jit.load
    real_lsd = torch.nn.Module.load_state_dict

    def load(f: Any, *args: Any, **kwargs: Any) -> Any:
        path = rec.is_placeholder(f)
        return rec.probe(path) if path else real_load(f, *args, **kwargs)

    def st_load(f: Any, *args: Any, **kwargs: Any) -> Any:
        path = rec.is_placeholder(f)
        return rec.probe(path) if path else real_st_load(f, *args, **kwargs)

    def jit_load(f: Any, *args: Any, **kwargs: Any) -> Any:
        if rec.is_placeholder(f):
            raise RuntimeError("placeholder is not a TorchScript archive")
        return real_jit_load(f, *args, **kwargs)

    def load_state_dict(self: torch.nn.Module, state_dict: Any, *args: Any, **kwargs: Any) -> Any:
        target = state_dict if isinstance(state_dict, _Probe) else rec.current
        if target is None:
            return real_lsd(self, state_dict, *args, **kwargs)
        rec.current = None
        rec.records.setdefault(target.file, []).append(
            (target.keypath, _random_like(self.state_dict()))
        )
        return torch.nn.modules.module._IncompatibleKeys([], [])

    patches: list[tuple[Any, str, Any]] = [
        (torch.hub, "download_url_to_file", download),
        (pyiqa_dl, "download_url_to_file", download),
        (timm_hub, "hf_hub_download", hf_download),
        (torch, "load", load),
        (safetensors.torch, "load_file", st_load),
        (torch.jit, "load", jit_load),
        (torch.nn.Module, "load_state_dict", load_state_dict),
    ] + [(mod, "_download", clip_download) for mod in _clip_modules()]
    saved = [(obj, attr, getattr(obj, attr)) for obj, attr, _ in patches]
    for obj, attr, new in patches:
        setattr(obj, attr, new)
    try:
        yield
    finally:
        for obj, attr, old in reversed(saved):
            setattr(obj, attr, old)


def _write(path: str, records: list[tuple[tuple[str, ...], dict[str, torch.Tensor]]]) -> None:
    """One file from what its loaders read: nested under the key paths they indexed."""
    top: dict[str, Any] = {}
    for keypath, sd in records:
        node = top
        for k in keypath:
            node = node.setdefault(k, {})
        node.update(sd)
    if path.endswith(".safetensors"):
        import safetensors.torch

        safetensors.torch.save_file(top, path)
    else:
        torch.save(top, path)


class StandinError(RuntimeError):
    """The maker could not make every file a metric reads (a format it cannot infer)."""


def make_standins(name: str, root: Path) -> tuple[list[str], list[str], str]:
    """Write stand-in files for pyiqa metric `name` under `root` (inside `standin_cache`).

    Returns the files written, the files the metric reads that the maker could not make
    (read as a bare tensor, a tuple, a TorchScript module or a .mat file, or with keys
    renamed on the way), and the recording build's error ("" if none).
    """
    import pyiqa

    rec = _Recorder()
    error = ""
    with (
        _recording(rec, Path(root)),
        pkg_resources_shim(),
        contextlib.redirect_stdout(io.StringIO()),
    ):
        try:
            pyiqa.create_metric(name, as_loss=True, device=torch.device("cpu"))
        except Exception as exc:  # the real build below reports what is still missing
            error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ''}"
    written, unmade = [], []
    for path in sorted(rec.placeholders):
        if path in rec.records:
            _write(path, rec.records[path])
            written.append(path)
        else:
            os.remove(path)  # an empty file would read as "weights present, corrupt"
            unmade.append(os.path.basename(path))
    return written, unmade, error


def build_standin_model(name: str, root: Path) -> Any:
    """make_standins, then the adapter's own build (downloads refused); inside standin_cache.

    Raises StandinError naming what the maker could not make when the real build fails.
    """
    from benchmark.models.pyiqa_adapter import create_pyiqa_model

    _, unmade, error = make_standins(name, root)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return create_pyiqa_model(name)
    except Exception as exc:
        if not (unmade or error):
            raise
        what = f"cannot make {', '.join(unmade)}" if unmade else "recording build failed"
        raise StandinError(f"stand-in maker: {what} ({error or exc})") from exc


# -- one row of the table ---------------------------------------------------------------------


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(name: str, size: int = 192, steps: int = 5) -> dict[str, Any]:
    """Build on stand-ins, then: time/memory of forward+backward, determinism, gradient, attack."""
    import pyiqa

    from benchmark.attacks.registry import create_attack
    from benchmark.engine.cells import check_gradient

    cfg = pyiqa.DEFAULT_CONFIGS[name] if hasattr(pyiqa, "DEFAULT_CONFIGS") else None
    row: dict[str, Any] = {"name": name}
    with tempfile.TemporaryDirectory(prefix="pyiqa-standin-") as tmp, standin_cache(Path(tmp)):
        t0 = time.perf_counter()
        try:
            model = build_standin_model(name, Path(tmp))
        except Exception as exc:
            row["builds"] = False
            row["why"] = str(exc).splitlines()[0][:240]
            return row
        row["builds"] = True
        row["build_s"] = time.perf_counter() - t0
        row["kind"] = model.info.kind
        row["params"] = model.info.params
        row["policy"] = model.info.extra.get("input_policy", "")
        row["eot"] = model.info.extra.get("eot_samples", 1)
        row["stochastic"] = model.info.extra.get("stochastic", False)
        g = torch.Generator().manual_seed(0)
        x = torch.rand(2, 3, size, size, generator=g)
        ref = (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1)
        ref_arg = ref if model.info.kind == "FR" else None
        try:
            with torch.no_grad():
                a, b = model.score(x[:1], ref_arg[:1] if ref_arg is not None else None), None
                b = model.score(x[:1], ref_arg[:1] if ref_arg is not None else None)
            row["deterministic"] = bool(torch.equal(a, b))
            row["score"] = float(a[0])
            ok, why = check_gradient(model, x, ref_arg)
            row["gradient"] = "ok" if ok else f"none ({why})"
            xi = x[:1].clone().requires_grad_(ok)
            t0 = time.perf_counter()
            q = model.quality(xi, ref_arg[:1] if ref_arg is not None else None)
            if ok:  # without a usable gradient: the forward alone
                q.sum().backward()
            row["s_per_image"] = time.perf_counter() - t0
            row["peak_rss_mib"] = _rss_mib()
            if ok:
                attack = create_attack("ifgsm", eps=4 / 255, steps=steps, alpha="1/255")
                with torch.no_grad():
                    before = model.quality(x, ref_arg)
                adv = attack.perturb(model, x, ref=ref_arg)
                with torch.no_grad():
                    after = model.quality(adv, ref_arg)
                row["ifgsm_gain"] = [float(v) for v in (after - before)]
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            row["trace"] = traceback.format_exc(limit=-3)
    del cfg
    return row


# -- the table ---------------------------------------------------------------------------------


def _fmt_row(r: dict[str, Any]) -> str:
    name = f"`{r['name']}`"
    if r.get("skipped"):
        return f"| {name} | {r['kind']} | no: {r['skipped']} | | | | | | |"
    if r.get("timeout"):
        return f"| {name} | {r['kind']} | timed out after {r['timeout']} s | | | | | | |"
    if not r.get("builds"):
        return f"| {name} | {r['kind']} | no: {r.get('why', '?')} | | | | | | |"
    if "error" in r:
        return (
            f"| {name} | {r['kind']} | yes; fails: {r['error']} | {r.get('policy', '')} | | | | | |"
        )
    gain = r.get("ifgsm_gain")
    raised = "n/a" if gain is None else ("yes" if all(v > 0 for v in gain) else "no")
    gains = "" if gain is None else " (" + ", ".join(f"{v:+.3g}" for v in gain) + ")"
    det = "yes" if r["deterministic"] else "no"
    if r.get("eot", 1) > 1:
        det += f" (seeded per image; EOT {r['eot']})"
    return (
        f"| {name} | {r['kind']} | yes | {r.get('policy') or 'any size'} | "
        f"{r['peak_rss_mib']:.0f} | {r['s_per_image']:.2f} | {det} | {r['gradient']} | "
        f"{raised}{gains} |"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="", help="comma-separated pyiqa names (default: all)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per metric")
    ap.add_argument("--out", type=Path, help="write the markdown table here")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    ap.add_argument("--render", type=Path, help="only render --out from a --json of rows")
    ap.add_argument("--command", default="", help="with --render: the command that measured")
    ap.add_argument("--load", default="", help="with --render: the load it ran under")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # child process: one metric, JSON on stdout
    args = ap.parse_args()
    if args.render:
        args.out.write_text(render(json.loads(args.render.read_text()), args.command, args.load))
        return 0
    if args.one:
        row = measure(args.one)
        print("\n@@ROW@@" + json.dumps(row))
        return 0
    from pyiqa.default_model_configs import DEFAULT_CONFIGS

    names = [n for n in args.models.split(",") if n] or sorted(
        DEFAULT_CONFIGS, key=lambda n: (DEFAULT_CONFIGS[n].get("metric_mode", "NR") != "NR", n)
    )
    rows = []
    command = "OMP_NUM_THREADS=1 python scripts/pyiqa_standins.py " + " ".join(sys.argv[1:])
    load = "load average {:.1f} / {:.1f} / {:.1f} at the start".format(*os.getloadavg())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for name in names:
        kind = DEFAULT_CONFIGS[name].get("metric_mode", "NR")
        if name in SKIP:
            rows.append({"name": name, "kind": kind, "skipped": SKIP[name]})
            continue
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                [sys.executable, __file__, "--one", name],
                capture_output=True,
                text=True,
                timeout=args.timeout,
                env=env,
            )
            out = proc.stdout.rsplit("@@ROW@@", 1)
            if len(out) == 2:
                row = json.loads(out[1])
            else:
                tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                row = {"name": name, "builds": False, "why": f"crashed: {tail[:200]}"}
        except subprocess.TimeoutExpired:
            row = {"name": name, "timeout": args.timeout}
        row["kind"] = kind
        rows.append(row)
        print(f"{name}: {_fmt_row(row)} [{time.perf_counter() - t0:.0f} s]", flush=True)
        if args.json:  # after every row: a stopped run keeps what it measured
            args.json.write_text(json.dumps(rows, indent=1))
        if args.out:
            args.out.write_text(render(rows, command, load))
    return 0


def render(rows: list[dict[str, Any]], command: str = "", load: str = "") -> str:
    """The document: command, machine, the table, and what cannot run and why."""
    head = (
        "| metric | kind | builds with stand-ins | input policy | peak RSS MiB | s / image fwd+bwd "
        "| deterministic | input gradient | I-FGSM raises the score (gain per image) |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    never = [r for r in rows if r.get("skipped")]
    broken = [r for r in rows if r.get("builds") and "error" in r]
    unmade = [r for r in rows if r.get("builds") is False and "stand-in maker" in r.get("why", "")]
    slow = [r for r in rows if r.get("timeout")]
    lines = [
        "# pyiqa metrics on stand-in weights",
        "",
        "Every pyiqa metric built through pyiqa's own loading code, offline, on **stand-in",
        "weights** (random tensors with the names and shapes its loaders read, in a temporary",
        "cache: `scripts/pyiqa_standins.py`), then scored through the benchmark's adapter. The",
        "scores mean nothing; what the table shows is whether the path works: the build, the",
        "input sizes accepted, cost, determinism, the input gradient and one I-FGSM attack.",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: the shared 2-core CPU box, OMP_NUM_THREADS=1, {load}. Times are wall",
        "clock under that load: compare rows, not machines. Peak RSS is the measuring",
        "process's (build + one forward/backward). I-FGSM: eps 4/255, 5 steps of 1/255, two",
        "192x192 random images, through the benchmark's attack and adapter. Deterministic:",
        "two scorings of the same image are equal. Input gradient: the runner's check.",
        "",
        head,
        *(_fmt_row(r) for r in rows),
        "",
        "## What cannot run, and why",
        "",
    ]
    if never:
        lines.append("Not run here, and not runnable on this CPU even with the real weights:")
        lines += [f"- `{r['name']}`: {r['skipped']}" for r in never]
        lines.append("")
    if broken:
        lines.append(
            "Built, but failed when scored or attacked (a bug to fix, not a weights problem):"
        )
        lines += [f"- `{r['name']}`: {r['error']}" for r in broken]
        lines.append("")
    if unmade:
        lines.append(
            "Not covered by the stand-in maker (a file read as a tuple, a bare tensor, a "
            "TorchScript module of unknown architecture or a .mat file, or keys renamed on "
            "load): untested here, expected to run with the real files:"
        )
        lines += [f"- `{r['name']}`: {r['why']}" for r in unmade]
        lines.append("")
    if slow:
        lines.append("Over the per-metric time limit on this loaded CPU (not a failure):")
        lines += [f"- `{r['name']}`" for r in slow]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
