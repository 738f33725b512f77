"""One model group's work: build the model once, check its input gradient, score the clean
images once, then run and hand over each cell (attack preset, eps, direction).

An executor (`benchmark.engine.executors`) decides where `run_group` runs; the runner
(`benchmark.engine.runner`) plans cells, skips stored ones and writes what comes back.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from benchmark.attacks.artifacts import TrainedAttack
from benchmark.attacks.base import Attack
from benchmark.attacks.registry import create_attack
from benchmark.attacks.utils import seeded_rng
from benchmark.budget import budget_label
from benchmark.datasets.base import Batch, IQADataset, spread
from benchmark.datasets.registry import create_dataset
from benchmark.engine.allocator import keep_freed_memory, release_freed_memory
from benchmark.engine.batching import MAX_BATCH, BatchChoice, measured_batch_size
from benchmark.engine.config import RunConfig
from benchmark.errors import BenchmarkError, ConfigError
from benchmark.image_stats import perturbation_stats
from benchmark.models.base import IQAModel
from benchmark.models.registry import create_model
from benchmark.models.smoothing import Interval, certify, l2_radius, smoother_of
from benchmark.paths import cache_dir
from benchmark.provenance import run_meta
from benchmark.store.cell import CERTIFIED_FIELDS, CellKey, CellResult

log = logging.getLogger(__name__)

DECODED_CACHE_BYTES = 1 << 30  # per (model, dataset) group
# Fewest images the input-gradient check decides "no gradient" on: an FR metric's gradient is
# exactly zero on an image equal to its reference (a builtin split starts with one), so a
# batch of one must not decide for the whole run that the model has no gradient.
GRADIENT_PROBE_IMAGES = 8


# -- planning ------------------------------------------------------------------------------


def make_attack(cfg: RunConfig, name: str, eps: float | None, direction: str) -> Attack:
    return create_attack(name, eps, direction=direction, seed=cfg.seed, **cfg.params)  # type: ignore[arg-type]


def plan_cells(cfg: RunConfig) -> list[tuple[CellKey, Attack]]:
    """Every (model, attack, eps, direction) cell with its attack built (params validated)."""
    cells = []
    eps_values: tuple[float | None, ...] = cfg.eps or (None,)
    for model in cfg.models:
        for attack_name in cfg.attacks:
            for eps in eps_values:
                for direction in cfg.directions:
                    attack = make_attack(cfg, attack_name, eps, direction)
                    cells.append((cell_key(cfg, model, attack), attack))
    return cells


def cell_key(cfg: RunConfig, model: str, attack: Attack) -> CellKey:
    """Transfer cells are named `<attack>@<source>`: their numbers differ from white-box ones."""
    label = attack.info.name
    if cfg.attack_source and cfg.attack_source != model:
        label = f"{label}@{cfg.attack_source}"
    return CellKey(model, cfg.dataset, label, attack.eps, attack.direction)


def attack_record(attack: Attack) -> dict[str, Any]:
    info = attack.info
    return attack.config() | {
        "family": info.family,
        "gradient_free": info.gradient_free,
        "trainable": info.trainable,
        "reference": info.reference,
    }


def config_hash(cfg: RunConfig, attack: Attack) -> str:
    """Identity of a cell's computation: same hash = same numbers (so resume may skip it)."""
    record = {
        "attack": attack_record(attack),
        "split": cfg.split,
        "limit": cfg.limit,
        "seed": cfg.seed,
        "data_root": cfg.data_root,
        "attack_source": cfg.attack_source,
    }
    if cfg.sample is not None:  # absent otherwise, so earlier stored cells keep their hash
        record["sample"] = cfg.sample
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:16]


# -- per-image measurements ------------------------------------------------------------------


