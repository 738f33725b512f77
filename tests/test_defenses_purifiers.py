"""Purification defenses: the forward pass is the real purifier, the attacker's gradient is
the one each purifier is documented to give (a differentiable JPEG, straight-through, exact,
EOT), each lowers the I-FGSM gain of a shipped base, and bad names fail clearly."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from kornia.enhance import jpeg_codec_differentiable
from PIL import Image
from skimage import data

from benchmark.attacks.registry import create_attack
from benchmark.errors import ConfigError
from benchmark.models.purified import EOT_SAMPLES, PurifiedNet
from benchmark.models.registry import create_model


def _photos(size: int = 96) -> torch.Tensor:
    """Four crops of the builtin test split's photographs (scikit-image's chelsea and coffee,
    never seen in training): purifiers act differently on noise than on flat regions and edges."""
    crops = []
    for img in (data.chelsea(), data.coffee()):
        h, w = img.shape[:2]
        for top, left in ((h // 4 - size // 4, w // 4), (h // 2, w // 2)):
            crops.append(torch.from_numpy(img[top : top + size, left : left + size].copy()))
    return torch.stack(crops).permute(0, 3, 1, 2).float() / 255


def _pil_jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    out = []
    for img in (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy():
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=quality)
        out.append(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean()))


def _purifier(name: str) -> torch.nn.Module:
    net = create_model(name).net
    assert isinstance(net, PurifiedNet)
    return net.purifier


@pytest.mark.parametrize("size", [(96, 96), (90, 130)])  # a non-multiple of 16 pads like libjpeg
def test_jpeg_forward_is_the_real_codec_and_its_approximation_is_close(size) -> None:
    x = _photos(max(size))[:, :, : size[0], : size[1]]
    jpeg = _purifier("jpeg50+cnniqa-builtin")
    real = _pil_jpeg(x, 50)
    torch.testing.assert_close(jpeg(x), real)  # scoring: the real codec, bit for bit
    torch.testing.assert_close(jpeg(x.clone().requires_grad_(True)).detach(), real)
    approx = jpeg_codec_differentiable(x, torch.tensor([50.0]))
    # the attacker's stand-in is much closer to real JPEG than JPEG is to its input
    assert _psnr(approx, real) > 38 and _psnr(real, x) < 34, (_psnr(approx, real), _psnr(real, x))


def test_jpeg_is_attacked_through_the_differentiable_codec_not_the_identity() -> None:
    x = _photos(64)
    v = torch.randn_like(x)
    xg = x.clone().requires_grad_(True)
    (_purifier("jpeg75+cnniqa-builtin")(xg) * v).sum().backward()
    xa = x.clone().requires_grad_(True)
    (jpeg_codec_differentiable(xa, torch.tensor([75.0])) * v).sum().backward()
    torch.testing.assert_close(xg.grad, xa.grad)
    cos = torch.nn.functional.cosine_similarity(xg.grad.flatten(), v.flatten(), dim=0)
    assert cos < 0.9  # JPEG removes detail, so its Jacobian is far from the identity
    info = create_model("jpeg75+cnniqa-builtin").info.extra
    assert info["bpda"] and "differentiable JPEG" in info["attacker_backward"]


def test_bit_depth_is_straight_through_and_median_blur_are_exact() -> None:
    x = _photos(32)
    v = torch.randn_like(x)
    xg = x.clone().requires_grad_(True)
    bits = _purifier("bits3+cnniqa-builtin")
    out = bits(xg)
    assert torch.unique(out.detach()).numel() <= 8  # 3 bits per channel really quantise
    (out * v).sum().backward()
    torch.testing.assert_close(xg.grad, v)
    for name in ("median3+cnniqa-builtin", "blur1+cnniqa-builtin"):
        purifier = _purifier(name)
        assert purifier.backward == "exact" and not purifier.bpda
        # continuous values: 8-bit photos have ties, where a median has no derivative
        xd = torch.rand(1, 1, 8, 8, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda t, p=purifier: p(t), (xd,))


def test_random_resize_is_attacked_with_eot_and_scored_with_one_draw() -> None:
    model = create_model("resize1.15+cnniqa-builtin")
    calls: list[int] = []
    model.net.base.net.register_forward_hook(lambda *_: calls.append(1))
    x = _photos(64)
    with torch.no_grad():
        model.quality(x)
    assert len(calls) == 1
    calls.clear()
    model.quality(x.clone().requires_grad_(True)).sum().backward()
    assert len(calls) == EOT_SAMPLES == model.info.extra["eot_samples"]
    torch.manual_seed(0)
    a = model.quality(x).detach()
    torch.manual_seed(0)
    torch.testing.assert_close(model.quality(x).detach(), a)  # seeded draws reproduce


def _ifgsm_gain(model, x: torch.Tensor) -> float:
    torch.manual_seed(0)
    adv = create_attack("ifgsm", eps=4 / 255, steps=5).perturb(model, x)
    assert (adv - x).abs().max() <= 4 / 255 + 1e-6
    with torch.no_grad():  # a stochastic purifier draws the same transform for both scores
        torch.manual_seed(0)
        attacked = model.quality(adv)
        torch.manual_seed(0)
        return float((attacked - model.quality(x)).mean())


def test_each_purifier_lowers_the_ifgsm_gain_of_its_base() -> None:
    """Measured: base 0.459; jpeg50 0.210, bits4 0.315, median3 0.367, blur1 0.399, resize1.15
    (EOT) 0.217. Adaptive attacks make the margins modest, as they should be."""
    x = _photos(96)
    base = _ifgsm_gain(create_model("resnet-small-builtin"), x)
    assert base > 0.1
    for spec in ("jpeg50", "bits4", "median3", "blur1", "resize1.15"):
        gain = _ifgsm_gain(create_model(f"{spec}+resnet-small-builtin"), x)
        assert gain < 0.95 * base, (spec, gain, base)


@pytest.mark.parametrize(
    "name,message",
    [
        ("jpeg0+cnniqa-builtin", "jpeg quality must be in 1..100"),
        ("bits9+cnniqa-builtin", "bits must be an integer in 1..8"),
        ("median4+cnniqa-builtin", "odd integer"),
        ("blur0+cnniqa-builtin", "blur sigma"),
        ("resize3+cnniqa-builtin", "resize ratio"),
        ("resize1.15+ssim", "full-reference"),
    ],
)
def test_bad_purifier_names_fail_clearly(name: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        create_model(name)


def test_purifiers_chain_and_record_their_base() -> None:
    model = create_model("jpeg50+median3+cnniqa-builtin")
    assert model.info.base == "median3+cnniqa-builtin" and model.info.source == "defense"
    x = _photos(32).requires_grad_(True)
    model.quality(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_a_purifier_in_front_of_a_certified_model_drops_its_certified_cap() -> None:
    """The RobustBlock model's Lipschitz bound holds for it alone; JPEG in front of it is not
    even continuous, so the purified model must not show the base's certified cap."""
    from benchmark.report.scores import certified_gain

    robust = create_model("robust-cnniqa-builtin")
    assert robust.info.extra["certified"]["lipschitz"] > 0
    shape = (3, 192, 192)
    assert np.isfinite(certified_gain(robust.info.to_dict(), 4 / 255, "linf", shape))
    for name in ("jpeg50+robust-cnniqa-builtin", "blur1+robust-cnniqa-builtin"):
        purified = create_model(name)
        assert "certified" not in purified.info.extra
        assert np.isnan(certified_gain(purified.info.to_dict(), 4 / 255, "linf", shape))


def test_evaluating_a_stochastic_purifier_is_reproducible(tiny_root) -> None:
    from benchmark.datasets.builtin import BuiltinDataset
    from benchmark.report.evaluation import evaluate_model

    model = create_model("resize1.15+cnniqa-builtin")
    test = BuiltinDataset(tiny_root, "test")
    first = evaluate_model(model, test, n_boot=20)
    torch.manual_seed(123)  # the caller's RNG state must not matter
    again = evaluate_model(model, test, n_boot=20)
    assert first["srocc"] == again["srocc"] and first["plcc"] == again["plcc"]
    other = evaluate_model(model, test, n_boot=20, seed=1)
    assert other["plcc"] != first["plcc"]  # the draws are really random, and seeded
