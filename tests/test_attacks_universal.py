"""Trainable attacks (UAP, cumulative UAP, generative UAP, FACPA) and their artifact cache, on a
randomly initialised pyiqa CNNIQA (NR) and pyiqa SSIM (FR), with tiny sizes and few epochs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyiqa
import pytest
import torch
import torch.nn.functional as F
from pyiqa.archs.cnniqa_arch import CNNIQA

from benchmark.attacks.artifacts import (
    TrainedAttack,
    collect_training_data,
    list_artifacts,
    model_fingerprint,
)
from benchmark.attacks.facpa import UNetGenerator, apply_tiled
from benchmark.attacks.registry import create_attack, list_attacks
from benchmark.attacks.universal import tile_to
from benchmark.errors import CheckpointError, ConfigError
from benchmark.models.base import IQAModel, ModelInfo

TRAINED = ["uap", "cumulative-uap", "generative-uap", "facpa"]
# tiny settings: 16 training images of 64x64, a 48x48 pattern (so tiling wraps), 2-level U-Nets
SMALL = {
    "uap": {"size": 48, "epochs": 6, "batch_size": 4, "train_images": 16, "lr": 0.01},
    "cumulative-uap": {"size": 48, "epochs": 6, "batch_size": 4, "train_images": 16},
    "generative-uap": {
        "size": 48,
        "epochs": 6,
        "batch_size": 4,
        "train_images": 16,
        "lr": 0.01,
        "depth": 3,
        "width": 8,
    },
    "facpa": {"crop": 64, "epochs": 6, "train_images": 16, "lr": 0.01, "depth": 3, "width": 8},
}


def make_cnniqa(seed: int = 0, name: str = "cnniqa-random") -> IQAModel:
    torch.manual_seed(seed)
    info = ModelInfo(name=name, kind="NR", lower_better=False, score_range=None, source="pyiqa")
    return IQAModel(CNNIQA(pretrained=None), info).eval()


def make_fr(name: str) -> IQAModel:
    metric = pyiqa.create_metric(name, as_loss=True, loss_reduction="none", device="cpu")
    info = ModelInfo(
        name=name, kind="FR", lower_better=metric.lower_better, score_range=(0, 1), source="pyiqa"
    )
    return IQAModel(metric, info)


def smooth_images(n: int, seed: int, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(distorted, reference): smooth random references plus noise."""
    g = torch.Generator().manual_seed(seed)
    ref = F.avg_pool2d(torch.rand(n, 3, size, size, generator=g), 5, 1, 2)
    x = (ref + 0.05 * torch.randn(ref.shape, generator=g)).clamp(0, 1)
    return x, ref


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny convolutions gain nothing from threads, and oversubscribed cores lose 10x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cnniqa() -> IQAModel:
    return make_cnniqa()


@pytest.fixture(scope="module")
def data() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {"train": smooth_images(16, 0), "test": smooth_images(6, 1)}


def batches(pair: tuple[torch.Tensor, torch.Tensor], fr: bool = False):
    x, ref = pair
    return [(x[i : i + 8], ref[i : i + 8] if fr else None) for i in range(0, x.shape[0], 8)]


def trained(name: str, model: IQAModel, data, tmp: Path, **kw) -> TrainedAttack:
    attack = create_attack(name, **{**SMALL[name], **kw})
    assert isinstance(attack, TrainedAttack)
    attack.fit(model, batches(data["train"], model.info.kind == "FR"), tmp)
    return attack


def gain(attack, model, x, x_adv, ref=None) -> torch.Tensor:
    with torch.no_grad():
        return attack.objective(model, x_adv, ref) - attack.objective(model, x, ref)


@pytest.mark.parametrize("direction", ["up", "down"])
@pytest.mark.parametrize("name", TRAINED)
def test_moves_held_out_scores_the_requested_way_within_budget(
    cnniqa, data, tmp_path, name, direction
):
    attack = trained(name, cnniqa, data, tmp_path, direction=direction)
    x, _ = data["test"]  # images the attack was not trained on
    x_adv = attack.perturb(cnniqa, x)
    assert gain(attack, cnniqa, x, x_adv).mean() > 0
    with torch.no_grad():
        raw = (cnniqa.score(x_adv) - cnniqa.score(x)).mean()
    assert (raw > 0) == (direction == "up")
    linf = (x_adv - x).abs().flatten(1).amax(dim=1)
    assert (linf <= attack.eps + 1e-6).all() and (linf > attack.eps / 2).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1


