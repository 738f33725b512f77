"""Per-image size of a perturbation: L_inf, L2, L0 (pixels changed), PSNR and SSIM of the
attacked vs clean image.

SSIM is the one pyiqa computes (`pyiqa.archs.ssim_arch.ssim` on the YIQ luma, 11x11
Gaussian window of sigma 1.5, 'valid' borders, non-negative contrast-structure term). The
runner computes it for every attacked image, where pyiqa's version cost about as much as
scoring a cheap model, so the five window means are taken with the Gaussian split into its
two 1-D factors, each applied as 11 shifted multiply-adds over all five maps at once
(depthwise convolution kernels are slow on CPU; docs/speed.md). In float32, within 1e-5 of
pyiqa's float64 (tested).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

WINDOW, SIGMA = 11, 1.5
C1, C2 = 0.01**2, 0.03**2  # data range 1


@functools.cache
def _window_1d() -> tuple[float, ...]:
    """One factor of pyiqa's `fspecial(11, 1.5)`, a normalised 2-D Gaussian that is exactly
    the outer product of two of these (no tap is small enough for fspecial to zero)."""
    t = torch.arange(WINDOW, dtype=torch.float64) - (WINDOW - 1) / 2
    g = torch.exp(-(t * t) / (2 * SIGMA * SIGMA))
    return tuple((g / g.sum()).tolist())


def _window_means(maps: torch.Tensor) -> torch.Tensor:
    """Means over every 11x11 Gaussian window inside the maps ('valid'), one axis at a time."""
    g = _window_1d()
    h, w = maps.shape[-2] - WINDOW + 1, maps.shape[-1] - WINDOW + 1
    rows = maps[..., :w] * g[0]
    for k in range(1, WINDOW):
        rows.add_(maps[..., k : k + w], alpha=g[k])
    out = rows[..., :h, :] * g[0]
    for k in range(1, WINDOW):
        out.add_(rows[..., k : k + h, :], alpha=g[k])
    return out


def luma(x: torch.Tensor) -> torch.Tensor:
    """The YIQ Y channel pyiqa's SSIM uses, (N, 1, H, W)."""
    weights = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype)
    return (x * weights.view(1, 3, 1, 1)).sum(dim=1, keepdim=True)


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SSIM per image of two batches in [0, 1] (luma), as pyiqa's `ssim(to_y_channel(.))`."""
    if min(x.shape[-2:]) < WINDOW:
        raise ValueError(f"SSIM needs images of at least {WINDOW}x{WINDOW}, got {tuple(x.shape)}")
    x, y = luma(x), luma(y)
    maps = _window_means(torch.cat([x, y, x * x, y * y, x * y], dim=1))
    mu_x, mu_y, m_xx, m_yy, m_xy = maps.unbind(dim=1)
    mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
    var_x, var_y, cov = m_xx - mu_xx, m_yy - mu_yy, m_xy - mu_xy
    cs = F.relu((2 * cov + C2) / (var_x + var_y + C2))
    return (((2 * mu_xy + C1) / (mu_xx + mu_yy + C1)) * cs).mean(dim=(1, 2))


def perturbation_norms(x: torch.Tensor, x_adv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image L_inf and L2 of `x_adv - x`, reduced in float64.

    The attack's budget check and the runner's statistics both need them for every image (each
    computes them once per batch), so L_inf comes from one `aminmax`, not a `|delta|` copy."""
    delta = (x_adv - x).flatten(1).double()
    lo, hi = torch.aminmax(delta, dim=1)
    return torch.maximum(hi, -lo), torch.linalg.vector_norm(delta, dim=1)


def changed_pixels(x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
    """Per-image L0 of `x_adv - x`: the number of pixel positions where any channel changed
    (the one-pixel and patch attacks' budget counts pixels, not channel values)."""
    return (x_adv != x).any(dim=1).flatten(1).sum(dim=1)


def perturbation_stats(x: torch.Tensor, x_adv: torch.Tensor) -> dict[str, np.ndarray]:
    """L_inf, L2, L0 (pixels changed), PSNR (dB, inf when unchanged) and SSIM of each attacked
    image vs its clean one."""
    with torch.inference_mode():
        linf, l2 = (v.cpu().numpy() for v in perturbation_norms(x, x_adv))
        l0 = changed_pixels(x, x_adv).double().cpu().numpy()
        s = ssim(x_adv.float(), x.float())
    mse = l2 * l2 / x[0].numel()
    with np.errstate(divide="ignore"):
        psnr = np.where(mse > 0, -10 * np.log10(np.maximum(mse, 1e-300)), math.inf)
    return {"linf": linf, "l2": l2, "l0": l0, "psnr": psnr, "ssim": s.double().cpu().numpy()}
