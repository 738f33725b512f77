"""AMI-FGSM, Korhonen, MADC, APGD and the gradient-free Square attack on real models: a randomly
initialised pyiqa CNNIQA (NR), pyiqa SSIM (FR, higher better), GMSD (FR, lower better) and,
for Square, pyiqa PIQE (NR, no input gradient)."""

from __future__ import annotations

import json

import pyiqa
import pytest
import torch
import torch.nn.functional as F
from pyiqa.archs.cnniqa_arch import CNNIQA

from benchmark.attacks.iterative import activity_map, apgd_checkpoints
from benchmark.attacks.query import square_fraction
from benchmark.attacks.registry import create_attack
from benchmark.errors import ConfigError
from benchmark.models.base import IQAModel, ModelInfo

ATTACKS = ["amifgsm", "korhonen", "madc", "apgd", "square"]
MODELS = ["cnniqa", "ssim", "gmsd"]
FAST = {"apgd": {"steps": 12}, "square": {"queries": 60}}  # test-sized budgets of queries


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny convolutions gain nothing from threads, and oversubscribed cores lose 10x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_metric(name: str, kind: str) -> IQAModel:
    metric = pyiqa.create_metric(name, as_loss=True, loss_reduction="none", device="cpu")
    info = ModelInfo(
        name=name, kind=kind, lower_better=metric.lower_better, score_range=None, source="pyiqa"
    )
    return IQAModel(metric, info)


@pytest.fixture(scope="module")
def models() -> dict[str, IQAModel]:
    torch.manual_seed(0)
    cnniqa = IQAModel(
        CNNIQA(pretrained=None),
        ModelInfo(
            name="cnniqa-random", kind="NR", lower_better=False, score_range=None, source="pyiqa"
        ),
    ).eval()
    return {"cnniqa": cnniqa, "ssim": make_metric("ssim", "FR"), "gmsd": make_metric("gmsd", "FR")}


@pytest.fixture(scope="module")
def images() -> tuple[torch.Tensor, torch.Tensor]:
    """(distorted, reference): 4 smooth random 48x48 references plus noise."""
    g = torch.Generator().manual_seed(0)
    ref = F.avg_pool2d(torch.rand(4, 3, 48, 48, generator=g), 5, 1, 2)
    x = (ref + 0.05 * torch.randn(ref.shape, generator=g)).clamp(0, 1)
    return x, ref


def case(models, images, name):
    x, ref = images
    model = models[name]
    return model, x, (ref if model.info.kind == "FR" else None)


def change(attack, model, x, x_adv, ref) -> torch.Tensor:
    with torch.no_grad():
        return attack.objective(model, x_adv, ref) - attack.objective(model, x, ref)


@pytest.mark.parametrize("direction", ["up", "down"])
@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("name", ATTACKS)
def test_moves_the_requested_way_within_budget(models, images, name, model_name, direction):
    model, x, ref = case(models, images, model_name)
    attack = create_attack(name, direction=direction, **FAST.get(name, {}))
    x_adv = attack.perturb(model, x, ref)
    moved = change(attack, model, x, x_adv, ref)
    assert (moved > 0).all(), moved
    with torch.no_grad():
        raw = (model.score(x_adv, ref) - model.score(x, ref)).mean()
    assert (raw > 0) == ((direction == "up") != model.info.lower_better)
    linf = (x_adv - x).abs().flatten(1).amax(dim=1)
    assert (linf <= attack.eps + 1e-6).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1


@pytest.mark.parametrize("name", ATTACKS)
def test_deterministic_under_seed(models, images, name):
    model, x, _ = case(models, images, "cnniqa")
    state = torch.get_rng_state()
    first = create_attack(name, seed=3, **FAST.get(name, {})).perturb(model, x)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first, create_attack(name, seed=3, **FAST.get(name, {})).perturb(model, x))
    other = create_attack(name, seed=4, **FAST.get(name, {})).perturb(model, x)
    assert torch.equal(first, other) == (name not in ("apgd", "square"))  # randomised ones


@pytest.mark.parametrize("name", ["apgd", "square"])
def test_random_attacks_do_not_depend_on_batch_composition(models, images, name):
    """SSIM scores are bit-identical whatever the batch, so an image alone must match."""
    model, x, ref = case(models, images, "ssim")
    attack = create_attack(name, direction="down", **FAST[name])
    full = attack.perturb(model, x, ref)
    for i in (0, 3):
        assert torch.equal(attack.perturb(model, x[i : i + 1], ref[i : i + 1]), full[i : i + 1])


def test_square_needs_no_gradient(images):
    """PIQE has no usable input gradient offline; Square works on it, even under no_grad."""
    piqe = IQAModel(
        pyiqa.create_metric("piqe", device="cpu"),
        ModelInfo(name="piqe", kind="NR", lower_better=True, score_range=None, source="pyiqa"),
    )
    x, _ = images
    attack = create_attack("square", queries=40)
    assert attack.info.gradient_free
    with torch.no_grad():
        x_adv = attack.perturb(piqe, x)
        assert (piqe.score(x_adv) <= piqe.score(x)).all()  # lower PIQE is better quality
        assert (piqe.score(x_adv) < piqe.score(x)).any()
    assert (x_adv - x).abs().max() <= attack.eps + 1e-6
    for name in ("amifgsm", "korhonen", "madc", "apgd"):
        assert not create_attack(name).info.gradient_free


