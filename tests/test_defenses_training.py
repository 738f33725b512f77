"""AT and NT fine-tuning defenses: losses fall, attacked patches respect the budget, the NT
penalty is the input-gradient norm, cards reload through the registry, bad options exit 2,
and AT lowers the I-FGSM gain of a small base model."""

from __future__ import annotations

import argparse
import json
import math
import shlex
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from benchmark import cards
from benchmark.attacks.registry import create_attack
from benchmark.cli import main
from benchmark.cli.train import add_parser as add_train_parser
from benchmark.cli.train import configs_from_args
from benchmark.datasets.builtin import BuiltinDataset
from benchmark.errors import NonFiniteScore
from benchmark.models.archs import build_arch
from benchmark.models.base import IQAModel, ModelInfo
from benchmark.models.registry import create_model, list_models, model_registry
from benchmark.report.evaluation import evaluate_model
from benchmark.train.finetune import (
    AdversarialObjective,
    DefenseConfig,
    GradientNormObjective,
    input_gradient_sq_norm,
    input_gradient_sq_norm_fd,
    make_objective,
    run_defense_training,
)
from benchmark.train.loop import (
    InMemory,
    TrainConfig,
    predict,
    save_checkpoint,
    train_model,
)

SMALL_CNNIQA = {"patch": 32, "n_kers": 8, "n1_nodes": 32, "n2_nodes": 32}
EPS = 4 / 255
TOL = 1e-6
BASE = "base-tiny"
pytestmark = pytest.mark.usefixtures("one_thread")


def _noise_data(n: int, seed: int, size: int = 48) -> InMemory:
    """Smooth images plus noise whose strength sets the MOS: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    base = nn.functional.interpolate(
        torch.rand(n, 3, 8, 8, generator=g), size=size, mode="bilinear"
    )
    level = torch.rand(n, generator=g)
    noisy = base + 0.4 * level.view(-1, 1, 1, 1) * torch.randn(n, 3, size, size, generator=g)
    images = [(im.clamp(0, 1) * 255).round().to(torch.uint8) for im in noisy]
    return InMemory(images, (1 - level).float())


def _cfg(out: Path, **kw: object) -> TrainConfig:
    base: dict[str, object] = dict(
        arch="cnniqa",
        arch_params=SMALL_CNNIQA,
        out=str(out),
        crop=32,
        patches=4,
        batch_size=16,
        epochs=1,
        progress=False,
    )
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def _fresh_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_arch("cnniqa", **SMALL_CNNIQA)


@pytest.fixture(scope="module")
def base_state(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    """A small CNNIQA trained briefly on the noise data: the base every defense starts from."""
    cfg = _cfg(tmp_path_factory.mktemp("base"), epochs=3, lr=2e-3)
    res = train_model(cfg, _noise_data(64, 0), _noise_data(16, 1), net=_fresh_net())
    return {k: v.clone() for k, v in res.net.state_dict().items()}


@pytest.fixture()
def zoo_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, base_state: dict[str, torch.Tensor]
) -> Iterator[Path]:
    """A model-card folder holding the zoo card `base-tiny`, standing in for models/."""
    folder = tmp_path / "models"
    net = _fresh_net()
    net.load_state_dict(base_state)
    save_checkpoint(net, folder / BASE / "model.safetensors")
    cards.write_toml(
        folder / BASE / "card.toml",
        {
            "name": BASE,
            "source": "zoo",
            "arch": "cnniqa",
            "kind": "NR",
            "lower_better": False,
            "score_range": [0.0, 1.0],
            "checkpoint": "model.safetensors",
            "arch_params": SMALL_CNNIQA,
            "training": {"crop": 32, "patches_per_image": 2, "batch_size": 8},
            "evaluation": {"srocc": 0.5},
        },
    )
    monkeypatch.setitem(cards.CARD_DIRS, "model", folder)
    model_registry.cache_clear()
    yield folder
    model_registry.cache_clear()


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_train_parser(p.add_subparsers(dest="command"))
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------
# objectives


@pytest.mark.parametrize("method", ["at", "nt"])
def test_fine_tuning_loss_falls(tmp_path: Path, method: str) -> None:
    objective = make_objective(DefenseConfig(method, BASE, nt_weight=0.1), False, seed=0)
    cfg = _cfg(tmp_path, epochs=3, lr=2e-3)
    res = train_model(
        cfg, _noise_data(64, 0), _noise_data(16, 1), net=_fresh_net(), objective=objective
    )
    losses = np.array(res.losses)
    assert len(losses) == 3 * 16 and np.isfinite(losses).all()
    assert losses[-8:].mean() < 0.7 * losses[:8].mean()
    if isinstance(objective, AdversarialObjective):
        assert objective.attacked == 3 * 16 * 8  # half of every 16-patch batch
        assert 0 < objective.max_linf <= EPS + TOL
    else:
        assert isinstance(objective, GradientNormObjective)
        assert len(objective.penalties) == len(losses) and min(objective.penalties) > 0


@pytest.mark.parametrize("attack", ["pgd", "fgsm"])
@pytest.mark.parametrize("target", ["loss", "up"])
def test_attacked_patches_stay_in_budget_and_do_their_job(
    base_state: dict[str, torch.Tensor], attack: str, target: str
) -> None:
    net = _fresh_net()
    net.load_state_dict(base_state)
    net.train()
    data = _noise_data(32, 5, size=32)
    x = torch.stack(data.images).float() / 255
    y = data.mos
    cfg = DefenseConfig("at", BASE, at_attack=attack, at_eps=EPS, at_objective=target)
    cfg.validate()
    obj = AdversarialObjective(cfg, seed=0)
    adv = obj.perturb(net, x, y)
    assert adv.shape == x.shape and adv.min() >= 0 and adv.max() <= 1
    assert (adv - x).abs().max() <= EPS + TOL
    assert (adv - x).abs().max() > EPS / 2  # it moved
    # The network is handed back as it came: training mode, trainable weights.
    assert net.training and all(p.requires_grad for p in net.parameters())
    with torch.no_grad():
        net.eval()
        before, after = predict(net, x), predict(net, adv)
    if target == "loss":
        assert (after - y).abs().mean() > (before - y).abs().mean()
    else:
        assert after.mean() > before.mean()


class _Linear(nn.Module):
    """score = <w, dropout(x)>: its input gradient is known in closed form."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(0)))
        self.drop = nn.Dropout(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.drop(x) * self.w).flatten(1).sum(dim=1)


