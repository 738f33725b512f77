"""The RobustBlock pipeline on zoo models: convert -> train -> prune -> fine-tune -> card."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmark.cards import REPO_ROOT, read_toml
from benchmark.datasets.builtin import BuiltinDataset
from benchmark.errors import CheckpointError
from benchmark.models.archs import PatchAverage, build_arch
from benchmark.models.robust_net import convert_network, resize_to_state
from benchmark.models.zoo import load_zoo_model, read_model_card
from benchmark.report.evaluation import evaluate_model
from benchmark.robust import OrthConv2d, OrthLinear, empirical_lipschitz, lipschitz_upper_bound
from benchmark.train.loop import TrainConfig, run_training
from benchmark.train.robustify import RobustifyConfig, run_robustify

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL_CNNIQA = {"patch": 32, "n_kers": 8, "n1_nodes": 32, "n2_nodes": 32}
# the zoo's RobustBlock models and the committed ablations (results/ablation, README)
SHIPPED_ROBUST = sorted(
    p
    for folder in ("models", "results/ablation")
    for p in (REPO_ROOT / folder).glob("robust-*/card.toml")
)


@pytest.fixture(scope="module")
def robust_run(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """A tiny base zoo model, then the whole pipeline on it (one epoch per training step)."""
    out = tmp_path_factory.mktemp("zoo")

    def open_split(split: str) -> BuiltinDataset:
        return BuiltinDataset(tiny_root, split)

    base_cfg = TrainConfig(
        arch="cnniqa",
        arch_params=SMALL_CNNIQA,
        out=str(out / "base"),
        crop=32,
        patches=2,
        batch_size=16,
        epochs=1,
        progress=False,
    )
    run_training(base_cfg, open_split=open_split)
    cfg = RobustifyConfig(
        base="base",
        out=str(out / "robust-base"),
        epochs=1,
        finetune_epochs=1,
        prune_fraction=0.5,
        progress=False,
    )
    card = run_robustify(cfg, open_split=open_split, base_card=out / "base" / "card.toml")
    return card, out / "robust-base" / "card.toml", open_split


def test_pipeline_records_every_step_and_pruning_shrinks_the_model(robust_run) -> None:
    card, path, _ = robust_run
    steps = [s["step"] for s in card["steps"]]
    assert steps == ["base", "convert", "train", "prune", "finetune"]
    params = {s["step"]: s["parameters"] for s in card["steps"]}
    assert params["prune"] < params["train"]
    assert card["training"]["parameters"] == params["finetune"] < params["base"]
    assert "python -m benchmark robustify --base base" in card["training"]["command"]
    assert "--prune-fraction 0.5" in card["training"]["command"]
    on_disk = read_toml(path)
    assert on_disk["source"] == "robustblock" and on_disk["base"] == "base"
    assert on_disk["robust"]["fully_converted"] is True


def test_shipped_file_reloads_to_the_card_numbers_with_input_gradients(robust_run) -> None:
    card, path, open_split = robust_run
    model = load_zoo_model(path)
    assert model.info.source == "robustblock" and model.info.base == "base"
    report = evaluate_model(model.net, open_split("test"))
    assert report["srocc"] == card["evaluation"]["srocc"]
    assert report["plcc"] == card["evaluation"]["plcc"]
    x = torch.rand(2, 3, 48, 48, requires_grad=True)
    model.quality(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_card_bound_is_certified_and_never_below_the_empirical_estimate(robust_run) -> None:
    card, path, _ = robust_run
    cert = card["certified"]
    assert "lipschitz" in cert, cert
    assert cert["lipschitz"] >= cert["empirical_lower"] > 0
    net = load_zoo_model(path).net
    shape = tuple(cert["input_shape"])
    assert lipschitz_upper_bound(net, shape) == pytest.approx(cert["lipschitz"], rel=1e-5)
    assert empirical_lipschitz(net, shape, n=6, seed=3) <= cert["lipschitz"] * (1 + 1e-5)


# What every zoo card carries, whichever command wrote it (`benchmark.train.card`).
COMMON_FIELDS = (
    "name", "source", "arch", "kind", "lower_better", "score_range", "checkpoint",
    "description", "arch_params", "training", "evaluation",
)  # fmt: skip
COMMON_TRAINING = (
    "command", "dataset", "train_split", "val_split", "test_split", "seed", "crop",
    "patches_per_image", "batch_size", "parameters", "checkpoint_dtype", "minutes",
    "cpu_minutes", "device", "threads", "versions",
)  # fmt: skip


def test_train_defense_and_robustify_write_one_card_schema(
    robust_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The three training paths write through one card writer: each card passes the zoo
    loader's checks and has the common fields, with the same types, in the same order."""
    from benchmark.cards import MODEL_DIRS_ENV
    from benchmark.models.registry import model_registry
    from benchmark.train.finetune import DefenseConfig, run_defense_training

    _, robust_path, open_split = robust_run
    zoo = robust_path.parent.parent  # holds `base` (train) and `robust-base` (robustify)
    monkeypatch.setenv(MODEL_DIRS_ENV, str(zoo))
    model_registry.cache_clear()
    try:
        cfg = TrainConfig(
            arch="cnniqa",
            arch_params=SMALL_CNNIQA,
            out=str(tmp_path / "nt-base"),
            crop=32,
            patches=2,
            batch_size=16,
            epochs=1,
            progress=False,
        )
        run_defense_training(DefenseConfig("nt", "base"), cfg, open_split, max_steps=2)
    finally:
        model_registry.cache_clear()
    paths = {
        "zoo": zoo / "base" / "card.toml",
        "defense": tmp_path / "nt-base" / "card.toml",
        "robustblock": robust_path,
    }
    shapes = {}
    for source, path in paths.items():
        card = read_model_card(path)
        assert card["source"] == source
        assert set(COMMON_FIELDS) <= set(card), sorted(set(COMMON_FIELDS) - set(card))
        assert set(COMMON_TRAINING) <= set(card["training"]), source
        top = [k for k in card if k in COMMON_FIELDS]
        training = [k for k in card["training"] if k in COMMON_TRAINING]
        types = {k: type(card[k]) for k in COMMON_FIELDS}
        types |= {f"training.{k}": type(card["training"][k]) for k in COMMON_TRAINING}
        shapes[source] = (top, training, types)
    assert shapes["zoo"] == shapes["defense"] == shapes["robustblock"]