def test_square_schedule():
    assert square_fraction(0.05, 0, 1000) == 0.05
    assert square_fraction(0.05, 5, 1000) == 0.025  # 50 of 10,000 rescaled
    assert square_fraction(0.05, 999, 1000) == pytest.approx(0.05 / 512)


def test_apgd_checkpoints_match_the_paper():
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]


def test_apgd_uses_its_iterations(models, images):
    """More iterations of APGD never end worse (it returns each image's best point)."""
    model, x, _ = case(models, images, "cnniqa")
    short = create_attack("apgd", steps=3).perturb(model, x)
    long = create_attack("apgd", steps=12).perturb(model, x)
    attack = create_attack("apgd")
    assert (change(attack, model, x, long, None) >= change(attack, model, x, short, None)).all()


def test_amifgsm_step_follows_the_budget(models, images):
    attack = create_attack("amifgsm", eps="4/255")
    assert attack.alpha == pytest.approx(4 / 255 / 10)
    model, x, ref = case(models, images, "ssim")
    x_adv = attack.perturb(model, x, ref)
    inside = (x > 0.05) & (x < 0.95)
    # every step is a full signed step, and 10 of them just span the budget
    assert (x_adv - x)[inside].abs().max() == pytest.approx(4 / 255, abs=1e-6)


def test_korhonen_perturbs_only_textured_regions(models):
    x = torch.full((1, 3, 48, 48), 0.5)
    x[..., 20:28] = torch.rand(1, 3, 48, 8, generator=torch.Generator().manual_seed(1))
    mask = activity_map(x)
    assert mask.shape == (1, 1, 48, 48) and mask.max() == 1
    assert (mask[..., :14] == 0).all() and (mask[..., 34:] == 0).all()
    assert torch.equal(activity_map(torch.full((1, 3, 8, 8), 0.3)), torch.ones(1, 1, 8, 8))
    attack = create_attack("korhonen")
    x_adv = attack.perturb(models["cnniqa"], x)
    delta = (x_adv - x).abs()
    assert delta[..., :14].max() == 0 and delta[..., 34:].max() == 0
    assert delta[..., 20:28].max() > 0


def test_madc_keeps_its_rmse_budget_and_orthogonality(models, images):
    model, x, ref = case(models, images, "gmsd")
    attack = create_attack("madc", lr="2/255", rmse="3/255", steps=6, direction="down")
    x_adv = attack.perturb(model, x, ref)
    rmse = (x_adv - x).flatten(1).pow(2).mean(dim=1).sqrt()
    assert (rmse <= 3 / 255 + 1e-6).all() and (rmse > 2.5 / 255).all()  # binding, then held
    assert (change(attack, model, x, x_adv, ref) > 0).all()
    # one step from the clean image is a plain signed-gradient step (no MSE gradient yet)
    one = create_attack("madc", steps=1, direction="down").perturb(model, x, ref)
    inside = (x > 0.01) & (x < 0.99)
    moved = (one - x)[inside].abs()
    assert torch.allclose(moved[moved > 0], torch.full_like(moved[moved > 0], 0.001), atol=1e-6)


def test_card_defaults_match_the_design_table():
    expected = {
        "amifgsm": (10, {"steps": 10, "momentum": 1.0}),
        "korhonen": (10, {"steps": 10, "lr": 0.005}),
        "madc": (10, {"steps": 8, "lr": 0.001, "rmse": "eps"}),
        "apgd": (8, {"steps": 100, "rho": 0.75, "random_start": True}),
        "square": (8, {"queries": 1000, "p_init": 0.05}),
    }
    for name, (eps255, params) in expected.items():
        attack = create_attack(name)
        assert attack.eps == pytest.approx(eps255 / 255)
        assert attack.params == params
        json.dumps(attack.config())
    assert create_attack("madc").rmse == pytest.approx(10 / 255)
    assert create_attack("square").info.family == "query"


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("amifgsm", {"alpha": "1/255"}),
        ("amifgsm", {"steps": 0}),
        ("korhonen", {"lr": -1}),
        ("madc", {"rmse": "fast"}),
        ("apgd", {"rho": 1.5}),
        ("apgd", {"random_start": "yes"}),
        ("square", {"queries": 0}),
        ("square", {"p_init": 2}),
    ],
)
def test_params_are_validated(name, params):
    with pytest.raises(ConfigError):
        create_attack(name, **params)


def test_undefined_gradients_do_not_poison_the_image(images):
    """NLPD's input gradient is NaN where the image equals its reference (pristine images of
    a dataset): those pixels stay put, the rest of the batch is attacked as usual."""
    nlpd = make_metric("nlpd", "FR")
    x, ref = images
    x = torch.cat([ref[:1], x[1:2]])  # image 0 is its own reference
    ref = ref[:2]
    for name in ("amifgsm", "korhonen", "madc", "apgd"):
        attack = create_attack(name, direction="down", **FAST.get(name, {}))
        x_adv = attack.perturb(nlpd, x, ref)
        assert torch.isfinite(x_adv).all(), name
        assert change(attack, nlpd, x, x_adv, ref)[1] > 0, name
