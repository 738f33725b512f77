"""robustify / prune / Lipschitz bounds: conversions of the zoo architectures and soundness."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from benchmark.robust import (
    GroupSort,
    MaxMin,
    OrthConv2d,
    OrthLinear,
    empirical_lipschitz,
    lipschitz_analysis,
    lipschitz_upper_bound,
    prune,
    robustify,
)
from benchmark.robust.convert import _fold_bn, orth_conv_from_conv
from benchmark.robust.lipschitz import conv2d_operator_bound

pytestmark = pytest.mark.usefixtures("one_thread")


def _cnniqa() -> nn.Module:
    from pyiqa.archs.cnniqa_arch import CNNIQA

    torch.manual_seed(0)
    return CNNIQA(pretrained=None).eval()


def _n(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("act", [MaxMin(), GroupSort(4), MaxMin(dim=-1)])
def test_activations_preserve_norm_and_are_one_lipschitz(act):
    torch.manual_seed(0)
    x, y = torch.randn(3, 8, 5, 4), torch.randn(3, 8, 5, 4)
    torch.testing.assert_close(act(x).norm(), x.norm())
    assert (act(x) - act(y)).norm() <= (x - y).norm() * (1 + 1e-6)
    odd = torch.randn(2, 5)  # odd feature count: the leftover unit gets ReLU (stays >= 0)
    assert MaxMin()(odd)[:, -1].min() >= 0


@pytest.mark.parametrize(("i", "o"), [(6, 6), (4, 9), (9, 4), (7, 1)])
def test_orth_linear_is_semi_orthogonal(i, o):
    torch.manual_seed(1)
    q = OrthLinear(i, o).double().orthogonal_weight()
    gram = q.T @ q if o >= i else q @ q.T
    torch.testing.assert_close(gram, torch.eye(min(i, o), dtype=torch.float64))


def test_bn_folding_matches_conv_then_bn():
    torch.manual_seed(2)
    conv, bn = nn.Conv2d(3, 5, 3, padding=1), nn.BatchNorm2d(5)
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2.0)
    bn.weight.data.normal_()
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        ref = bn.eval()(conv(x))
        _fold_bn(conv, bn)
        torch.testing.assert_close(conv(x), ref, rtol=1e-5, atol=1e-5)


def test_nearest_orthogonal_init_recovers_an_orthogonal_base():
    """A conv that is already orthogonal (a channel permutation) must be reproduced exactly.

    (A 3-cycle: a permutation with eigenvalue -1, e.g. a swap, is a pole of the Cayley map.)
    """
    conv = nn.Conv2d(4, 4, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[torch.arange(4), torch.tensor([1, 2, 0, 3]), 1, 1] = 1.0
    layer, dist = orth_conv_from_conv(conv)
    assert dist < 1e-3
    x = torch.randn(1, 4, 7, 9)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), conv(x), rtol=1e-4, atol=1e-4)


def test_robustify_cnniqa_converts_everything_and_bounds_hold():
    base = _cnniqa()
    net, report = robustify(base, fit_steps=10)
    names = {n for n, _, _ in report.converted}
    assert {"conv1", "fc1", "fc2", "fc3"} <= names
    assert sum("functional relu" in a for _, a, _ in report.converted) == 2
    assert report.fully_converted and report.fx_error is None
    assert isinstance(net.conv1, OrthConv2d) and isinstance(net.fc2, OrthLinear)
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    (g,) = torch.autograd.grad(net(x).sum(), x)
    assert torch.isfinite(g).all() and g.norm() > 0
    shape = (1, 3, 32, 32)
    analysis = lipschitz_analysis(net, shape)
    assert analysis.bound is not None, analysis.reasons
    # exact product: OrthConv 1 * sqrt(2) (max+min pooling concatenated) * |head scale|
    expected = 2**0.5 * abs(float(net.fc3.scale))
    assert analysis.bound == pytest.approx(expected, rel=1e-9)
    assert analysis.bound >= empirical_lipschitz(net, shape, n=8) * (1 - 1e-5)


def test_robustify_wadiqam_reports_what_is_not_certifiable():
    from pyiqa.archs.wadiqam_arch import WaDIQaM

    torch.manual_seed(3)
    base = WaDIQaM(metric_type="NR", pretrained=False).eval()
    net, report = robustify(base, init_from_base=False)
    assert report.fx_error is not None  # shape-dependent Python loops: no graph rewrite
    assert sum(isinstance(m, OrthConv2d) for m in net.modules()) == 10
    assert not any(isinstance(m, (nn.Conv2d, nn.Linear, nn.ReLU)) for m in net.modules())
    with torch.no_grad():
        assert torch.isfinite(net(torch.rand(2, 3, 64, 64))).all()
    analysis = lipschitz_analysis(net, (1, 3, 64, 64))
    assert analysis.bound is None  # the weighted average q * w / sum(w) is not Lipschitz
    assert any("input-dependent" in r for r in analysis.reasons)


def _plain(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, stride=2, padding=1),
        nn.BatchNorm2d(6).eval(),
        nn.LeakyReLU(0.2),
        nn.Conv2d(6, 8, 5, padding=2, dilation=1),
        nn.Tanh(),
        nn.MaxPool2d(3, 2, 1),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(8, 5),
        nn.ReLU(),
        nn.Linear(5, 1),
    )


def _robust(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        OrthConv2d(3, 12, 3, stride=2),
        MaxMin(),
        OrthConv2d(12, 8, 3),
        GroupSort(4),
        nn.MaxPool2d(2),
        nn.Flatten(),
        OrthLinear(8 * 2 * 2, 6),
        MaxMin(),
        OrthLinear(6, 1, learn_scale=True),
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("make", [_plain, _robust])
def test_bound_never_below_empirical(make, seed):
    net = make(seed)
    shape = (1, 3, 8, 8)
    bound = lipschitz_upper_bound(net, shape)
    assert bound is not None
    assert bound >= empirical_lipschitz(net, shape, n=12, seed=seed) * (1 - 1e-5)


def test_robust_model_bound_is_the_exact_product():
    net = _robust(0)
    with torch.no_grad():
        net[-1].scale.fill_(-2.5)
    assert lipschitz_upper_bound(net, (1, 3, 8, 8)) == pytest.approx(2.5)


def test_conv_bound_dominates_true_operator_norm():
    torch.manual_seed(4)
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False)
    n = 3 * 7 * 6
    jac = torch.autograd.functional.jacobian(conv, torch.zeros(1, 3, 7, 6)).reshape(-1, n)
    true = float(torch.linalg.matrix_norm(jac.double(), 2))
    bound = conv2d_operator_bound(conv.weight, (7, 6), (1, 1))
    assert true <= bound * (1 + 1e-9)
    assert bound < 3 * true  # and it is not vacuous


class _Branchy(nn.Module):
    def forward(self, x):
        return x * 2 if x.mean() > 0 else -x


class _Square(nn.Module):
    def forward(self, x):
        return (x * x).sum()


@pytest.mark.parametrize("net", [_Branchy(), _Square()])
def test_bound_unavailable_rather_than_wrong(net):
    analysis = lipschitz_analysis(net, (1, 2, 3, 3))
    assert analysis.bound is None and analysis.reasons


@pytest.mark.parametrize("how", [{"fraction": 0.3}, {"tau": 1e9}])
def test_prune_gives_smaller_model_with_finite_outputs(how):
    net, _ = robustify(_cnniqa(), init_from_base=False)
    small, report = prune(net, example_input=(1, 3, 32, 32), **how)
    assert report.params_after < report.params_before == _n(net)
    assert _n(small) == report.params_after
    assert small.conv1.out_channels < 50 and small.fc1.in_features == 2 * small.conv1.out_channels
    assert "fc3" in report.skipped  # the score head is never pruned
    with torch.no_grad():
        out = small(torch.rand(3, 3, 48, 40))
    assert out.shape == (3, 1) and torch.isfinite(out).all()
    assert lipschitz_upper_bound(small, (1, 3, 32, 32)) is not None


class _StdPool(nn.Module):
    def __init__(self, **kw):
        super().__init__()
        self.kw = kw

    def forward(self, x):
        return x.flatten(2).std(dim=2, **self.kw)


@pytest.mark.parametrize(("kw", "correction"), [({"unbiased": False}, 0), ({}, 1)])
def test_std_pooling_bound_is_tight(kw, correction):
    # std over n elements has gradient norm exactly 1/sqrt(n - correction) wherever the
    # input is not constant, so the bound must equal that and the empirical estimate reach it
    net, shape = _StdPool(**kw), (1, 3, 5, 4)
    bound = lipschitz_upper_bound(net, shape)
    assert bound == pytest.approx(1 / math.sqrt(20 - correction))
    assert empirical_lipschitz(net, shape, n=4) == pytest.approx(bound, rel=1e-4)