def test_nt_penalty_is_the_squared_input_gradient_norm() -> None:
    class Ignores(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.tensor(0.7))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.w.expand(x.shape[0])

    class Zero(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.zeros(x.shape[0])

    x = torch.rand(4, 3, 8, 8)
    for net in (Ignores(), Zero()):  # a constant with weights, and one without
        for fn in (input_gradient_sq_norm, input_gradient_sq_norm_fd):
            _, penalty = fn(net, x)
            assert torch.equal(penalty, torch.zeros(4))

    lin = _Linear()
    scores, penalty = input_gradient_sq_norm(lin, x)
    w2 = lin.w.detach().pow(2).sum()
    assert torch.allclose(penalty, w2.expand(4))
    # Differentiable w.r.t. the weights (double backprop): d/dw sum_i ||w||^2 = 2 * 4 * w.
    (gw,) = torch.autograd.grad(penalty.sum(), lin.w)
    assert torch.allclose(gw, 8 * lin.w.detach())

    y = torch.rand(4)
    loss = GradientNormObjective(weight=0.5)(lin, x, y)
    assert torch.allclose(loss, nn.functional.l1_loss(scores.detach(), y) + 0.5 * w2)

    _, cnn_penalty = input_gradient_sq_norm(_fresh_net().eval(), torch.rand(2, 3, 32, 32))
    assert (cnn_penalty > 0).all()


def test_nt_finite_difference_penalty_matches_double_backprop() -> None:
    x = torch.rand(4, 3, 8, 8)
    lin = _Linear().eval()
    _, penalty = input_gradient_sq_norm_fd(lin, x)
    assert torch.allclose(penalty, lin.w.detach().pow(2).sum().expand(4), rtol=1e-3)
    (gw,) = torch.autograd.grad(penalty.sum(), lin.w)  # the same weight gradient, 8 w
    assert torch.allclose(gw, 8 * lin.w.detach(), rtol=1e-2, atol=1e-3)
    # Dropout in training mode: both forwards share one mask, so the difference measures
    # the input step (a second mask would add O(1) / 1e-3 to the quotient).
    lin = _Linear(p=0.5).train()
    _, penalty = input_gradient_sq_norm_fd(lin, x)
    assert (penalty <= lin.w.detach().pow(2).sum() * 4 * 1.01).all()
    net = _fresh_net().eval()
    xs = torch.rand(8, 3, 32, 32)
    _, exact = input_gradient_sq_norm(net, xs, create_graph=False)
    _, approx = input_gradient_sq_norm_fd(net, xs)
    assert ((approx - exact).abs() / exact).median() < 0.05


def test_nt_runs_batchnorm_in_eval_mode_and_hands_it_back() -> None:
    torch.manual_seed(0)
    net = build_arch("resnet_small", widths=[8, 16]).train()
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    stats = [m.running_mean.clone() for m in bns]
    x = torch.rand(6, 3, 32, 32)
    objective = GradientNormObjective(0.1, grad="fd")
    objective(net, x, torch.rand(6))
    assert net.training and all(m.training for m in bns)
    assert all(torch.equal(m.running_mean, s) for m, s in zip(bns, stats, strict=True))
    _, deployed = input_gradient_sq_norm(net.eval(), x, create_graph=False)
    assert objective.penalties[0] == pytest.approx(float(deployed.mean()), rel=0.05)


class _StdPool(nn.Module):
    """Std pooling of a dead ReLU channel: fine forward and backward, NaN double backward."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 2, 3)
        with torch.no_grad():
            self.conv.bias[1] = -100.0
        self.head = nn.Linear(2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.relu(self.conv(x)).flatten(2).std(dim=2)
        return self.head(h).reshape(-1)


def test_nt_double_backprop_failure_names_the_fix_and_fd_trains(tmp_path: Path) -> None:
    data, val = _noise_data(16, 0, size=32), _noise_data(8, 1, size=32)
    cfg = _cfg(tmp_path, epochs=1, patches=1, batch_size=8, lr=1e-3)
    with pytest.raises(NonFiniteScore, match="--nt-grad fd"):
        train_model(cfg, data, val, net=_StdPool(), objective=GradientNormObjective(0.1))
    objective = GradientNormObjective(0.1, grad="fd")
    res = train_model(cfg, data, val, net=_StdPool(), objective=objective)
    assert np.isfinite(res.losses).all() and len(objective.penalties) == 2
    assert all(torch.isfinite(p).all() for p in res.net.parameters())


# ---------------------------------------------------------------------------------------
# the command: card, checkpoint, registry, reproducibility, errors


@pytest.mark.parametrize("method", ["at", "nt"])
def test_defense_card_reloads_through_the_registry_and_its_command_reproduces(
    tiny_root: Path, zoo_dir: Path, method: str
) -> None:
    out = zoo_dir / f"{method}-{BASE}"
    argv = ["train", "--defense", method, "--base", BASE, "--epochs", "1", "-o", str(out)]
    dcfg, cfg = configs_from_args(_parse([*argv, "--seed", "3", "--threads", "1"]))
    assert cfg.arch == "cnniqa" and cfg.arch_params == SMALL_CNNIQA
    assert (cfg.crop, cfg.patches, cfg.batch_size, cfg.lr) == (32, 2, 8, 1e-4)  # base's recipe
    cfg.progress = False
    card = run_defense_training(
        dcfg, cfg, open_split=lambda split: BuiltinDataset(tiny_root, split), max_steps=2
    )

    on_disk = cards.read_toml(out / "card.toml")
    assert on_disk["name"] == f"{method}-{BASE}" and on_disk["source"] == "defense"
    assert on_disk["base"] == BASE and on_disk["arch"] == "cnniqa"
    assert on_disk["arch_params"] == SMALL_CNNIQA and on_disk["kind"] == "NR"
    assert on_disk["lower_better"] is False and on_disk["score_range"] == [0.0, 1.0]
    d = on_disk["defense"]
    assert d["method"] == method and d["base_test_srocc"] == 0.5
    if method == "at":
        assert d["attack"] == "pgd" and d["eps_label"] == "4/255" and d["steps"] == 3
        assert d["random_start"] is True and d["mix"] == 0.5 and d["target"] == "clean MOS"
        assert 0 < d["max_linf_used"] <= d["eps"] + TOL
    else:
        assert d["weight"] == 1.0 and d["penalty_first_epoch"] > 0
    tr = on_disk["training"]
    assert tr["seed"] == 3 and tr["epochs"] == 1 and tr["init"] == f"zoo:{BASE}"
    assert tr["minutes"] >= 0 and tr["cpu_minutes"] >= 0 and len(tr["base_checkpoint_sha256"]) == 64
    assert tr["parameters"] == sum(p.numel() for p in _fresh_net().parameters())
    ev = on_disk["evaluation"]
    assert ev["split"] == "test" and ev["n"] == 5
    # the tiny test split is cut from one photograph: no interval over photographs exists
    assert ev["n_photos"] == 1 and ev["ci_unit"] == "photograph" and "plcc_ci" in ev
    assert all(math.isnan(x) for x in ev["srocc_ci"]) and math.isfinite(ev["srocc"])
    assert json.dumps(ev, sort_keys=True) == json.dumps(card["evaluation"], sort_keys=True)

    # The recorded command parses back to the same run.
    command = shlex.split(tr["command"])
    assert command[:4] == ["python", "-m", "benchmark", "train"]
    again_d, again_t = configs_from_args(_parse(command[3:]))
    cfg.progress = True
    assert again_t == cfg
    assert again_d.cli_args() == dcfg.cli_args() and again_d.table() == dcfg.table()

    # Through the registry, with the base listed beside it.
    model = create_model(f"{method}-{BASE}")
    assert model.info.source == "defense" and model.info.base == BASE
    test = BuiltinDataset(tiny_root, "test")
    report = evaluate_model(model, test)
    assert report["srocc"] == ev["srocc"] and report["plcc"] == ev["plcc"]
    x = next(test.batches(5)).images
    assert torch.equal(model.score(x), create_model(f"{method}-{BASE}").score(x))
    assert not torch.equal(model.score(x), create_model(BASE).score(x))  # it was trained
    listed = {s.name: s for s in list_models(check=False)}
    assert listed[f"{method}-{BASE}"].source == "defense"
    assert listed[f"{method}-{BASE}"].base == BASE and listed[f"{method}-{BASE}"].usable


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--defense", "at", "--base", BASE, "--at-eps=-4/255"], "--at-eps must lie in (0, 1]"),
        (["--defense", "at", "--base", BASE, "--at-eps", "0"], "--at-eps must lie in (0, 1]"),
        (["--defense", "at", "--base", "base-tiyn"], "unknown model 'base-tiyn'; did you mean"),
        (["--defense", "nt", "--base", "cnniqa"], "--base must be one of the project's zoo"),
        (["--defense", "at", "--base", "d-tiny"], "is a defense model"),
        (["--defense", "at"], "--defense needs --base"),
        (["--defense", "at", "--base", BASE, "--arch", "cnniqa"], "--arch comes from the base"),
        (["--defense", "at", "--base", BASE, "--at-mix", "0"], "--at-mix must lie in (0, 1]"),
        (["--defense", "at", "--base", BASE, "--at-attack", "cw"], "--at-attack must be one of"),
        (["--defense", "at", "--base", BASE, "--at-steps", "0"], "--at-steps must be at least 1"),
        (["--defense", "at", "--base", BASE, "--at-alpha", "eps/0"], "not a step size"),
        (
            ["--defense", "at", "--base", BASE, "--at-attack", "fgsm", "--at-steps", "3"],
            "fgsm is one step",
        ),
        (["--defense", "nt", "--base", BASE, "--nt-weight", "-1"], "--nt-weight must be a finite"),
        (["--defense", "nt", "--base", BASE, "--nt-grad", "exact"], "--nt-grad must be one of"),
        ([], "--arch is required (or --defense"),
    ],
)
def test_bad_options_exit_2_with_a_clear_message(
    zoo_dir: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    base_card = cards.read_toml(zoo_dir / BASE / "card.toml")
    cards.write_toml(
        zoo_dir / "d-tiny" / "card.toml",
        {**base_card, "name": "d-tiny", "source": "defense", "base": BASE},
    )
    out = zoo_dir.parent / "out"
    assert main(["train", *extra, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert not out.exists()  # nothing trained, nothing written


# ---------------------------------------------------------------------------------------
# the point of it


def _ifgsm_gain(net: nn.Module, x: torch.Tensor, eps: str) -> float:
    info = ModelInfo("m", "NR", False, (0.0, 1.0), "zoo")
    model = IQAModel(net, info).eval()
    adv = create_attack("ifgsm", eps=eps, alpha="eps/8").perturb(model, x)
    with torch.no_grad():
        return float((model.quality(adv) - model.quality(x)).mean())


def test_at_fine_tuning_lowers_the_ifgsm_gain_of_a_small_base(
    tmp_path: Path, base_state: dict[str, torch.Tensor]
) -> None:
    """Two short epochs on 64 noise images (about 2 s). The tiny base is not very sensitive
    at 4/255 (gain ~0.03, too close to fine-tuning noise), so this uses 16/255, where AT
    brings the gain 0.096 -> 0.064 and the same steps of plain L1 fine-tuning to 0.081."""
    train, val = _noise_data(64, 0), _noise_data(16, 1)
    held_out = torch.stack(_noise_data(8, 7).images).float() / 255

    def fine_tune(objective: AdversarialObjective | None) -> nn.Module:
        net = _fresh_net()
        net.load_state_dict(base_state)
        kw = {} if objective is None else {"objective": objective}
        cfg = _cfg(tmp_path, epochs=2, lr=3e-3, seed=1)
        return train_model(cfg, train, val, net=net, **kw).net  # type: ignore[arg-type]

    base = _fresh_net()
    base.load_state_dict(base_state)
    dcfg = DefenseConfig("at", BASE, at_eps=16 / 255, at_mix=1.0)
    dcfg.validate()
    at = fine_tune(AdversarialObjective(dcfg, seed=1))
    plain = fine_tune(None)  # the same steps without attacks: the control
    gains = {
        name: _ifgsm_gain(net, held_out, "16/255")
        for name, net in (("base", base), ("at", at), ("plain", plain))
    }
    assert gains["base"] > 0 and math.isfinite(gains["at"])
    assert gains["at"] < 0.75 * gains["base"], gains
    assert gains["at"] < 0.9 * gains["plain"], gains


# ---------------------------------------------------------------------------------------
# shipped defense cards

SHIPPED = sorted(
    p
    for p in (cards.REPO_ROOT / "models").glob("*/card.toml")
    if cards.read_toml(p)["source"] == "defense"
)


def test_the_cnniqa_defenses_are_shipped() -> None:
    names = {p.parent.name for p in SHIPPED}
    assert {"at-cnniqa-builtin", "nt-cnniqa-builtin"} <= names


@pytest.mark.parametrize("card_path", SHIPPED, ids=[p.parent.name for p in SHIPPED])
def test_shipped_defense_card_loads_with_gradients_and_matches_its_base(card_path: Path) -> None:
    from benchmark.models.zoo import load_zoo_model

    card = cards.read_toml(card_path)
    base = cards.read_toml(card_path.parent.parent / card["base"] / "card.toml")
    assert card["name"] == card_path.parent.name == f"{card['defense']['method']}-{card['base']}"
    for key in ("arch", "arch_params", "kind", "lower_better", "score_range"):
        assert card[key] == base[key], key
    tr = card["training"]
    assert tr["command"].startswith(
        f"python -m benchmark train --defense {card['defense']['method']} --base {card['base']}"
    )
    assert tr["command"].endswith(f"-o models/{card['name']}")
    assert tr["cpu_minutes"] <= 20 and tr["init"] == f"zoo:{card['base']}"
    ev = card["evaluation"]
    assert ev["dataset"] == "builtin" and ev["split"] == "test" and ev["n"] == 628
    model = load_zoo_model(card_path)
    assert model.info.source == "defense" and model.info.base == card["base"]
    assert model.info.params == tr["parameters"]
    x = torch.rand(2, 3, 192, 192, generator=torch.Generator().manual_seed(0), requires_grad=True)
    s = model.score(x)
    assert s.shape == (2,) and torch.isfinite(s).all()
    s.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
