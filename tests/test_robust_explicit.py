"""ExplicitOrthConv2d: exact orthogonality (circular), non-expansiveness (zero padding / wide),
one ordinary conv at inference, gradients, the traced bound, conversion, pruning, reloading."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.models.robust_net import convert_network, resize_to_state
from benchmark.robust import (
    ExplicitOrthConv2d,
    MaxMin,
    OrthLinear,
    empirical_lipschitz,
    lipschitz_upper_bound,
    prune,
    robustify,
)
from benchmark.robust.convert import explicit_from_conv
from benchmark.robust.explicit import circular_pad
from benchmark.robust.lipschitz import lipschitz_analysis

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPES = [  # (c_in, c_out, k, stride, h, w); c_out >= c_in * stride^2: norm-preserving
    (4, 4, 3, 1, 8, 8),
    (3, 8, 3, 1, 9, 6),
    (2, 8, 3, 2, 7, 12),
    (3, 12, 7, 1, 5, 4),  # kernel wider than the input: taps wrap around the torus
    (5, 5, 4, 1, 6, 11),
    (2, 6, 1, 1, 4, 5),
]


def _scrambled(layer: ExplicitOrthConv2d, seed: int) -> ExplicitOrthConv2d:
    """Generators far from their init, as after training (orthogonality must not care)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (layer.weight, layer.proj):
            p.copy_(3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return layer


def _jacobian_svals(layer: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    x = torch.zeros(shape, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(layer, x)
    return torch.linalg.svdvals(jac.reshape(-1, x.numel()))


@pytest.mark.parametrize(("ci", "co", "k", "s", "h", "w"), SHAPES)
def test_norm_preserved_exactly_with_circular_padding(ci, co, k, s, h, w):
    layer = _scrambled(ExplicitOrthConv2d(ci, co, k, s, bias=False), h * w + co)
    x = torch.randn(2, ci, h, w)
    with torch.no_grad():
        for mode in (True, False):  # kernel built per call / cached kernel
            y = layer.train(mode)(x)
            assert y.shape == (2, co, -(-h // s), -(-w // s))
            assert abs(float(y.double().norm() / x.double().norm()) - 1) < 1e-5
    layer64 = layer.double()
    x64 = x.double()
    with torch.no_grad():
        assert abs(float(layer64(x64).norm() / x64.norm()) - 1) < 1e-12


@pytest.mark.parametrize(("ci", "co", "k", "s"), [(3, 8, 3, 1), (2, 8, 3, 2), (4, 4, 5, 1)])
def test_jacobian_is_an_isometry_with_circular_padding(ci, co, k, s):
    layer = _scrambled(ExplicitOrthConv2d(ci, co, k, s, bias=False).double(), 7)
    sv = _jacobian_svals(layer, (1, ci, 6, 4))
    assert torch.allclose(sv, torch.ones_like(sv), atol=1e-10)


@pytest.mark.parametrize(("ci", "co", "s"), [(8, 3, 1), (4, 6, 2)])
def test_wide_layer_is_non_expansive_not_isometric(ci, co, s):
    layer = _scrambled(ExplicitOrthConv2d(ci, co, 3, s, bias=False).double(), 3)
    sv = _jacobian_svals(layer, (1, ci, 6, 6))
    assert float(sv.max()) <= 1 + 1e-10
    assert torch.allclose(sv, torch.ones_like(sv), atol=1e-10)  # a co-isometry: rows orthonormal
    x = torch.randn(4, ci, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        assert float(layer(x).norm() / x.norm()) < 0.99


def test_zero_padding_is_non_expansive_but_loses_orthogonality_at_the_border():
    layer = _scrambled(ExplicitOrthConv2d(3, 6, 3, padding_mode="zeros", bias=False).double(), 5)
    sv = _jacobian_svals(layer, (1, 3, 5, 6))
    assert float(sv.max()) <= 1 + 1e-10
    assert float(sv.min()) < 0.999


def test_inference_is_one_conv_with_the_cached_kernel(monkeypatch):
    layer = _scrambled(ExplicitOrthConv2d(4, 8, 3), 2).eval()
    x = torch.randn(2, 4, 9, 7)
    kern = layer.kernel().detach()
    assert kern.shape == (8, 4, 3, 3)
    expected = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="circular"), kern, layer.bias)
    torch.testing.assert_close(layer(x), expected)
    calls = []
    monkeypatch.setattr(layer, "kernel", lambda: calls.append(1) or kern)
    layer(x), layer(x)
    assert not calls  # built once, then reused
    with torch.no_grad():  # a weight update invalidates the cache
        layer.proj.add_(0.1)
    layer(x)
    assert len(calls) == 1


def test_circular_pad_handles_pads_larger_than_the_input():
    x = torch.arange(6.0).reshape(1, 1, 2, 3)
    big = circular_pad(x, 4, 4)
    idx_h = torch.arange(-4, 2 + 4) % 2
    idx_w = torch.arange(-4, 3 + 4) % 3
    assert torch.equal(big[0, 0], x[0, 0][idx_h][:, idx_w])


def test_gradients_reach_input_and_every_parameter():
    layer = ExplicitOrthConv2d(3, 8, 3, 2)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    layer(x).square().sum().backward()
    for name, p in [("x", x), *layer.named_parameters()]:
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert float(p.grad.abs().sum()) > 0, name
    layer.eval()  # cached kernel: inputs still get gradients
    x.grad = None
    (g,) = torch.autograd.grad(layer(x).sum(), x)
    assert float(g.norm()) > 0


def test_gradcheck_float64():
    layer = _scrambled(ExplicitOrthConv2d(2, 4, 3).double(), 1)
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    params = (layer.weight, layer.proj)

    def fn(xx, w, p):
        with torch.no_grad():
            layer.weight.copy_(w)
            layer.proj.copy_(p)
        return torch.func.functional_call(layer, {"weight": w, "proj": p}, (xx,))

    assert torch.autograd.gradcheck(fn, (x, *[p.detach().clone().requires_grad_() for p in params]))


def _explicit_net(seed: int, padding_mode: str = "circular") -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(
        ExplicitOrthConv2d(3, 12, 3, stride=2, padding_mode=padding_mode),
        MaxMin(),
        ExplicitOrthConv2d(12, 8, 3, padding_mode=padding_mode),
        nn.MaxPool2d(2),
        nn.Flatten(),
        OrthLinear(8 * 2 * 2, 6),
        MaxMin(),
        OrthLinear(6, 1, learn_scale=True),
    )
    for m in net:
        if isinstance(m, ExplicitOrthConv2d):
            _scrambled(m, seed)
    return net


@pytest.mark.parametrize("padding_mode", ["circular", "zeros"])
@pytest.mark.parametrize("seed", [0, 1])
def test_bound_never_below_empirical(seed, padding_mode):
    net = _explicit_net(seed, padding_mode)
    shape = (1, 3, 8, 8)
    analysis = lipschitz_analysis(net, shape)
    assert analysis.bound is not None, analysis.reasons
    convs = [c for name, c in analysis.factors if name == "ExplicitOrthConv2d"]
    assert len(convs) == 2 and all(abs(c - 1) < 1e-5 for c in convs)  # measured, not assumed
    assert analysis.bound >= empirical_lipschitz(net, shape, n=12, seed=seed) * (1 - 1e-5)


def test_bound_sees_a_kernel_that_is_not_orthogonal():
    # the bound is the operator norm of the actual kernel, so a broken construction shows
    net = _explicit_net(0)
    layer = net[0]
    real = layer.kernel

    def doubled() -> torch.Tensor:
        return 2 * real()

    layer.kernel = doubled  # type: ignore[method-assign]
    factors = lipschitz_analysis(net, (1, 3, 8, 8)).factors
    convs = [c for name, c in factors if name == "ExplicitOrthConv2d"]
    assert convs[0] == pytest.approx(2.0, rel=1e-5) and convs[1] == pytest.approx(1.0, rel=1e-5)


def _cnniqa() -> nn.Module:
    from pyiqa.archs.cnniqa_arch import CNNIQA

    torch.manual_seed(0)
    return CNNIQA(pretrained=None).eval()


def test_robustify_explicit_converts_cnniqa_with_a_certified_bound():
    net, report = robustify(_cnniqa(), fit_steps=10, orth="explicit")
    assert report.fully_converted
    assert isinstance(net.conv1, ExplicitOrthConv2d)
    assert ("conv1", "Conv2d(3, 50, k=7, s=1)", "ExplicitOrthConv2d") in report.converted
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    (g,) = torch.autograd.grad(net(x).sum(), x)
    assert torch.isfinite(g).all() and g.norm() > 0
    shape = (1, 3, 32, 32)
    bound = lipschitz_upper_bound(net, shape)
    assert bound is not None
    assert bound == pytest.approx(2**0.5 * abs(float(net.fc3.scale)), rel=1e-5)
    assert bound >= empirical_lipschitz(net, shape, n=8) * (1 - 1e-5)


def test_explicit_fit_finds_a_reachable_orthogonal_base():
    conv = nn.Conv2d(4, 6, 3, padding=1)
    with torch.no_grad():  # an orthogonal 1x1 map inside a 3x3 kernel: reachable exactly
        conv.weight.zero_()
        q, _ = torch.linalg.qr(torch.randn(6, 4, generator=torch.Generator().manual_seed(0)))
        conv.weight[:, :, 1, 1] = q
    layer, dist = explicit_from_conv(conv, steps=200)
    assert dist < 0.1
    x = torch.randn(1, 4, 7, 9)
    with torch.no_grad():
        err = float((layer(x) - conv(x)).norm() / conv(x).norm())
    assert err < 0.1


@pytest.fixture(scope="module")
def pruned_explicit() -> tuple[nn.Module, nn.Module, dict]:
    net, _ = convert_network(_cnniqa(), init_from_base=False, orth="explicit")
    small, report = prune(net, fraction=0.3, example_input=(1, 3, 32, 32), fit_steps=10)
    return net, small, report.to_dict()


def test_prune_shrinks_explicit_layers_and_the_bound_still_holds(pruned_explicit):
    net, small, report = pruned_explicit
    assert report["params_after"] < report["params_before"]
    assert isinstance(small.conv1, ExplicitOrthConv2d)
    assert small.conv1.out_channels < 50 and small.fc1.in_features == 2 * small.conv1.out_channels
    with torch.no_grad():
        out = small(torch.rand(3, 3, 48, 40))
    assert out.shape == (3, 1) and torch.isfinite(out).all()
    shape = (1, 3, 32, 32)
    bound = lipschitz_upper_bound(small, shape)
    assert bound is not None and bound >= empirical_lipschitz(small, shape, n=4) * (1 - 1e-5)


def test_pruned_explicit_checkpoint_reloads_to_the_same_outputs(pruned_explicit):
    from pyiqa.archs.cnniqa_arch import CNNIQA

    _, small, _ = pruned_explicit
    state = small.state_dict()
    fresh, _ = convert_network(CNNIQA(pretrained=None), init_from_base=False, orth="explicit")
    resize_to_state(fresh, state, path=None)  # type: ignore[arg-type]
    fresh.load_state_dict(state, strict=True)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), small.eval()(x))


def test_unknown_orth_choice_is_refused():
    from benchmark.errors import ConfigError

    with pytest.raises(ConfigError, match="orth"):
        robustify(_cnniqa(), orth="spectral")


@pytest.fixture(scope="module")
def explicit_run(tiny_root, tmp_path_factory: pytest.TempPathFactory):
    """The whole robustify pipeline with `orth="explicit"` on a tiny base (one epoch each)."""
    from benchmark.datasets.builtin import BuiltinDataset
    from benchmark.train.loop import TrainConfig, run_training
    from benchmark.train.robustify import RobustifyConfig, run_robustify

    out = tmp_path_factory.mktemp("zoo-explicit")

    def open_split(split: str) -> BuiltinDataset:
        return BuiltinDataset(tiny_root, split)

    small = {"patch": 32, "n_kers": 8, "n1_nodes": 32, "n2_nodes": 32}
    base_cfg = TrainConfig(
        arch="cnniqa", arch_params=small, out=str(out / "base"), crop=32, patches=2,
        batch_size=16, epochs=1, progress=False,
    )  # fmt: skip
    run_training(base_cfg, open_split=open_split)
    cfg = RobustifyConfig(
        base="base", out=str(out / "robust-explicit-base"), epochs=1, finetune_epochs=1,
        prune_fraction=0.5, orth="explicit", progress=False,
    )  # fmt: skip
    card = run_robustify(cfg, open_split=open_split, base_card=out / "base" / "card.toml")
    return card, out / "robust-explicit-base" / "card.toml", open_split


@pytest.mark.slow  # trains a tiny base and runs every robustify step (~40 s)
def test_explicit_pipeline_card_records_orth_and_reloads(explicit_run):
    from benchmark.cards import read_toml
    from benchmark.models.zoo import load_zoo_model
    from benchmark.report.evaluation import evaluate_model

    card, path, open_split = explicit_run
    on_disk = read_toml(path)
    assert on_disk["robust"]["orth"] == "explicit"
    assert "--orth explicit" in card["training"]["command"]
    assert "explicit-kernel" in card["description"]
    assert any("ExplicitOrthConv2d" in c for c in on_disk["robust"]["conversion"])
    params = {s["step"]: s["parameters"] for s in card["steps"]}
    assert params["prune"] < params["train"]
    model = load_zoo_model(path)  # the loader rebuilds explicit layers from the card's orth
    assert any(isinstance(m, ExplicitOrthConv2d) for m in model.net.modules())
    report = evaluate_model(model.net, open_split("test"))
    assert report["srocc"] == card["evaluation"]["srocc"]
    cert = card["certified"]
    assert cert["lipschitz"] >= cert["empirical_lower"] > 0
    x = torch.rand(2, 3, 48, 48, requires_grad=True)
    model.quality(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_cli_refuses_an_unknown_orth_with_exit_code_2():
    from benchmark.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["robustify", "--base", "cnniqa-builtin", "--orth", "spectral", "-o", "x"])
    assert exc.value.code == 2


@pytest.mark.parametrize(("shape", "p"), [((2, 3, 5, 7), 1), ((1, 2, 6, 6), 3), ((1, 1, 4, 9), 2)])
def test_circular_pad_backward_equals_autograd_of_f_pad(shape, p):
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    g = torch.randn(*shape[:-2], shape[-2] + 2 * p, shape[-1] + 2 * p, dtype=torch.float64)
    ref = F.pad(x, (p,) * 4, mode="circular")
    assert torch.equal(circular_pad(x, p, p), ref)
    (ours,) = torch.autograd.grad((circular_pad(x, p, p) * g).sum(), x)
    (theirs,) = torch.autograd.grad((ref * g).sum(), x)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
