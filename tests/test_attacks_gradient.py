"""FGSM, I-FGSM, MI-FGSM and PGD on real models with real gradients: a randomly initialised
pyiqa CNNIQA (NR), pyiqa SSIM (FR, higher better) and GMSD (FR, lower better)."""

from __future__ import annotations

import json

import pyiqa
import pytest
import torch
import torch.nn.functional as F
from pyiqa.archs.cnniqa_arch import CNNIQA

from benchmark.attacks.base import Attack, AttackInfo
from benchmark.attacks.gradient import FGSM, PGD
from benchmark.attacks.registry import create_attack
from benchmark.attacks.utils import resolve_step
from benchmark.errors import ConfigError, DataError
from benchmark.models.base import IQAModel, ModelInfo

ATTACKS = ["fgsm", "ifgsm", "mifgsm", "pgd"]
MODELS = ["cnniqa", "ssim", "gmsd"]
DIRECTIONS = ["up", "down"]


def make_cnniqa() -> IQAModel:
    torch.manual_seed(0)
    net = CNNIQA(pretrained=None)  # pretrained=False would look up a weight URL
    info = ModelInfo(
        name="cnniqa-random", kind="NR", lower_better=False, score_range=None, source="pyiqa"
    )
    return IQAModel(net, info)


def make_fr(name: str) -> IQAModel:
    metric = pyiqa.create_metric(name, as_loss=True, loss_reduction="none", device="cpu")
    info = ModelInfo(
        name=name,
        kind="FR",
        lower_better=metric.lower_better,
        score_range=(0.0, 1.0),
        source="pyiqa",
    )
    return IQAModel(metric, info)


@pytest.fixture(scope="module")
def models() -> dict[str, IQAModel]:
    out = {"cnniqa": make_cnniqa().eval(), "ssim": make_fr("ssim"), "gmsd": make_fr("gmsd")}
    if out["ssim"].info.lower_better or not out["gmsd"].info.lower_better:
        raise RuntimeError("expected SSIM higher-better and GMSD lower-better")
    return out


@pytest.fixture(scope="module")
def images() -> tuple[torch.Tensor, torch.Tensor]:
    """(distorted, reference): smooth random references plus noise, 4 of 64x64. The last
    image is contrast-stretched so that many pixels sit at 0 or 1 and clipping matters."""
    g = torch.Generator().manual_seed(0)
    ref = F.avg_pool2d(torch.rand(4, 3, 64, 64, generator=g), 5, 1, 2)
    ref[3] = ((ref[3] - 0.5) * 4 + 0.5).clamp(0, 1)
    x = (ref + 0.05 * torch.randn(ref.shape, generator=g)).clamp(0, 1)
    return x, ref


def case(models, images, model: str, n: int = 4):
    x, ref = images
    return models[model], x[:n], (ref[:n] if models[model].info.kind == "FR" else None)


def objective_change(attack: Attack, model: IQAModel, x, x_adv, ref) -> torch.Tensor:
    with torch.no_grad():
        return attack.objective(model, x_adv, ref) - attack.objective(model, x, ref)


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("name", ATTACKS)
def test_every_image_moves_the_requested_way(models, images, name, model_name, direction):
    # A small budget keeps FGSM's single step inside the region where the gradient is
    # informative; at 10/255 one FGSM step overshoots GMSD's optimum on these images.
    model, x, ref = case(models, images, model_name)
    attack = create_attack(name, eps="2/255", direction=direction)
    x_adv = attack.perturb(model, x, ref)
    assert (objective_change(attack, model, x, x_adv, ref) > 0).all()
    with torch.no_grad():
        raw = model.score(x_adv, ref) - model.score(x, ref)
    # orientation: "up" means better quality, i.e. a lower GMSD and a higher SSIM/CNNIQA
    expect_increase = (direction == "up") != model.info.lower_better
    assert ((raw > 0) if expect_increase else (raw < 0)).all()


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("name", ATTACKS)
def test_card_defaults_stay_in_budget_and_range(models, images, name, model_name):
    model, x, ref = case(models, images, model_name)
    for direction in DIRECTIONS:
        attack = create_attack(name, direction=direction)
        x_adv = attack.perturb(model, x, ref)
        linf = (x_adv - x).abs().flatten(1).amax(dim=1)
        assert (linf <= attack.eps + 1e-6).all()
        assert x_adv.min() >= 0 and x_adv.max() <= 1
        assert linf.max() > attack.eps / 2  # the budget is actually used
        assert torch.isfinite(x_adv).all()


