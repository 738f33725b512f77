"""The score-based black-box attacks (NES, SPSA, Parsimonious, one-pixel, Patch-RS) on real
models: a randomly initialised pyiqa CNNIQA (NR) and pyiqa SSIM (FR), both directions; their
budgets (L_inf, and L0 in pixels changed), query counts, seeding; and models without input
gradient (pyiqa PIQE, entropy), which only attacks like these can rank."""

from __future__ import annotations

import numpy as np
import pyiqa
import pytest
import torch
import torch.nn.functional as F
from pyiqa.archs.cnniqa_arch import CNNIQA

from benchmark.attacks.base import Attack, AttackInfo
from benchmark.attacks.registry import ATTACK_SETS, attack_registry, create_attack
from benchmark.budget import budget_label, parse_budget, parse_budgets
from benchmark.engine.config import resolve_attacks
from benchmark.errors import ConfigError
from benchmark.image_stats import changed_pixels
from benchmark.models.base import IQAModel, ModelInfo

ATTACKS = ["nes", "spsa", "parsimonious", "one-pixel", "patch-rs"]
# test-sized budgets: a few dozen queries per image
FAST = {
    "nes": {"queries": 106, "samples": 10},
    "spsa": {"queries": 106, "samples": 10},
    "parsimonious": {"queries": 80, "block_size": 4, "batch_blocks": 16},
    "one-pixel": {"eps": 3, "queries": 121, "population": 30},
    "patch-rs": {"eps": 4, "queries": 60},  # a 2x2 patch of corner colours can still help SSIM
}
L0 = {"one-pixel", "patch-rs"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
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
    return {"cnniqa": cnniqa, "ssim": make_metric("ssim", "FR")}


@pytest.fixture(scope="module")
def images() -> tuple[torch.Tensor, torch.Tensor]:
    """(distorted, reference): 3 smooth random 24x24 references plus noise. Small, so a
    gradient estimate from a few queries (2 x 10 per step in 1728 dimensions) still points
    somewhere; at 40x40 and 4 samples NES finds nothing on SSIM "up" (pyiqa's SSIM also rounds
    its input to 8 bits, so finite differences below 1/255 vanish)."""
    g = torch.Generator().manual_seed(0)
    ref = F.avg_pool2d(torch.rand(3, 3, 24, 24, generator=g), 5, 1, 2)
    x = (ref + 0.1 * torch.randn(ref.shape, generator=g)).clamp(0, 1)
    return x, ref


def case(models, images, name):
    x, ref = images
    model = models[name]
    return model, x, (ref if model.info.kind == "FR" else None)


def within_budget(attack: Attack, x: torch.Tensor, x_adv: torch.Tensor) -> bool:
    if attack.info.norm == "l0":
        return bool((changed_pixels(x, x_adv) <= attack.eps).all())
    return bool(((x_adv - x).abs().flatten(1).amax(dim=1) <= attack.eps + 1e-6).all())


@pytest.mark.parametrize("direction", ["up", "down"])
@pytest.mark.parametrize("model_name", ["cnniqa", "ssim"])
@pytest.mark.parametrize("name", ATTACKS)
def test_moves_the_requested_way_within_budget_and_counts_queries(
    models, images, name, model_name, direction
):
    model, x, ref = case(models, images, model_name)
    attack = create_attack(name, direction=direction, **FAST[name])
    assert attack.info.gradient_free and attack.info.family == "query"
    x_adv = attack.perturb(model, x, ref)
    with torch.no_grad():
        moved = attack.objective(model, x_adv, ref) - attack.objective(model, x, ref)
        raw = (model.score(x_adv, ref) - model.score(x, ref)).mean()
    assert (moved >= 0).all(), moved  # never worse than the clean image
    assert moved.mean() > 0, moved
    assert (raw > 0) == (direction == "up")  # CNNIQA and SSIM: higher is better
    assert within_budget(attack, x, x_adv)
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    counts = attack.query_counts
    assert counts is not None and counts.shape == (len(x),)
    assert (counts >= 1).all() and (counts <= FAST[name]["queries"]).all()


def test_query_counts_follow_the_algorithms(models, images):
    """Fixed-length attacks spend exactly what their schedule says; one-pixel what scipy's
    differential evolution evaluated (whole generations) plus the clean check."""
    model, x, _ = case(models, images, "cnniqa")
    nes = create_attack("nes", **FAST["nes"])  # 1 + 5 steps * (2*10 + 1) of 106
    nes.perturb(model, x)
    assert nes.steps == 5 and (nes.query_counts == 106).all()
    for name in ("parsimonious", "patch-rs"):
        attack = create_attack(name, **FAST[name])
        attack.perturb(model, x)
        assert (attack.query_counts == FAST[name]["queries"]).all(), name
    one = create_attack("one-pixel", **FAST["one-pixel"])  # 3 px: 15 parameters
    one.perturb(model, x)
    assert one.population == 30 and one.generations == 3
    assert (one.query_counts == 4 * 30 + 1).all()


@pytest.mark.parametrize("name", ATTACKS)
def test_deterministic_under_seed(models, images, name):
    model, x, _ = case(models, images, "cnniqa")
    state = torch.get_rng_state()
    first = create_attack(name, seed=3, **FAST[name]).perturb(model, x)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first, create_attack(name, seed=3, **FAST[name]).perturb(model, x))
    assert not torch.equal(first, create_attack(name, seed=4, **FAST[name]).perturb(model, x))


