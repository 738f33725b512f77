"""Certified smoothing (rs/ms): the certified interval holds against a strong EOT attack and
is nearly tight on a model built to make it tight, it narrows as sigma and the number of
samples grow, noise is seeded per image, median smoothing abstains when the order statistic it
needs does not exist, and a run stores the certificate and the leaderboard reads it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from benchmark.attacks.registry import create_attack
from benchmark.errors import ConfigError
from benchmark.models.base import IQAModel, ModelInfo
from benchmark.models.purified import parse_purified
from benchmark.models.registry import create_model
from benchmark.models.smoothing import (
    ALPHA,
    CHUNK,
    EOT_SAMPLES,
    SmoothedNet,
    certify,
    hoeffding_margin,
    l2_radius,
    order_statistics,
    parse_smoothed,
    smoother_of,
)

SHAPE = (3, 4, 4)
D = math.prod(SHAPE)


class Step(nn.Module):
    """sigmoid(k * (<w, x> - b)), w = sign pattern / sqrt(D): Gaussian smoothing of a steep
    function of one direction is what makes the rs/ms bounds tight, and an L_inf attack along
    sign(w) moves <w, x> by exactly eps * sqrt(D), the L2 radius the cell certifies."""

    def __init__(self, k: float = 200.0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        signs = torch.randint(0, 2, SHAPE, generator=g).float() * 2 - 1
        self.register_buffer("w", signs / math.sqrt(D))
        self.b = float((self.w * 0.5).sum())
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.k * ((x * self.w).flatten(1).sum(1) - self.b))


def _step_model(lower_better: bool = False, score_range=(0.0, 1.0)) -> IQAModel:
    info = ModelInfo("step", "NR", lower_better, score_range, "plugin")
    return IQAModel(Step(), info)


def _smoothed(method: str, sigma: float, n: int, seed: int = 0, **kw) -> IQAModel:
    net = SmoothedNet(_step_model(**kw), method, sigma, n, seed)
    return IQAModel(net, ModelInfo(f"{method}+step", "NR", net.base.info.lower_better,
                                   net.base.info.score_range, "defense"))  # fmt: skip


def _images(offsets: tuple[float, ...]) -> torch.Tensor:
    """Images at <w, x> - b = offset (plus noise orthogonal enough not to matter)."""
    w = Step().w
    g = torch.Generator().manual_seed(1)
    base = 0.5 + 0.02 * torch.randn((len(offsets), *SHAPE), generator=g)
    base = base - ((base - 0.5) * w).flatten(1).sum(1).view(-1, 1, 1, 1) * w  # on the plane
    return torch.stack([b + c * w for b, c in zip(base, offsets, strict=True)]).clamp(0, 1)


@pytest.mark.parametrize(
    "method,direction,offsets",
    [
        ("rs", "up", (-0.12, -0.06, -0.02, 0.02)),
        ("rs", "down", (-0.02, 0.02, 0.06, 0.12)),
        ("ms", "up", (-0.08, -0.05, -0.03, -0.01)),
    ],
)
def test_certified_interval_holds_against_a_strong_eot_attack(method, direction, offsets) -> None:
    sigma, n, eps = 0.1, 4000, 0.01
    radius = eps * math.sqrt(D)
    model = _smoothed(method, sigma, n)
    smoother = smoother_of(model)
    x = _images(offsets)
    interval = certify(smoother.samples(x).numpy(), method, sigma, radius)
    assert not interval.abstain.any()
    attack = create_attack("ifgsm", eps=eps, direction=direction, seed=0, steps=20, alpha=eps / 4)
    x_adv = attack.perturb(model, x)
    assert (x_adv - x).abs().max() <= eps + 1e-6
    with torch.no_grad():
        clean, attacked = model.score(x).numpy(), model.score(x_adv).numpy()
    # every attacked smoothed score lies in its image's certified interval
    assert (attacked >= interval.lower).all() and (attacked <= interval.upper).all(), (
        interval, attacked)  # fmt: skip
    # ... and the attack is strong: it covers most of the certified room in its direction
    room = interval.upper - clean if direction == "up" else clean - interval.lower
    moved = attacked - clean if direction == "up" else clean - attacked
    assert (moved > 0.5 * room).all(), (moved, room)
    # so a certificate claiming half the radius would be escaped: the check has teeth
    half = certify(smoother.samples(x).numpy(), method, sigma, radius / 2)
    escaped = attacked > half.upper if direction == "up" else attacked < half.lower
    assert escaped.any()


def test_interval_narrows_as_sigma_grows_at_a_fixed_radius() -> None:
    rng = np.random.default_rng(0)
    samples = np.clip(rng.normal(0.4, 0.1, (3, 400)), 0, 1)
    for method in ("rs", "ms"):
        widths = []
        for sigma in (0.25, 0.5, 1.0, 2.0):
            iv = certify(samples, method, sigma, radius=0.5)
            widths.append(iv.upper - iv.lower)
        widths = np.array(widths)
        assert np.isfinite(widths).all() and (np.diff(widths, axis=0) < 0).all(), (method, widths)


def test_interval_narrows_as_samples_grow() -> None:
    assert hoeffding_margin(10_000) < hoeffding_margin(1000) < hoeffding_margin(100)
    for method in ("rs", "ms"):
        widths = []
        for n in (100, 1000, 10_000):
            # the same distribution, sampled ever more finely (quantiles of N(0.4, 0.1))
            from scipy.stats import norm

            samples = np.clip(norm.ppf((np.arange(n) + 0.5) / n, 0.4, 0.1), 0, 1)[None]
            iv = certify(samples, method, 0.5, radius=0.25)
            widths.append(float((iv.upper - iv.lower)[0]))
        assert widths[0] > widths[1] > widths[2], (method, widths)


def test_noise_is_seeded_per_image_whatever_the_batch() -> None:
    model = _smoothed("rs", 0.25, 2 * CHUNK + 3)
    x = _images((-0.05, 0.0, 0.05))
    with torch.no_grad():
        together = model.score(x)
        alone = torch.cat([model.score(x[i : i + 1]) for i in (2, 1, 0)]).flip(0)
        again = model.score(x)
        other_seed = IQAModel(SmoothedNet(_step_model(), "rs", 0.25, 2 * CHUNK + 3, seed=1),
                              model.info).score(x)  # fmt: skip
    torch.testing.assert_close(together, alone)
    torch.testing.assert_close(together, again)
    assert not torch.equal(together, other_seed)  # the draws are random, and seeded


def test_attacks_go_through_eot_and_scoring_through_all_samples() -> None:
    model = create_model("rs0.25n40+cnniqa-builtin")
    assert model.info.extra["eot_samples"] == EOT_SAMPLES > 1
    assert model.info.extra["smoothing"] == {
        "method": "rs", "sigma": 0.25, "n_samples": 40, "seed": 0, "alpha": ALPHA}  # fmt: skip
    calls: list[int] = []
    model.net.base.net.register_forward_hook(lambda *_: calls.append(1))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        model.quality(x)
    assert len(calls) == 2 * math.ceil(40 / CHUNK)  # per image, all samples in chunks
    calls.clear()
    xg = x.clone().requires_grad_(True)
    model.quality(xg).sum().backward()
    assert len(calls) == EOT_SAMPLES and xg.grad.abs().sum() > 0


def test_names_parse_and_bad_ones_fail_clearly() -> None:
    spec = parse_smoothed("ms0.5n400s3+jpeg50+cnniqa-builtin")
    assert (spec.method, spec.sigma, spec.n, spec.seed, spec.base) == (
        "ms", 0.5, 400, 3, "jpeg50+cnniqa-builtin")  # fmt: skip
    assert parse_purified("rs0.25+cnniqa-builtin") == ("rs", 0.25, "cnniqa-builtin")
    with pytest.raises(ConfigError, match="sigma"):
        create_model("rs0+cnniqa-builtin")
    with pytest.raises(ConfigError, match="cannot certify"):
        SmoothedNet(_step_model(score_range=None), "rs", 0.25, 10)


def test_median_smoothing_abstains_without_the_order_statistic() -> None:
    # 5 samples: P(Binom(5, Phi(-1)) >= 1) = 0.58 < 1 - alpha/2, so no order statistic bounds
    # the median from below at r/sigma = 1; nor from above
    assert order_statistics(5, 0.25, 0.25) == (0, 6)
    samples = np.random.default_rng(0).uniform(0.3, 0.6, (4, 5))
    iv = certify(samples, "ms", 0.25, 0.25)
    assert iv.abstain.all() and np.isnan(iv.lower).all() and np.isnan(iv.upper).all()
    # with enough samples the same radius is certified
    many = np.random.default_rng(0).uniform(0.3, 0.6, (4, 200))
    assert not certify(many, "ms", 0.25, 0.25).abstain.any()


def test_the_l2_ball_contains_each_threat() -> None:
    assert l2_radius(4 / 255, "l2", (3, 192, 192)) == 4 / 255
    assert l2_radius(4 / 255, "linf", (3, 192, 192)) == pytest.approx(5.2165, abs=1e-4)
    # 10 changed pixels, each of 3 values moving by at most 1: ||delta||_2 <= sqrt(30)
    assert l2_radius(10, "l0", (3, 192, 192)) == pytest.approx(math.sqrt(30))
    with pytest.raises(ConfigError, match="no L2 radius"):
        l2_radius(1, "flow", (3, 8, 8))
