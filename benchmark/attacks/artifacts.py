"""The on-disk cache of trained attack artifacts (universal perturbations, generator weights)
and the base class of the attacks that train them.

An artifact is keyed by what determines it: the target model (name plus a fingerprint of its
class, metadata and every parameter/buffer), the attack's training config (everything except
the evaluation budget, see `TrainedAttack`) and the training data (a content hash of the
images, so a changed split or dataset retrains). It is stored as

    <artifact_dir>/<attack>/<model>/<key>.safetensors   tensors only (no pickle, ever)
    <artifact_dir>/<attack>/<model>/<key>.json          sidecar: key record, sha256 of the
                                                        tensor file, training time, ...

Both files are written to temporary names and moved into place with `os.replace`, tensors
first, so a sidecar always describes a complete tensor file; the sidecar's sha256 catches a
tensor file truncated or edited later, and loading then raises `CheckpointError`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from abc import abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from benchmark.attacks.base import Attack, AttackInfo, Direction
from benchmark.attacks.utils import frozen_eval, seeded_rng
from benchmark.errors import CheckpointError, ConfigError, DataError
from benchmark.models.base import IQAModel
from benchmark.paths import atomic_write

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_SLUG = re.compile(r"[^A-Za-z0-9_.+-]+")


# -- keys ------------------------------------------------------------------------------------


def model_fingerprint(model: IQAModel) -> str:
    """A hash of what makes the model compute what it computes: its wrapped class, metadata
    and every parameter and buffer (names, dtypes, shapes, values).

    Two checkpoints of one architecture, or a RobustBlock model and its base, get different
    fingerprints, so an artifact trained on one is never silently reused for the other.
    """
    h = hashlib.sha256()
    inner = model.net if model.net is not None else getattr(model, "_fn", None)
    cls = type(inner)
    qualname = getattr(inner, "__qualname__", None) if callable(inner) else None
    h.update(f"{cls.__module__}:{cls.__qualname__}:{qualname}".encode())
    info = model.info
    h.update(json.dumps([info.name, info.kind, info.lower_better, info.source]).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous().reshape(-1)  # 0-d buffers cannot be viewed
        h.update(f"{name}:{t.dtype}:{tuple(tensor.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:20]


@dataclass(frozen=True)
class ArtifactKey:
    """Identity of a trained artifact; `digest` names its files."""

    attack: str
    model: str
    model_fingerprint: str
    config: Mapping[str, Any]
    data_id: str

    def record(self) -> dict[str, Any]:
        return {
            "attack": self.attack,
            "model": self.model,
            "model_fingerprint": self.model_fingerprint,
            "config": dict(self.config),
            "data_id": self.data_id,
        }

    @property
    def digest(self) -> str:
        text = json.dumps(self.record(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:24]


# -- training data ---------------------------------------------------------------------------


@dataclass
class TrainingData:
    """The training images held in memory as uint8 (the runner streams them once; training
    needs several epochs) and the content hash that keys the artifact."""

    images: list[torch.Tensor]  # uint8 (3,H,W) each
    refs: list[torch.Tensor] | None
    data_id: str

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, limit: int | None) -> TrainingData:
        """At most `limit` images, evenly spaced over the stream (the built-in split is
        ordered by source image, so the first N would cover few sources)."""
        n = len(self.images)
        if limit is None or limit >= n:
            return self
        idx = [int(i * n / limit) for i in range(limit)]
        refs = None if self.refs is None else [self.refs[i] for i in idx]
        return TrainingData([self.images[i] for i in idx], refs, self.data_id)


def training_batches(
    data: TrainingData,
    batch_size: int,
    crop: int,
    generator: torch.Generator,
    device: torch.device,
) -> Iterable[tuple[torch.Tensor, torch.Tensor | None]]:
    """One epoch: shuffled batches of random `crop` x `crop` crops (the same window in image
    and reference) as float images on `device`. Images smaller than `crop` cap the crop."""
    side = min(crop, *(min(im.shape[1:]) for im in data.images))
    order = torch.randperm(len(data), generator=generator).tolist()
    for start in range(0, len(order), batch_size):
        xs, rs = [], []
        for i in order[start : start + batch_size]:
            im = data.images[i]
            top = int(torch.randint(0, im.shape[1] - side + 1, (1,), generator=generator))
            left = int(torch.randint(0, im.shape[2] - side + 1, (1,), generator=generator))
            window = (slice(None), slice(top, top + side), slice(left, left + side))
            xs.append(im[window])
            if data.refs is not None:
                rs.append(data.refs[i][window])
        x = torch.stack(xs).to(device, torch.float32) / 255
        ref = torch.stack(rs).to(device, torch.float32) / 255 if rs else None
        yield x, ref


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x.detach().to("cpu", torch.float32).clamp(0, 1) * 255).round().to(torch.uint8)


def collect_training_data(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor | None]],
) -> TrainingData:
    """Consume the runner's stream of (images, ref-or-None) batches into memory and hash it.

    Images are stored as 8-bit (the datasets decode 8-bit files, so nothing is lost there);
    the hash covers the stored bytes, shapes and order, and whether references came along.
    """
    h = hashlib.sha256()
    images: list[torch.Tensor] = []
    refs: list[torch.Tensor] = []
    has_refs: bool | None = None
    for batch in batches:
        if not isinstance(batch, tuple | list) or len(batch) != 2:
            raise DataError("training batches must be (images, ref-or-None) pairs")
        x, ref = batch
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3:
            raise DataError(f"training images must be (N,3,H,W) tensors, got {type(x).__name__}")
        if has_refs is None:
            has_refs = ref is not None
        elif has_refs != (ref is not None):
            raise DataError("training batches mix batches with and without reference images")
        x8 = _to_uint8(x)
        r8 = None if ref is None else _to_uint8(ref)
        for i in range(x8.shape[0]):
            h.update(f"{tuple(x8[i].shape)}".encode())
            h.update(x8[i].numpy().tobytes())
            images.append(x8[i])
            if r8 is not None:
                h.update(r8[i].numpy().tobytes())
                refs.append(r8[i])
    if not images:
        raise DataError("the attack's training split gave no image")
    h.update(b"refs" if has_refs else b"norefs")
    return TrainingData(images, refs if has_refs else None, f"sha256:{h.hexdigest()[:24]}")


# -- storage ---------------------------------------------------------------------------------


def _slug(name: str) -> str:
    return _SLUG.sub("_", name).strip("._") or "_"


def artifact_paths(artifact_dir: Path, key: ArtifactKey) -> tuple[Path, Path]:
    folder = Path(artifact_dir) / _slug(key.attack) / _slug(key.model)
    return folder / f"{key.digest}.safetensors", folder / f"{key.digest}.json"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_artifact(
    artifact_dir: Path,
    key: ArtifactKey,
    tensors: Mapping[str, torch.Tensor],
    meta: Mapping[str, Any],
) -> Path:
    """Write the tensors and their sidecar atomically; returns the tensor file's path."""
    tensor_path, sidecar_path = artifact_paths(artifact_dir, key)
    data = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write(tensor_path, lambda p: save_file(data, str(p)))
    sidecar = {
        "format": FORMAT_VERSION,
        "digest": key.digest,
        "key": key.record(),
        "file": tensor_path.name,
        "sha256": _sha256_file(tensor_path),
        "tensors": {k: [str(v.dtype), list(v.shape)] for k, v in data.items()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "meta": dict(meta),
    }
    text = json.dumps(sidecar, indent=2, sort_keys=True, default=str)
    atomic_write(sidecar_path, lambda p: p.write_text(text))
    return tensor_path


def load_artifact(
    artifact_dir: Path, key: ArtifactKey
) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The cached tensors and sidecar for `key`, None when absent; CheckpointError when the
    files exist but are corrupt, edited or describe another key."""
    tensor_path, sidecar_path = artifact_paths(artifact_dir, key)
    if not sidecar_path.exists():
        return None  # a tensor file without sidecar is an interrupted write: retrain
    hint = f"delete {tensor_path} and {sidecar_path.name} to retrain"
    try:
        sidecar = json.loads(sidecar_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"artifact sidecar {sidecar_path} is unreadable ({exc}); {hint}"
        ) from exc
    if not isinstance(sidecar, dict) or sidecar.get("digest") != key.digest:
        raise CheckpointError(f"artifact sidecar {sidecar_path} does not describe this key; {hint}")
    if not tensor_path.exists():
        raise CheckpointError(f"artifact {tensor_path} is missing beside its sidecar; {hint}")
    if _sha256_file(tensor_path) != sidecar.get("sha256"):
        raise CheckpointError(
            f"artifact {tensor_path} does not match the checksum in its sidecar "
            f"(truncated or modified); {hint}"
        )
    try:
        tensors = load_file(str(tensor_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"artifact {tensor_path} is not a valid safetensors file: {exc}; {hint}"
        ) from exc
    expected = sidecar.get("tensors", {})
    found = {k: [str(v.dtype), list(v.shape)] for k, v in tensors.items()}
    if found != expected:
        raise CheckpointError(f"artifact {tensor_path} holds other tensors than its sidecar lists")
    return tensors, sidecar


@dataclass(frozen=True)
class ArtifactRecord:
    """One cached artifact, as `list attacks --artifacts` shows it."""

    attack: str
    model: str
    digest: str
    path: Path
    size_bytes: int
    created: str
    train_seconds: float | None
    train_images: int | None
    data_id: str
    problem: str  # "" when the sidecar and file look intact


def list_artifacts(artifact_dir: Path) -> list[ArtifactRecord]:
    """Every artifact under `artifact_dir` (sidecars read, tensor files only stat'ed)."""
    root = Path(artifact_dir)
    out: list[ArtifactRecord] = []
    if not root.is_dir():
        return out
    for sidecar_path in sorted(root.glob("*/*/*.json")):
        tensor_path = sidecar_path.with_suffix(".safetensors")
        problem = ""
        try:
            sidecar = json.loads(sidecar_path.read_text())
            key = sidecar["key"]
            meta = sidecar.get("meta", {})
        except (OSError, ValueError, KeyError, TypeError) as exc:
            sidecar, key, meta = {}, {}, {}
            problem = f"unreadable sidecar: {exc}"
        if not problem and not tensor_path.exists():
            problem = "tensor file missing"
        elif not problem and tensor_path.stat().st_size == 0:
            problem = "tensor file empty"
        out.append(
            ArtifactRecord(
                attack=str(key.get("attack", sidecar_path.parent.parent.name)),
                model=str(key.get("model", sidecar_path.parent.name)),
                digest=sidecar_path.stem,
                path=tensor_path,
                size_bytes=tensor_path.stat().st_size if tensor_path.exists() else 0,
                created=str(sidecar.get("created", "")),
                train_seconds=meta.get("train_seconds"),
                train_images=meta.get("train_images"),
                data_id=str(key.get("data_id", "")),
                problem=problem,
            )
        )
    return out


# -- trained attacks -------------------------------------------------------------------------


class TrainedAttack(Attack):
    """Base of attacks that learn an artifact in `fit` and apply it in `_perturb`.

    Params: `defaults` lists the card parameters (and their values when the card omits them).
    `eval_params` names those that only act at attack time; every other parameter, the
    direction, the seed and `train_eps` enter the artifact key. The cell's `eps` does not:
    an artifact trained at `train_eps` is applied at any eps by scaling its perturbation by
    `eps / train_eps` (the MSU benchmark's amplitude scaling), so one training serves every
    budget of a model. Transfer: `fit` on a source model and `perturb` on another model
    applies the source's artifact; the target model is not consulted by these attacks.
    """

    norms: ClassVar[tuple[str, ...]] = ("linf",)
    defaults: ClassVar[dict[str, Any]] = {}
    eval_params: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self,
        info: AttackInfo,
        eps: float,
        direction: Direction = "up",
        seed: int = 0,
        **params: Any,
    ) -> None:
        super().__init__(info, eps, direction, seed, **params)
        self.artifact: dict[str, torch.Tensor] | None = None
        self.artifact_meta: dict[str, Any] = {}
        self.artifact_path: Path | None = None
        self.source_model: str | None = None
        self.train_calls = 0  # how many times `_train` actually ran (cache misses)
        self.attack_seconds = 0.0
        self.attacked_images = 0

    # subclasses ---------------------------------------------------------------------------

    @abstractmethod
    def _train(self, model: IQAModel, data: TrainingData) -> dict[str, torch.Tensor]:
        """Learn the artifact on `data` for `model`; return the tensors to store."""

    @abstractmethod
    def _check_artifact(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Raise CheckpointError when loaded tensors cannot be this attack's artifact."""

    def train_limit(self) -> int | None:
        return None

    # -------------------------------------------------------------------------------------

    def training_config(self) -> dict[str, Any]:
        """What the artifact depends on (the key's config part)."""
        train = {k: v for k, v in sorted(self.params.items()) if k not in self.eval_params}
        return {
            "class": f"{type(self).__module__}:{type(self).__qualname__}",
            "direction": self.direction,
            "seed": self.seed,
            "params": train,
            "format": FORMAT_VERSION,
        }

    def fit(
        self,
        model: IQAModel,
        train_batches: Iterable[tuple[torch.Tensor, torch.Tensor | None]],
        artifact_dir: Path,
        data_id: str | None = None,
    ) -> None:
        """Load the cached artifact for (model, config, data) or train and cache it.

        Without `data_id` the training data is identified by a hash of its content, which
        means streaming the whole split even when the artifact is cached. A caller that can
        name the data (dataset, split, image ids and the dataset's own version) passes
        `data_id`; then a cache hit never iterates `train_batches` (pass a lazy generator).
        """
        data: TrainingData | None = None
        if data_id is None:
            data = collect_training_data(train_batches)
            data_id = data.data_id
        key = ArtifactKey(
            self.info.name, model.name, model_fingerprint(model), self.training_config(), data_id
        )
        device = _model_device(model)
        cached = load_artifact(Path(artifact_dir), key)
        tensor_path, _ = artifact_paths(Path(artifact_dir), key)
        if cached is not None:
            tensors, sidecar = cached
            try:
                self._check_artifact(tensors)
            except CheckpointError as exc:
                raise CheckpointError(f"{tensor_path}: {exc}") from exc
            meta = dict(sidecar.get("meta", {}))
            meta["loaded"] = True
            log.info("%s: reusing trained artifact %s", self.info.name, tensor_path)
        else:
            if data is None:
                data = collect_training_data(train_batches)
                data.data_id = data_id
            subset = data.subset(self.train_limit())
            log.info(
                "%s: training on %s (%d of %d images)",
                self.info.name,
                model.name,
                len(subset),
                len(data),
            )
            t0 = time.perf_counter()
            with frozen_eval(model), seeded_rng(self.seed, device), torch.enable_grad():
                tensors = self._train(model, subset)
            tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
            self.train_calls += 1
            meta = {
                "train_seconds": round(time.perf_counter() - t0, 3),
                "train_images": len(subset),
                "available_images": len(data),
                "device": str(device),
                "torch": torch.__version__,
            }
            save_artifact(Path(artifact_dir), key, tensors, meta)
            meta["loaded"] = False
        self.artifact = {k: v.to(device) for k, v in tensors.items()}
        self.artifact_meta = meta
        self.artifact_path = tensor_path
        self.source_model = model.name

    def runtime(self) -> dict[str, Any]:
        """Training and attack time, kept out of `config()` so config hashes stay stable."""
        per_image = self.attack_seconds / self.attacked_images if self.attacked_images else None
        return {
            "train_seconds": self.artifact_meta.get("train_seconds"),
            "artifact_loaded": self.artifact_meta.get("loaded"),
            "artifact": None if self.artifact_path is None else str(self.artifact_path),
            "source_model": self.source_model,
            "attack_seconds_per_image": per_image,
        }

    def perturb(
        self, model: IQAModel, x: torch.Tensor, ref: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.artifact is None:
            raise ConfigError(
                f"attack {self.info.name!r} is trainable: call fit() before perturb()"
            )
        t0 = time.perf_counter()
        out = super().perturb(model, x, ref)
        self.attack_seconds += time.perf_counter() - t0
        self.attacked_images += x.shape[0]
        return out

    @property
    def scale(self) -> float:
        """Factor from the trained amplitude (`train_eps`) to this cell's eps."""
        return self.eps / self.train_eps

    @property
    def train_eps(self) -> float:
        from benchmark.budget import parse_budget

        return parse_budget(self.params["train_eps"], f"attack {self.info.name!r}: train_eps")


def require_gradient(attack: Attack, model: IQAModel, value: torch.Tensor) -> None:
    """Training needs the score's input gradient; say so plainly when a model has none."""
    if not value.requires_grad:
        raise ConfigError(
            f"attack {attack.info.name!r} trains through the input gradient, and model "
            f"{model.name!r} has none (not differentiable): not applicable"
        )


def _model_device(model: IQAModel) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")