def test_card_writer_refuses_a_card_the_zoo_loader_would_reject(tmp_path: Path) -> None:
    from benchmark.errors import ConfigError
    from benchmark.train.card import write_card

    card = {"name": "x", "source": "zoo", "arch": "cnniqa", "kind": "NR"}
    card |= {"lower_better": False, "checkpoint": "model.safetensors", "robustness": {}}
    with pytest.raises(ConfigError, match="unknown key.*robustness"):
        write_card(tmp_path, card)
    assert list(tmp_path.iterdir()) == []  # checked before anything is written


def test_convert_keeps_the_patch_wrapper_and_converts_its_core() -> None:
    torch.manual_seed(0)
    net = build_arch("cnniqa", **SMALL_CNNIQA)
    robust, report = convert_network(net, init_from_base=False)
    assert isinstance(robust, PatchAverage) and report.fully_converted
    kinds = {type(m) for m in robust.modules()}
    assert OrthConv2d in kinds and OrthLinear in kinds
    assert not any(isinstance(m, torch.nn.Conv2d | torch.nn.Linear) for m in robust.modules())
    assert isinstance(net.net.conv1, torch.nn.Conv2d)  # the base is untouched
    x = torch.rand(3, 3, 64, 80)
    assert robust(x).shape == (3,)


def test_checkpoint_wider_than_the_architecture_is_refused() -> None:
    torch.manual_seed(0)
    robust, _ = convert_network(build_arch("cnniqa", **SMALL_CNNIQA), init_from_base=False)
    state = {k: v.clone() for k, v in robust.state_dict().items()}
    key = next(k for k in state if k.endswith("fc1.weight"))
    state[key] = torch.zeros(state[key].shape[0] + 4, state[key].shape[1])
    with pytest.raises(CheckpointError, match="wider than"):
        resize_to_state(robust, state, Path("x.safetensors"))


