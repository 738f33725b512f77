"""The per-image perturbation statistics stored beside every attacked score."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pyiqa.archs.ssim_arch import ssim as pyiqa_ssim
from pyiqa.utils.color_util import to_y_channel

from benchmark.image_stats import perturbation_stats, ssim


def _pyiqa(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    luma = [to_y_channel(t.double(), 1, "yiq") for t in (x, y)]
    return pyiqa_ssim(*luma, data_range=1.0)


@pytest.fixture(scope="module")
def pairs() -> tuple[torch.Tensor, torch.Tensor]:
    """Photographs, a flat image with one edge (where float32 variances cancel worst), and
    noisy copies of each."""
    from skimage import data

    photos = [torch.from_numpy(im[:96, :128].copy()) for im in (data.astronaut(), data.coffee())]
    clean = torch.stack(photos).permute(0, 3, 1, 2).float() / 255
    flat = torch.full((1, 3, 96, 128), 0.5)
    flat[..., :40] = 0.9
    clean = torch.cat([clean, flat])
    g = torch.Generator().manual_seed(0)
    noisy = (clean + 0.02 * torch.randn(clean.shape, generator=g)).clamp(0, 1)
    return noisy, clean


def test_ssim_equals_pyiqas_float64_ssim(pairs) -> None:
    noisy, clean = pairs
    ours = ssim(noisy, clean).double()
    assert torch.allclose(ours, _pyiqa(noisy, clean), atol=1e-5, rtol=0)
    assert torch.allclose(ssim(clean, clean).double(), torch.ones(3, dtype=torch.float64))


def test_stats_measure_the_perturbation(pairs) -> None:
    noisy, clean = pairs
    delta = torch.zeros_like(clean)
    delta[0, 0, 0, 0] = 4 / 255  # one pixel of one image
    shifted = clean + delta
    stats = perturbation_stats(clean, shifted)
    assert stats["linf"][0] == pytest.approx(4 / 255, rel=1e-6)
    assert stats["l2"][0] == pytest.approx(4 / 255, rel=1e-6)
    mse = (4 / 255) ** 2 / clean[0].numel()
    assert stats["psnr"][0] == pytest.approx(10 * math.log10(1 / mse), rel=1e-5)
    assert stats["psnr"][1] == math.inf and stats["linf"][1] == 0 and stats["ssim"][1] == 1
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(F.avg_pool2d(clean, 10), F.avg_pool2d(noisy, 10))