@pytest.mark.parametrize("name", ATTACKS)
def test_an_image_is_attacked_the_same_alone_or_in_a_batch(models, images, name):
    """SSIM scores are bit-identical whatever the batch, and each image has its own RNG."""
    model, x, ref = case(models, images, "ssim")
    attack = create_attack(name, direction="down", **FAST[name])
    full = attack.perturb(model, x, ref)
    assert torch.equal(attack.perturb(model, x[2:3], ref[2:3]), full[2:3])


@pytest.mark.parametrize("metric", ["piqe", "entropy"])
def test_models_without_gradient_are_attacked(images, metric):
    """PIQE and entropy have no usable input gradient offline; every black-box attack moves
    them the requested way, under no_grad too."""
    model = make_metric(metric, "NR")
    x, _ = images
    for name in ATTACKS:
        attack = create_attack(name, **FAST[name])
        with torch.no_grad():
            x_adv = attack.perturb(model, x)
            gain = attack.objective(model, x_adv, None) - attack.objective(model, x, None)
        assert (gain >= 0).all() and gain.mean() > 0, (name, gain)
        assert within_budget(attack, x, x_adv)


class _Careless(Attack):
    """Changes one pixel more than its L0 budget allows."""

    norms = ("l0",)
    defaults = {}

    def _perturb(self, model, x, ref):
        out = x.clone()
        out[:, :, 0, : int(self.eps) + 1] = 1 - out[:, :, 0, : int(self.eps) + 1]
        return out


def test_l0_budget_is_checked_per_image(models, images):
    info = AttackInfo("careless", "plugin", norm="l0")
    model, x, _ = case(models, images, "cnniqa")
    with pytest.raises(RuntimeError, match=r"exceeded its L0 budget 3px"):
        _Careless(info, 3).perturb(model, x)
    with pytest.raises(ConfigError, match="whole number of pixels"):
        _Careless(info, 2.5)
    with pytest.raises(ConfigError, match="whole number of pixels"):
        create_attack("one-pixel", eps="4/255")
    with pytest.raises(ConfigError, match="L0 budget"):
        create_attack("ifgsm", eps="10px")
    assert create_attack("patch-rs", eps="25px").side == 5
    assert create_attack("one-pixel", eps=3).pixels == 3


def test_pixel_budgets_parse_and_label():
    assert parse_budget("10px") == 10.0 and parse_budgets("4/255,10px") == (4 / 255, 10.0)
    assert budget_label(10.0) == "10px" and budget_label(1.0, "l0") == "1px"
    assert budget_label(8 / 255) == "8/255" and budget_label(1.0) == "255/255"
    for bad in ("0px", "1.5px", "px", "-3px"):
        with pytest.raises(ConfigError):
            parse_budget(bad)
    assert create_attack("one-pixel").eps == 10 and create_attack("patch-rs").eps == 64


@pytest.mark.parametrize(
    "name,params",
    [
        ("nes", {"queries": 9, "samples": 4}),  # no room for one step
        ("spsa", {"delta": 0}),
        ("nes", {"sigma": 0.9}),
        ("parsimonious", {"block_size": 0}),
        ("one-pixel", {"queries": 50, "population": 50}),  # one population + the clean check
        ("patch-rs", {"p_init": 1.5}),
        ("patch-rs", {"steps": 3}),
    ],
)
def test_params_are_validated(name, params):
    with pytest.raises(ConfigError):
        create_attack(name, **params)


def test_msu_set_is_the_benchmarks_nine():
    names = resolve_attacks("msu")
    assert len(names) == 9 and set(names) <= set(attack_registry().names())
    assert resolve_attacks("square,msu,ifgsm") == ("square", *ATTACK_SETS["msu"])
    assert not ({"square", "apgd", "pgd", "facpa"} & set(names))


def test_square_counts_its_queries(models, images):
    model, x, _ = case(models, images, "cnniqa")
    square = create_attack("square", queries=20)
    square.perturb(model, x)
    assert np.array_equal(square.query_counts, np.full(len(x), 20))
    ifgsm = create_attack("ifgsm", steps=1)
    ifgsm.perturb(model, x)
    assert ifgsm.query_counts is None  # gradient attacks do not count queries