def test_narrower_checkpoint_resizes_the_layers_it_names() -> None:
    torch.manual_seed(0)
    robust, _ = convert_network(build_arch("cnniqa", **SMALL_CNNIQA), init_from_base=False)
    state = {k: v.clone() for k, v in robust.state_dict().items()}
    w1 = next(k for k in state if k.endswith("fc1.weight"))
    w2 = next(k for k in state if k.endswith("fc2.weight"))
    state[w1], state[w1[:-6] + "bias"] = state[w1][:20], state[w1[:-6] + "bias"][:20]
    state[w2] = state[w2][:, :20]
    resize_to_state(robust, state, Path("x.safetensors"))
    robust.load_state_dict(state, strict=True)
    assert robust(torch.rand(1, 3, 32, 32)).shape == (1,)


def test_cli_rejects_bad_options_with_exit_code_2(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmark.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["robustify", "--base", "cnniqa-builtin", "--tau", "0.1", "--prune-fraction", "0.2", "-o", "x"])  # fmt: skip
    assert exc.value.code == 2
    assert main(["robustify", "--base", "cnniqa-builtn", "-o", "x"]) == 2
    assert "cnniqa-builtin" in capsys.readouterr().err  # did-you-mean
    assert main(["robustify", "--base", "psnr", "-o", "x"]) == 2
    assert "not a zoo model" in capsys.readouterr().err
    assert (
        main(["robustify", "--base", "cnniqa-builtin", "--prune-fraction", "1.5", "-o", "x"]) == 2
    )


@pytest.mark.parametrize("card_path", SHIPPED_ROBUST, ids=lambda p: p.parent.name)
def test_shipped_robust_model_is_smaller_differentiable_and_its_bound_holds(
    card_path: Path,
) -> None:
    card = read_model_card(card_path)
    base = load_zoo_model(card_path.parent.parent / card["base"] / "card.toml")
    model = load_zoo_model(card_path)
    steps = {step["step"]: step for step in card["steps"]}
    assert model.info.params == steps["finetune"]["parameters"]
    # Pruned for real: smaller than the unpruned conversion. Not necessarily smaller than the
    # base: a strided OrthConv2d sees s*s times the input channels (space-to-depth), so
    # robust-resnet-small-builtin has more parameters than resnet-small-builtin.
    assert model.info.params < steps["convert"]["parameters"]
    assert steps["base"]["parameters"] == base.info.params
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    model.quality(x).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    cert = card["certified"]
    if "lipschitz" not in cert:
        assert cert["unavailable"]  # says why
        return
    assert cert["lipschitz"] >= cert["empirical_lower"]
    shape = (1, 3, 64, 64)
    bound = lipschitz_upper_bound(model.net, shape)
    assert bound is not None and empirical_lipschitz(model.net, shape, n=4) <= bound * (1 + 1e-5)


class _Patchify(torch.nn.Module):
    """Cuts each image into 16x16 patches on the batch axis, like WaDIQaM."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.act = torch.nn.ReLU()
        self.head = torch.nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        p = x.unfold(2, 16, 16).unfold(3, 16, 16).permute(0, 2, 3, 1, 4, 5).reshape(-1, 3, 16, 16)
        h = self.act(self.conv(p)).mean(dim=(2, 3))
        return self.head(h.reshape(n, -1, h.shape[1])).mean(dim=1).reshape(n)


def test_pruning_traces_models_that_cut_images_into_patches_on_the_batch_axis() -> None:
    from benchmark.robust import prune

    torch.manual_seed(0)
    robust, _ = convert_network(_Patchify(), init_from_base=False)
    pruned, report = prune(robust, fraction=0.5, example_input=(2, 3, 32, 48))
    assert report.removed and report.params_after < report.params_before, report
    assert pruned(torch.rand(3, 3, 32, 32)).shape == (3,)