@pytest.mark.parametrize("name", ["uap", "facpa"])
def test_full_reference_model_down(data, tmp_path, name):
    ssim = make_fr("ssim")
    attack = trained(name, ssim, data, tmp_path, direction="down")
    x, ref = data["test"]
    x_adv = attack.perturb(ssim, x, ref)
    assert (gain(attack, ssim, x, x_adv, ref) > 0).all()
    assert (
        json.loads(attack.artifact_path.with_suffix(".json").read_text())["meta"]["train_images"]
        == 16
    )


@pytest.mark.parametrize("name", TRAINED)
def test_trained_artifact_is_reused_not_retrained(cnniqa, data, tmp_path, name):
    first = trained(name, cnniqa, data, tmp_path)
    assert first.train_calls == 1 and first.artifact_meta["loaded"] is False
    assert first.artifact_meta["train_seconds"] > 0
    x, _ = data["test"]
    expected = first.perturb(cnniqa, x)

    again = trained(name, cnniqa, data, tmp_path)  # a new object, as in a second run
    assert again.train_calls == 0 and again.artifact_meta["loaded"] is True
    assert again.runtime()["train_seconds"] == first.artifact_meta["train_seconds"]
    assert torch.equal(again.perturb(cnniqa, x), expected)

    # another budget uses the same artifact, scaled: no training, half the perturbation
    half = trained(name, cnniqa, data, tmp_path, eps=first.eps / 2)
    assert half.train_calls == 0
    if name != "facpa":
        assert torch.allclose(half.perturbation(), first.perturbation() / 2, atol=1e-7)
    assert (half.perturb(cnniqa, x) - x).abs().max() <= first.eps / 2 + 1e-6

    # what the key depends on: training data, model weights, direction, training params
    changed = [
        trained(name, cnniqa, {"train": smooth_images(16, 5)}, tmp_path),
        trained(name, make_cnniqa(seed=1), data, tmp_path),
        trained(name, cnniqa, data, tmp_path, direction="down"),
        trained(name, cnniqa, data, tmp_path, epochs=1),
    ]
    assert [a.train_calls for a in changed] == [1, 1, 1, 1]
    records = [r for r in list_artifacts(tmp_path) if r.attack == name]
    assert len(records) == 5 and all(r.problem == "" and r.size_bytes > 0 for r in records)


def test_deterministic_under_seed(cnniqa, data, tmp_path):
    x, _ = data["test"]
    for name in TRAINED:
        outs = []
        for i, seed in enumerate((3, 3, 4)):
            attack = trained(name, cnniqa, data, tmp_path / str(i), seed=seed)
            assert attack.train_calls == 1
            outs.append(attack.perturb(cnniqa, x))
        assert torch.equal(outs[0], outs[1]), name
        assert not torch.equal(outs[0], outs[2]), name