def check_gradient(model: IQAModel, x: torch.Tensor, ref: torch.Tensor | None) -> tuple[bool, str]:
    """Whether the quality score has a usable input gradient on this batch, and why not.

    Usable = finite and non-zero on at least one image: FR metrics legitimately have
    non-finite or zero gradients on some images (x == ref, where they are already optimal).
    """
    x = x.detach().clone().requires_grad_(True)
    try:
        with torch.enable_grad():
            q = model.quality(x, ref)
            if not q.requires_grad:
                return False, "the score has no grad_fn (not differentiable w.r.t. the input)"
            (grad,) = torch.autograd.grad(q.sum(), x, allow_unused=True)
    except RuntimeError as exc:
        return False, f"backward failed: {str(exc).splitlines()[0][:160]}"
    if grad is None:
        return False, "the score does not depend on the input through autograd"
    flat = grad.flatten(1)
    finite = torch.isfinite(flat).all(dim=1)
    nonzero = flat.abs().nan_to_num(0.0).amax(dim=1) > 0
    if (finite & nonzero).any():
        return True, ""
    n = len(flat)
    if not finite.any():
        return False, f"the input gradient is not finite on any of the {n} image(s) checked"
    return False, f"the input gradient is exactly zero on all {n} image(s) checked"


# -- one (model, dataset) group -------------------------------------------------------------


@dataclass
class GroupContext:
    """A model and its dataset, with the clean scores computed once and shared by its cells."""

    model: IQAModel
    dataset: IQADataset
    cfg: RunConfig
    source: IQAModel | None = None  # transfer attacks are crafted on this model
    gradient_ok: bool | None = None
    gradient_reason: str = ""
    clean: dict[str, float] = field(default_factory=dict)
    # a smoothed model's noise samples (normalised scores) of each clean image, which its
    # certificates at every cell's radius are computed from
    clean_samples: dict[str, np.ndarray] = field(default_factory=dict)
    input_shape: tuple[int, ...] | None = None  # (C, H, W) of the first batch, for bounds
    batch_size: int = 16  # the configured size, or the measured one (`resolve_batch_size`)
    batch_choice: BatchChoice | None = None
    _decoded: list[Batch] | None = field(default=None, repr=False)
    _train: IQADataset | None = field(default=None, repr=False)

    def train_split(self) -> IQADataset:
        """The dataset's train split, which trained attacks fit on (opened once per group)."""
        if self._train is None:
            self._train = create_dataset(self.cfg.dataset, "train", self.cfg.data_root)
        return self._train

    def _on_device(self, b: Batch) -> Batch:
        device = torch.device(self.cfg.device)
        b.images = b.images.to(device)
        if b.refs is not None:
            b.refs = b.refs.to(device)
        return b

    def batches(self) -> Iterator[Batch]:
        """The run's images on the device, in batches of the group's size.

        The decoded batches are kept (up to `DECODED_CACHE_BYTES`) for the group's next
        cells: decoding the split again for every cell cost as much as a cheap model's
        scoring. Attacks never write into their input (`Attack.perturb` detaches and every
        attack works on copies; tested), so sharing the tensors is safe.
        """
        if self._decoded is not None:
            yield from self._decoded
            return
        keep: list[Batch] | None = []
        kept_bytes = 0
        for b in self.dataset.batches(self.batch_size, self.cfg.limit, self.cfg.sample):
            b = self._on_device(b)
            if keep is not None:
                kept_bytes += b.images.nbytes + (b.refs.nbytes if b.refs is not None else 0)
                if kept_bytes <= DECODED_CACHE_BYTES:
                    keep.append(b)
                else:
                    keep = None
            yield b
        self._decoded = keep  # only once the whole split went through

    @property
    def attacker(self) -> IQAModel:
        return self.source or self.model

    def attacker_ref(self, batch: Batch) -> torch.Tensor | None:
        return batch.refs if self.attacker.info.kind == "FR" else None

    @property
    def missing_refs(self) -> str | None:
        """Why no cell of this group can run (an FR model on a dataset without references)."""
        if self.model.info.kind == "FR" and not self.dataset.info.has_refs:
            return f"full-reference model; dataset {self.dataset.name!r} has no reference images"
        return None

    def refs_for(self, batch: Batch) -> torch.Tensor | None:
        if self.model.info.kind != "FR":
            return None
        if batch.refs is None:
            raise ConfigError(
                f"{self.model.name} is full-reference and dataset {self.dataset.name!r} has no reference images"
            )
        return batch.refs

    def resolve_batch_size(self) -> None:
        """The configured batch size, else the fastest per image that fits (measured once).

        Probed on the model the attacks differentiate, with a few of the run's own images; a
        probe that fails (a broken plugin) leaves the default, and the cells report the error.
        """
        if self.cfg.batch_size is not None:
            self.batch_size = self.cfg.batch_size
            return
        if self.missing_refs:
            return  # every cell is "not applicable": nothing to run, nothing to measure
        n = len(spread(self.dataset.ids(), self.cfg.sample))
        if self.cfg.limit is not None:
            n = min(n, self.cfg.limit)
        try:
            first = next(self.dataset.batches(4, self.cfg.limit, self.cfg.sample), None)
            if first is None:
                return
            first = self._on_device(first)
            self.batch_choice = measured_batch_size(
                self.attacker,
                first.images,
                self.attacker_ref(first),
                max_size=min(MAX_BATCH, n),
                cache_file=cache_dir() / "batch-sizes.json",
            )
        except Exception as exc:  # noqa: BLE001 -- the cells themselves will fail and say why
            log.warning(
                "%s: batch-size probe failed (%s); using %d", self.model.name, exc, self.batch_size
            )
            return
        self.batch_size = self.batch_choice.size
        how = "measured before" if self.batch_choice.cached else "measured"
        log.info(
            "%s: batch size %d (%s: %s)",
            self.model.name,
            self.batch_size,
            how,
            self.batch_choice.why,
        )

    def clean_scores(self, batch: Batch, ref: torch.Tensor | None) -> np.ndarray:
        if self.input_shape is None:
            self.input_shape = tuple(batch.images.shape[1:])
        missing = [i for i in batch.ids if i not in self.clean]
        if missing:
            if self.gradient_ok is None:
                ok, why = check_gradient(self.attacker, batch.images, self.attacker_ref(batch))
                if not ok and len(batch.ids) < GRADIENT_PROBE_IMAGES:  # too few to decide
                    probe = next(
                        self.dataset.batches(GRADIENT_PROBE_IMAGES, self.cfg.limit, self.cfg.sample)
                    )
                    probe = self._on_device(probe)
                    ok, why = check_gradient(self.attacker, probe.images, self.attacker_ref(probe))
                self.gradient_ok, self.gradient_reason = ok, why
                if not self.gradient_ok:
                    log.warning(
                        "%s: gradient none (%s); gradient attacks are not applicable",
                        self.model.name,
                        self.gradient_reason,
                    )
            smoother = smoother_of(self.model)
            with torch.inference_mode(), seeded_rng(self.cfg.seed, batch.images.device):
                if smoother is None:
                    s = self.model.score(batch.images, ref).double().cpu().numpy()
                else:  # the same smoothed score, its samples kept for the certificates
                    samples = smoother.samples(batch.images, ref)
                    s = smoother.to_raw(smoother.estimate(samples)).numpy()
                    self.clean_samples.update(zip(batch.ids, samples.numpy(), strict=True))
            self.clean.update(zip(batch.ids, s, strict=True))
        return np.array([self.clean[i] for i in batch.ids], dtype=np.float64)