def test_card_defaults_match_the_design_table():
    # name: (eps in /255, steps, alpha, momentum, random start)
    expected = {
        "fgsm": (10, 1, 10 / 255, 0.0, False),
        "ifgsm": (10, 10, 1 / 255, 0.0, False),
        "mifgsm": (10, 10, 1 / 255, 1.0, False),
        "pgd": (8, 20, 8 / 255 / 4, 0.0, True),
    }
    for name, (eps255, steps, alpha, momentum, random_start) in expected.items():
        attack = create_attack(name)
        assert attack.eps == pytest.approx(eps255 / 255)
        assert attack.alpha == pytest.approx(alpha)
        assert (attack.steps, attack.momentum, attack.random_start) == (
            steps,
            momentum,
            random_start,
        )
        json.dumps(attack.config())


@pytest.mark.parametrize("name", ATTACKS)
def test_deterministic_under_seed_and_leaves_global_rng_alone(models, images, name):
    cnniqa = models["cnniqa"]
    # a randomised-smoothing style defense: draws from the global RNG on every call
    noisy = IQAModel(
        lambda x: cnniqa.score((x + 0.02 * torch.randn_like(x)).clamp(0, 1)),
        ModelInfo(
            name="noisy-cnniqa", kind="NR", lower_better=False, score_range=None, source="plugin"
        ),
    )
    x, _ = images
    for model in (cnniqa, noisy):
        state = torch.get_rng_state()
        first = create_attack(name, seed=3).perturb(model, x)
        assert torch.equal(torch.get_rng_state(), state)
        again = create_attack(name, seed=3).perturb(model, x)
        assert torch.equal(first, again)
        other = create_attack(name, seed=4).perturb(model, x)
        if name == "pgd" or model is noisy:  # randomness enters: it must follow the seed
            assert not torch.equal(first, other)
        else:
            assert torch.equal(first, other)


@pytest.mark.parametrize("name", ATTACKS)
def test_batch_results_do_not_depend_on_batch_composition(models, images, name):
    attack = create_attack(name)
    order = [2, 0, 3, 1]
    for model_name in MODELS:
        model, x, ref = case(models, images, model_name)
        full = attack.perturb(model, x, ref)
        shuffled = attack.perturb(model, x[order], None if ref is None else ref[order])
        assert torch.equal(full[order], shuffled), model_name
    # SSIM computes bit-identical scores for any batch size (CNNIQA's convolutions do not,
    # and sign() amplifies last-bit differences), so one image alone must match exactly.
    model, x, ref = case(models, images, "ssim")
    full = attack.perturb(model, x, ref)
    for i in range(x.shape[0]):
        alone = attack.perturb(model, x[i : i + 1], ref[i : i + 1])
        assert torch.equal(alone, full[i : i + 1])


@pytest.mark.parametrize("name", ATTACKS)
def test_frozen_model_keeps_its_mode_and_gets_no_parameter_gradients(images, name):
    model = make_cnniqa()  # fresh: training mode, dropout on, parameters require grad
    model.net.fc1.eval()  # a mixed train/eval state must come back exactly
    modes = {n: m.training for n, m in model.named_modules()}
    x, _ = images
    x_adv = create_attack(name).perturb(model, x)
    assert {n: m.training for n, m in model.named_modules()} == modes
    for p in model.parameters():
        assert p.grad is None and p.requires_grad
    # the attack ran in eval mode (dropout off): same result as on an eval-mode copy
    assert torch.equal(x_adv, create_attack(name).perturb(make_cnniqa().eval(), x))
    eval_model = make_cnniqa().eval()
    create_attack(name).perturb(eval_model, x)
    assert not any(m.training for m in eval_model.modules())


def test_pgd_loop_equals_torchattacks_upgd(models, images):
    """PGD's own loop without a random start is I-FGSM as torchattacks.UPGD computes it."""
    for model_name in MODELS:
        model, x, ref = case(models, images, model_name)
        ours = create_attack("pgd", eps="10/255", steps=10, alpha="1/255", random_start=False)
        upgd = create_attack("ifgsm")
        assert torch.equal(ours.perturb(model, x, ref), upgd.perturb(model, x, ref)), model_name


def test_momentum_reaches_torchattacks(models, images):
    model, x, ref = case(models, images, "cnniqa")
    ifgsm = create_attack("ifgsm").perturb(model, x, ref)
    assert torch.equal(create_attack("mifgsm", momentum=0.0).perturb(model, x, ref), ifgsm)
    assert not torch.equal(create_attack("mifgsm").perturb(model, x, ref), ifgsm)


def test_fgsm_takes_one_full_step(models, images):
    model, x, ref = case(models, images, "ssim", n=3)  # images without clipped pixels
    x_adv = create_attack("fgsm", direction="down").perturb(model, x, ref)
    inside = (x > 0.05) & (x < 0.95)
    moved = (x_adv - x)[inside].abs()
    assert (moved > 0).float().mean() > 0.9
    assert torch.allclose(moved[moved > 0], torch.full_like(moved[moved > 0], 10 / 255), atol=1e-6)