def test_corrupt_artifacts_are_refused(cnniqa, data, tmp_path):
    attack = trained("uap", cnniqa, data, tmp_path)
    path = attack.artifact_path
    sidecar = path.with_suffix(".json")
    blob = path.read_bytes()

    path.write_bytes(blob[: len(blob) // 2])  # truncated
    with pytest.raises(CheckpointError, match="checksum"):
        trained("uap", cnniqa, data, tmp_path)
    assert "checksum" not in list_artifacts(tmp_path)[0].problem  # listing stays cheap

    path.write_bytes(b"\x00" * len(blob))  # garbage with a forged checksum
    meta = json.loads(sidecar.read_text())
    meta["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="safetensors"):
        trained("uap", cnniqa, data, tmp_path)

    sidecar.write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable"):
        trained("uap", cnniqa, data, tmp_path)
    assert list_artifacts(tmp_path)[0].problem.startswith("unreadable sidecar")

    # intact files whose tensors cannot be this card's artifact
    wrong = create_attack("uap", **{**SMALL["uap"], "size": 32})
    with pytest.raises(CheckpointError, match="delta"):
        wrong._check_artifact({"delta": torch.zeros(1, 3, 48, 48)})
    with pytest.raises(CheckpointError, match="exceeds"):
        wrong._check_artifact({"delta": torch.ones(1, 3, 32, 32)})


def test_named_training_data_is_not_streamed_on_a_cache_hit(cnniqa, data, tmp_path):
    consumed = []

    def lazy():
        for pair in batches(data["train"]):
            consumed.append(1)
            yield pair

    first = create_attack("uap", **SMALL["uap"])
    first.fit(cnniqa, lazy(), tmp_path, data_id="builtin:train:v1")
    assert first.train_calls == 1 and consumed
    consumed.clear()
    again = create_attack("uap", **SMALL["uap"])
    again.fit(cnniqa, lazy(), tmp_path, data_id="builtin:train:v1")
    assert again.train_calls == 0 and not consumed  # loaded without touching the data
    other = create_attack("uap", **SMALL["uap"])
    other.fit(cnniqa, lazy(), tmp_path, data_id="builtin:train:v2")
    assert other.train_calls == 1


def test_interrupted_write_retrains(cnniqa, data, tmp_path):
    attack = trained("uap", cnniqa, data, tmp_path)
    attack.artifact_path.with_suffix(".json").unlink()  # tensors written, sidecar not yet
    again = trained("uap", cnniqa, data, tmp_path)
    assert again.train_calls == 1


def test_transfer_fit_on_one_model_apply_to_another(cnniqa, data, tmp_path):
    """A trained attack applies what it learned on the source model to any target model."""
    target = make_cnniqa(seed=7, name="other-cnniqa")
    x, _ = data["test"]
    for name in TRAINED:
        attack = trained(name, cnniqa, data, tmp_path)
        on_source = attack.perturb(cnniqa, x)
        on_target = attack.perturb(target, x)
        assert torch.equal(on_source, on_target)
        assert attack.runtime()["source_model"] == cnniqa.name


def test_model_fingerprint_tracks_weights_and_identity(cnniqa):
    assert model_fingerprint(cnniqa) == model_fingerprint(make_cnniqa())
    assert model_fingerprint(cnniqa) != model_fingerprint(make_cnniqa(seed=1))
    assert model_fingerprint(make_fr("ssim")) != model_fingerprint(make_fr("ms_ssim"))


def test_training_data_hash_and_subset():
    x, ref = smooth_images(10, 0)
    a = collect_training_data([(x[:5], None), (x[5:], None)])
    b = collect_training_data([(x, None)])
    assert a.data_id == b.data_id and len(a) == 10
    assert collect_training_data([(x, ref)]).data_id != a.data_id
    assert collect_training_data([(x.flip(0), None)]).data_id != a.data_id
    sub = a.subset(4)
    assert len(sub) == 4 and torch.equal(sub.images[1], a.images[2])  # evenly spaced


def test_needs_fit_and_a_gradient(data, tmp_path):
    attack = create_attack("uap", **SMALL["uap"])
    x, _ = data["test"]
    with pytest.raises(ConfigError, match="fit"):
        attack.perturb(make_cnniqa(), x)
    piqe = IQAModel(
        pyiqa.create_metric("piqe", device="cpu"),
        ModelInfo(name="piqe", kind="NR", lower_better=True, score_range=None, source="pyiqa"),
    )
    with pytest.raises(ConfigError, match="not applicable"):
        attack.fit(piqe, batches(data["train"]), tmp_path)


def test_training_survives_undefined_gradients(data, tmp_path):
    """NLPD has NaN input gradients at x == ref; pristine training images must not turn the
    perturbation or the generator weights into NaN."""
    nlpd = make_fr("nlpd")
    _, ref = data["train"]
    pristine = {"train": (ref, ref)}  # every training image is its own reference
    for name in ("uap", "facpa"):
        attack = trained(name, nlpd, pristine, tmp_path, direction="down", epochs=1)
        assert all(
            torch.isfinite(t).all() for t in attack.artifact.values() if t.is_floating_point()
        )
        x, r = data["test"]
        assert torch.isfinite(attack.perturb(nlpd, x, r)).all()


def test_tiling_and_tiled_generator():
    pattern = torch.arange(2 * 3, dtype=torch.float32).view(1, 1, 2, 3)
    tiled = tile_to(pattern, 5, 4)
    assert tiled.shape == (1, 1, 5, 4)
    assert torch.equal(tiled[0, 0, :, 0], torch.tensor([0.0, 3, 0, 3, 0]))
    assert torch.equal(tiled[0, 0, 0], torch.tensor([0.0, 1, 2, 0]))

    torch.manual_seed(0)
    g = UNetGenerator(3, 3, depth=3, width=4).eval()
    x = torch.rand(2, 3, 80, 48)
    with torch.no_grad():
        out = apply_tiled(g, x, 16)
        assert out.shape == x.shape and out.abs().max() <= 1
        assert torch.allclose(out[..., 16:32, 16:32], g(x[..., 16:32, 16:32]), atol=1e-6)
        exact = apply_tiled(g, x[..., :64, :48], 16)
        assert torch.allclose(exact, out[..., :64, :48], atol=1e-6)


def test_facpa_is_image_dependent_and_works_on_other_sizes(cnniqa, data, tmp_path):
    facpa = trained("facpa", cnniqa, data, tmp_path)
    uap = trained("uap", cnniqa, data, tmp_path)
    x, _ = data["test"]
    d_facpa = facpa.perturb(cnniqa, x) - x
    d_uap = uap.perturb(cnniqa, x) - x
    inside = (x > 0.05) & (x < 0.95)  # away from clipping
    same_uap = (d_uap[0] - d_uap[1]).abs()[inside[0] & inside[1]].max()
    same_facpa = (d_facpa[0] - d_facpa[1]).abs()[inside[0] & inside[1]].max()
    assert same_uap < 1e-6 < same_facpa
    # refitting the same object (other data) replaces the generator it applies
    facpa.fit(cnniqa, batches(smooth_images(16, 5)), tmp_path)
    assert facpa.train_calls == 2 and not torch.equal(facpa.perturb(cnniqa, x) - x, d_facpa)
    odd = smooth_images(2, 9, size=64)[0][..., :50, :]  # 50x64: not a whole number of tiles
    out = facpa.perturb(cnniqa, odd)
    assert out.shape == odd.shape and (out - odd).abs().max() <= facpa.eps + 1e-6


def test_card_defaults_match_the_design_table():
    uap = create_attack("uap")
    assert uap.eps == pytest.approx(10 / 255) and uap.train_eps == pytest.approx(10 / 255)
    assert (uap.size, uap.lr, uap.epochs) == (256, 1e-3, 5)
    cum = create_attack("cumulative-uap")
    assert cum.size == 256 and cum.alpha == pytest.approx(1 / 255)
    gen = create_attack("generative-uap")
    assert gen.size == 256 and gen.info.family == "generative"
    facpa = create_attack("facpa")
    assert facpa.eps == pytest.approx(10 / 255)
    assert (facpa.lr, facpa.batch_size, facpa.crop) == (1e-3, 2, 192)
    for name in TRAINED:
        attack = create_attack(name)
        assert attack.info.trainable and not attack.info.gradient_free
        json.dumps(attack.config())
    with pytest.raises(ConfigError, match="multiple"):
        create_attack("facpa", crop=100)
    with pytest.raises(ConfigError, match="unknown"):
        create_attack("uap", steps=3)
    with pytest.raises(ConfigError):
        create_attack("uap", train_eps="2")


def test_runner_decodes_only_the_images_an_attack_trains_on(tmp_path, make_kadid, monkeypatch):
    """`train_images` of a split: the runner loads just those, and the artifact is the one
    that training on the same subset picked from the whole split's stream gives."""
    from safetensors.torch import load_file

    from benchmark.cli import main
    from benchmark.datasets.layouts import CardDataset
    from benchmark.datasets.registry import create_dataset
    from benchmark.models.registry import create_model
    from benchmark.store.hdf5 import ResultStore

    root = make_kadid(tmp_path / "kadid", n_refs=6)
    monkeypatch.setenv("BENCHMARK_CACHE", str(tmp_path / "cache"))
    loaded: list[tuple[str, str]] = []
    load = CardDataset.load

    def counting(self, image_id):
        loaded.append((self.info.split, image_id))
        return load(self, image_id)

    monkeypatch.setattr(CardDataset, "load", counting)
    params = {"epochs": 1, "size": 32, "train_images": 3, "batch_size": 2}
    args = ["-q", "run", "--models", "gmsd", "--attacks", "uap", "--dataset", "kadid10k"]
    args += ["--data-root", str(root), "--out", str(tmp_path / "r.h5")]
    args += ["--html", str(tmp_path / "lb.html")]
    for k, v in params.items():
        args += ["--param", f"{k}={v}"]
    assert main(args) == 0
    train = create_dataset("kadid10k", "train", str(root))
    assert len(train) > 3
    assert len([i for split, i in loaded if split == "train"]) == 3  # not the whole split

    (cell,) = ResultStore(tmp_path / "r.h5").read_cells()
    from_runner = load_file(cell.meta["attack_runtime"]["artifact"])["delta"]
    direct = create_attack("uap", **params)
    stream = [(b.images, b.refs) for b in train.batches(16)]
    direct.fit(create_model("gmsd"), stream, tmp_path / "direct")
    assert torch.equal(direct.artifact["delta"], from_runner)


@pytest.mark.parametrize("name", [c.name for c in list_attacks() if c.source == "card"])
def test_attacks_never_write_into_their_input(cnniqa, data, tmp_path, name):
    """The runner shares one decoded batch between a model's cells: an attack that wrote
    into its input would change the images every later cell attacks and scores."""
    x, _ = data["test"]
    before = x.clone()
    if name in TRAINED:
        attack = trained(name, cnniqa, data, tmp_path, epochs=1)
    else:
        short = {"steps": 2} if "steps" in create_attack(name).params else {}
        if name == "square":
            short = {"queries": 5}
        attack = create_attack(name, **short)
    x_adv = attack.perturb(cnniqa, x)
    assert torch.equal(x, before) and not torch.equal(x_adv, x)