PER_IMAGE_KEYS = ("image_id", "mos", "clean", "attacked", "linf", "l2", "l0", "psnr", "ssim",
                  "seconds", "queries")  # fmt: skip
ATTACK_KEYS = ("attacked", "linf", "l2", "l0", "psnr", "ssim", "seconds", "queries")


def _attack_batches(
    ctx: GroupContext, key: CellKey, attack: Attack, rows: dict[str, list[Any]], progress: bool
) -> tuple[str, str]:
    """Fill `rows` batch by batch; returns (status, reason). Raises on failure."""
    if ctx.missing_refs:
        return "not_applicable", ctx.missing_refs
    fitted = not attack.info.trainable
    status, reason = "done", ""
    desc = f"{key.model} {key.attack}@{budget_label(key.eps)} {key.direction}"
    for batch in tqdm(ctx.batches(), desc=desc, unit="batch", leave=False, disable=not progress):
        ref = ctx.refs_for(batch)
        clean = ctx.clean_scores(batch, ref)
        n = len(batch.ids)
        rows["image_id"] += batch.ids
        rows["mos"].append(batch.mos.numpy())
        rows["clean"].append(clean)
        if not ctx.gradient_ok and not attack.info.gradient_free:
            status = "not_applicable"
            reason = f"gradient attack on a model without input gradient ({ctx.gradient_reason})"
            for k in ATTACK_KEYS:
                rows[k].append(np.full(n, np.nan))
            continue
        if not fitted:  # after the gradient check: a model without gradient trains nothing
            fit_attack(ctx, attack)
            fitted = True
        t0 = time.perf_counter()
        x_adv = attack.perturb(ctx.attacker, batch.images, ctx.attacker_ref(batch))
        counts = attack.query_counts  # score queries per image, for attacks that count them
        rows["queries"].append(np.full(n, np.nan) if counts is None else counts)
        with torch.inference_mode(), seeded_rng(ctx.cfg.seed, x_adv.device):
            attacked = ctx.model.score(x_adv, ref).double().cpu().numpy()
        seconds = (time.perf_counter() - t0) / n
        if attack.info.trainable and not rows["example_delta"]:
            delta = (x_adv[0] - batch.images[0]) / attack.eps
            rows["example_delta"].append(
                ((delta.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
            )
        rows["attacked"].append(attacked)
        for k, v in perturbation_stats(batch.images, x_adv).items():
            rows[k].append(v)
        rows["seconds"].append(np.full(n, seconds))
    if not rows["image_id"]:
        raise ConfigError(f"dataset {ctx.dataset.name!r} gave no readable image")
    if not np.isfinite(np.concatenate(rows["clean"])).any():
        raise BenchmarkError(
            f"{key.model} returned no finite clean score (NaN or inf on every image)"
        )
    return status, reason


def run_cell(ctx: GroupContext, key: CellKey, attack: Attack, progress: bool = True) -> CellResult:
    """Attack every image of the dataset for one cell; failures become a `failed` cell."""
    t_start = time.perf_counter()
    rows: dict[str, list[Any]] = {k: [] for k in (*PER_IMAGE_KEYS, "example_delta")}
    try:
        status, reason = _attack_batches(ctx, key, attack, rows, progress)
    except Exception as exc:  # one bad cell (a plugin that raises, NaN model) must not end the run
        log.error("cell %s failed: %s", key, exc, exc_info=not isinstance(exc, BenchmarkError))
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        status, reason = "failed", f"{type(exc).__name__}: {first_line}"[:500]
    n = len(rows["image_id"])
    example = rows.pop("example_delta")
    arrays = {k: _concat(v, n) for k, v in rows.items() if k != "image_id"}
    if status == "failed":
        for k in ATTACK_KEYS:
            arrays[k] = np.full(n, np.nan)
    if np.isnan(arrays["queries"]).all():  # an attack that does not count its queries
        arrays["queries"] = None
    if status == "done" and not np.isfinite(arrays["attacked"]).all():
        bad = int((~np.isfinite(arrays["attacked"])).sum())
        log.warning("%s: %d attacked score(s) are not finite", key, bad)
    info = ctx.model.info.to_dict() | {"gradient_reason": ctx.gradient_reason}
    return CellResult(
        key=key,
        status=status,  # type: ignore[arg-type]
        image_id=np.array(rows["image_id"], dtype=object),
        group=np.array([ctx.dataset.group(i) for i in rows["image_id"]], dtype=object),
        model_info=info,
        attack_config=attack_record(attack),
        gradient="none" if ctx.gradient_ok is False else "ok",
        reason=reason,
        meta=run_meta(ctx.cfg.device, ctx.cfg.seed)
        | {
            "wall_s": time.perf_counter() - t_start,
            "split": ctx.dataset.info.split,
            "limit": ctx.cfg.limit,
            "sample": ctx.cfg.sample,
            "batch_size": ctx.batch_size,
            "batch_probe": ctx.batch_choice.to_dict() if ctx.batch_choice else None,
            "skipped_images": dict(ctx.dataset.skipped),
            "attack_source": ctx.source.name if ctx.source else None,
            "input_shape": list(ctx.input_shape) if ctx.input_shape else None,
        }
        | ({"attack_runtime": attack.runtime()} if hasattr(attack, "runtime") else {}),
        example_delta=example[0] if example and status == "done" else None,
        certified=certificates(ctx, key, attack, rows["image_id"]) if status != "failed" else None,
        **arrays,
    )


def certificates(
    ctx: GroupContext, key: CellKey, attack: Attack, ids: list[str]
) -> dict[str, np.ndarray] | None:
    """A smoothed model's certified interval of each image (raw units) at the L2 radius that
    contains the cell's ball, and at L2 radius eps (NaN for an L0 budget, counted in pixels);
    None for a model that is not smoothed."""
    smoother = smoother_of(ctx.model)
    if smoother is None or not ids or ctx.input_shape is None:
        return None
    samples = np.stack([ctx.clean_samples[i] for i in ids])
    norm = attack.info.norm
    radius = l2_radius(key.eps, norm, ctx.input_shape)
    at_ball = certify(samples, smoother.method, smoother.sigma, radius)
    n = len(ids)
    at_eps = (
        certify(samples, smoother.method, smoother.sigma, float(key.eps))
        if norm != "l0"
        else Interval(np.full(n, np.nan), np.full(n, np.nan))
    )
    out = {
        "lower": smoother.to_raw(at_ball.lower),
        "upper": smoother.to_raw(at_ball.upper),
        "lower_l2eps": smoother.to_raw(at_eps.lower),
        "upper_l2eps": smoother.to_raw(at_eps.upper),
        "radius": np.full(n, radius),
        "n_samples": np.full(n, float(smoother.n)),
        "abstain": at_ball.abstain.astype(np.float64),
    }
    return {k: out[k] for k in CERTIFIED_FIELDS}


def _concat(parts: list[Any], n: int) -> np.ndarray:
    if not parts:
        return np.full(n, np.nan)
    out = np.concatenate([np.asarray(p, dtype=np.float64) for p in parts])
    return out if out.shape == (n,) else np.full(n, np.nan)


def fit_attack(ctx: GroupContext, attack: Attack) -> None:
    """Trainable attacks learn on the dataset's train split (artifacts cached on disk).

    The training data is named by dataset, root (the built-in one's folder carries its
    recipe hash) and a hash of its image ids, so a cached artifact loads without reading it.
    An attack that trains on `train_limit()` evenly spaced images gets only those decoded
    (the images `TrainingData.subset` would pick from the whole split, in the same order).
    """
    train = ctx.train_split()
    device = torch.device(ctx.cfg.device)
    attacker = ctx.attacker
    ids = train.ids()
    digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]
    data_id = f"{ctx.cfg.dataset}:train:{getattr(train, 'root', '')}:{len(ids)}:{digest}"
    limit = attack.train_limit() if isinstance(attack, TrainedAttack) else None

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        for b in train.batches(ctx.batch_size, sample=limit):
            ref = b.refs.to(device) if (b.refs is not None and attacker.info.kind == "FR") else None
            yield b.images.to(device), ref

    attack.fit(attacker, batches(), cache_dir() / "artifacts", data_id=data_id)


# -- one model group -------------------------------------------------------------------------

CellSink = Callable[[CellResult, str], None]


def iter_group(
    cfg: RunConfig,
    model_name: str,
    cells: list[tuple[CellKey, Attack]],
    progress: bool = True,
    dataset: IQADataset | None = None,
) -> Iterator[tuple[CellResult, str]]:
    """Build one model (and the dataset unless given), then yield each of its cells with its
    config hash as it finishes (what a Ray group task streams back to the driver)."""
    keep_freed_memory()  # here, so that Ray workers (which do not pass through `run`) get it too
    model = create_model(model_name, cfg.device)
    if dataset is None:
        dataset = create_dataset(cfg.dataset, cfg.split, cfg.data_root)
    source = None
    if cfg.attack_source and cfg.attack_source != model_name:
        source = create_model(cfg.attack_source, cfg.device)
    ctx = GroupContext(model, dataset, cfg, source)
    try:
        ctx.resolve_batch_size()
        for key, attack in cells:
            yield run_cell(ctx, key, attack, progress), config_hash(cfg, attack)
    finally:
        del ctx, model, source
        release_freed_memory()


def run_group(
    cfg: RunConfig,
    model_name: str,
    cells: list[tuple[CellKey, Attack]],
    sink: CellSink,
    progress: bool = True,
    dataset: IQADataset | None = None,
) -> None:
    """Build one model (and the dataset unless given), then run and hand over each of its cells."""
    with closing(iter_group(cfg, model_name, cells, progress, dataset)) as finished:
        for cell, chash in finished:
            sink(cell, chash)