@pytest.mark.parametrize("name", ATTACKS)
def test_zero_gradient_images_stay_finite(models, images, name):
    """GMSD of an image against itself has an exactly zero input gradient."""
    _, ref = images
    model = models["gmsd"]
    x_adv = create_attack(name, direction="down").perturb(model, ref, ref)
    assert torch.isfinite(x_adv).all()
    if name == "pgd":  # the random start leaves the stationary point
        assert not torch.equal(x_adv, ref)
        assert (model.score(x_adv, ref) > 0).all()
    else:
        assert torch.equal(x_adv, ref)


def test_works_under_no_grad_and_on_parameterless_models(images, capsys):
    x, ref = images
    mse = IQAModel(
        lambda a, b: ((a - b) ** 2).flatten(1).mean(dim=1),
        ModelInfo(name="mse", kind="FR", lower_better=True, score_range=None, source="plugin"),
    )
    with torch.no_grad():
        for name in ATTACKS:
            x_adv = create_attack(name).perturb(mse, x[:1], ref[:1])
            assert mse.score(x_adv, ref[:1]) < mse.score(x[:1], ref[:1])
    assert capsys.readouterr().out == ""  # torchattacks prints when it finds no parameters


def test_params_are_validated():
    bad = [
        ("fgsm", {"steps": 2}),
        ("ifgsm", {"stepz": 2}),
        ("ifgsm", {"momentum": 1.0}),
        ("ifgsm", {"steps": 0}),
        ("ifgsm", {"steps": 1.5}),
        ("ifgsm", {"steps": True}),
        ("ifgsm", {"alpha": "eps/0"}),
        ("ifgsm", {"alpha": "fast"}),
        ("ifgsm", {"alpha": -0.1}),
        ("ifgsm", {"alpha": "2*eps*"}),
        ("mifgsm", {"momentum": -1.0}),
        ("mifgsm", {"momentum": float("nan")}),
        ("pgd", {"random_start": "yes"}),
    ]
    for name, params in bad:
        with pytest.raises(ConfigError):
            create_attack(name, **params)
    with pytest.raises(ConfigError, match="L_inf"):
        FGSM(AttackInfo("fgsm-l2", "gradient", norm="l2"), eps=0.5)


def test_step_size_syntax():
    eps = 8 / 255
    assert resolve_step("1/255", eps) == pytest.approx(1 / 255)
    assert resolve_step(0.01, eps) == pytest.approx(0.01)
    assert resolve_step("eps", eps) == pytest.approx(eps)
    assert resolve_step("eps/4", eps) == pytest.approx(eps / 4)
    assert resolve_step("eps * 0.5", eps) == pytest.approx(eps / 2)
    assert resolve_step("2*eps", eps) == pytest.approx(2 * eps)
    # relative steps follow an overridden budget, absolute ones do not
    assert create_attack("pgd", eps="4/255").alpha == pytest.approx(1 / 255)
    assert create_attack("ifgsm", eps="4/255").alpha == pytest.approx(1 / 255)


def test_bad_inputs_and_broken_attacks_are_caught(models, images):
    x, ref = images
    attack = create_attack("fgsm")
    with pytest.raises(DataError):
        attack.perturb(models["cnniqa"], x * 2)
    with pytest.raises(DataError):
        attack.perturb(models["ssim"], x, ref[:2])
    with pytest.raises(ConfigError):
        attack.perturb(models["ssim"], x)  # full-reference model without a reference

    class Overshoot(PGD):
        def _perturb(self, model, x, ref):
            return (x + 2 * self.eps).clamp(0, 1)

    with pytest.raises(RuntimeError, match="budget"):
        Overshoot(AttackInfo("overshoot", "gradient"), eps=4 / 255).perturb(models["cnniqa"], x)
    nan_pixel = x.clone()
    nan_pixel[0, 1, 2, 3] = float("nan")
    with pytest.raises(DataError, match="finite"):  # one NaN pixel is enough
        attack.perturb(models["cnniqa"], nan_pixel)

    class ReturnsNaN(PGD):
        def _perturb(self, model, x, ref):
            return x.clone().index_fill_(3, torch.tensor([0]), float("nan"))

    class LeavesRange(PGD):
        def _perturb(self, model, x, ref):
            return x * 0 + 1 + self.eps / 2

    with pytest.raises(RuntimeError, match="non-finite"):
        ReturnsNaN(AttackInfo("nan", "gradient"), eps=4 / 255).perturb(models["cnniqa"], x)
    with pytest.raises(RuntimeError, match=r"outside \[0, 1\]"):
        LeavesRange(AttackInfo("range", "gradient"), eps=4 / 255).perturb(models["cnniqa"], x)
