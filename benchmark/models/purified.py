"""Input purification defenses: a preprocessing step in front of any model, attacked adaptively.

Named `<purifier><param>+<base>` on the command line (`jpeg50+cnniqa-builtin`,
`median3+ssim`, `bits4+...`, `blur1.0+...`, `resize1.15+...`; chains like
`jpeg50+median3+base` work; certified smoothing `rs0.25+base`, `ms0.25n400+base` composes the
same way, see benchmark.models.smoothing). How each is attacked, so none looks strong by masking gradients:

- `jpeg<Q>`: real JPEG re-compression (PIL) in the forward pass; the backward pass is that of
  a differentiable JPEG codec at the same quality (kornia's, Reich et al. 2024: YCbCr, 4:2:0
  chroma, 8x8 DCT, the IJG tables, polynomial rounding), i.e. BPDA (Athalye et al. 2018) with
  an approximation within about 42 dB PSNR of the real codec (a test checks it) rather than
  the identity, which ignores what JPEG removes.
- `bits<B>`: bit-depth reduction to B bits per channel; BPDA with the identity, the usual
  stand-in for a staircase whose true gradient is zero almost everywhere.
- `median<K>`: K x K median filter; differentiable almost everywhere (the gradient flows to
  the selected pixel), attacked directly.
- `blur<S>`: Gaussian blur with sigma S; differentiable, attacked directly.
- `resize<R>`: random resize to [1, R] x the size and random zero padding back to R x
  (Xie et al. 2018); stochastic: when the input requires a gradient the score is the mean
  over `EOT_SAMPLES` draws (Expectation over Transformation), so every gradient an attack sees
  is an EOT gradient. Clean and attacked scores use one draw from the seeded RNG.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from benchmark.errors import ConfigError
from benchmark.models.base import IQAModel
from benchmark.models.smoothing import parse_smoothed, smoothed_model

EOT_SAMPLES = 8
_SPEC = re.compile(r"^(jpeg|bits|median|blur|resize)(\d+(?:\.\d+)?)\+(.+)$")


def _grad_wanted(x: torch.Tensor) -> bool:
    """Whether an input gradient is being taken: only then pay for EOT or a BPDA stand-in."""
    return x.requires_grad and torch.is_grad_enabled()


def _bpda(approx: torch.Tensor, purified: torch.Tensor) -> torch.Tensor:
    """Forward: the purified image; backward: that of `approx` (the input for straight-through)."""
    return approx + (purified - approx).detach()


class Purifier(nn.Module):
    stochastic = False
    #: what the attacker differentiates through: the purifier itself, or its BPDA stand-in
    backward = "exact"

    @property
    def bpda(self) -> bool:
        return self.backward != "exact"


class JPEG(Purifier):
    backward = "differentiable JPEG (kornia, Reich et al. 2024)"

    def __init__(self, quality: float) -> None:
        super().__init__()
        if not 1 <= quality <= 100:
            raise ConfigError(f"jpeg quality must be in 1..100, got {quality}")
        self.quality = int(quality)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(x)
        arr = (
            (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        )
        for i, img in enumerate(arr):
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG", quality=self.quality)
            dec = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
            out[i] = torch.from_numpy(dec.copy()).permute(2, 0, 1).to(x.dtype) / 255
        if not _grad_wanted(x):  # scoring pays only the real codec
            return out
        from kornia.enhance import jpeg_codec_differentiable  # a slow import; attacks only

        quality = torch.tensor([float(self.quality)], device=x.device, dtype=x.dtype)
        return _bpda(jpeg_codec_differentiable(x, quality), out)


class BitDepth(Purifier):
    backward = "identity"

    def __init__(self, bits: float) -> None:
        super().__init__()
        if not (1 <= bits <= 8 and float(bits).is_integer()):
            raise ConfigError(f"bits must be an integer in 1..8, got {bits}")
        self.levels = 2 ** int(bits) - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _bpda(x, torch.round(x * self.levels) / self.levels)


class Median(Purifier):
    def __init__(self, k: float) -> None:
        super().__init__()
        if not (k >= 1 and float(k).is_integer() and int(k) % 2 == 1):
            raise ConfigError(f"median filter size must be an odd integer, got {k}")
        self.k = int(k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.k // 2
        padded = F.pad(x, (p, p, p, p), mode="reflect")
        patches = padded.unfold(2, self.k, 1).unfold(3, self.k, 1)
        return patches.reshape(*patches.shape[:4], -1).median(dim=-1).values


class Blur(Purifier):
    def __init__(self, sigma: float) -> None:
        super().__init__()
        if not 0 < sigma <= 10:
            raise ConfigError(f"blur sigma must be in (0, 10], got {sigma}")
        radius = max(1, math.ceil(3 * sigma))
        t = torch.arange(-radius, radius + 1, dtype=torch.float32)
        g = torch.exp(-(t**2) / (2 * sigma**2))
        self.register_buffer("kernel", g / g.sum())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel.to(x.dtype)
        r = k.numel() // 2
        c = x.shape[1]
        x = F.pad(x, (r, r, r, r), mode="reflect")
        x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


class RandomResizePad(Purifier):
    stochastic = True

    def __init__(self, ratio: float) -> None:
        super().__init__()
        if not 1 < ratio <= 2:
            raise ConfigError(f"resize ratio must be in (1, 2], got {ratio}")
        self.ratio = float(ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        big_h, big_w = round(h * self.ratio), round(w * self.ratio)
        s = float(torch.empty(()).uniform_(1.0, self.ratio))
        nh, nw = min(big_h, round(h * s)), min(big_w, round(w * s))
        y = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)
        top = int(torch.randint(0, big_h - nh + 1, ()))
        left = int(torch.randint(0, big_w - nw + 1, ()))
        return F.pad(y, (left, big_w - nw - left, top, big_h - nh - top))


PURIFIERS: dict[str, type[Purifier]] = {
    "jpeg": JPEG,
    "bits": BitDepth,
    "median": Median,
    "blur": Blur,
    "resize": RandomResizePad,
}


class PurifiedNet(nn.Module):
    """base(purifier(x)); with EOT averaging over draws whenever a gradient is being taken."""

    def __init__(self, purifier: Purifier, base: IQAModel, eot: int = EOT_SAMPLES) -> None:
        super().__init__()
        self.purifier = purifier
        self.base = base
        self.eot = eot

    def forward(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        draws = self.eot if (self.purifier.stochastic and _grad_wanted(x)) else 1
        # a full-reference base compares against the clean reference, itself unpurified
        scores = [self.base.score(self.purifier(x), ref) for _ in range(draws)]
        return torch.stack(scores).mean(dim=0)


def parse_purified(name: str) -> tuple[str, float, str] | None:
    """`jpeg50+cnniqa-builtin` -> ("jpeg", 50.0, "cnniqa-builtin"); None if not such a name.

    Smoothing defenses (`rs0.25+...`, `ms0.5n400+...`, benchmark.models.smoothing) compose the
    same way and parse as (method, sigma, base)."""
    smoothed = parse_smoothed(name)
    if smoothed is not None:
        return smoothed.method, smoothed.sigma, smoothed.base
    m = _SPEC.match(name)
    return None if m is None else (m.group(1), float(m.group(2)), m.group(3))


def purified_model(name: str, base: IQAModel) -> IQAModel:
    if parse_smoothed(name) is not None:
        return smoothed_model(name, base)
    kind, value, _ = parse_purified(name)  # type: ignore[misc]
    purifier = PURIFIERS[kind](value)
    if base.info.kind == "FR" and purifier.stochastic:
        raise ConfigError(
            f"{name}: a resizing purifier changes the image size, which a full-reference base cannot compare"
        )
    info = replace(
        base.info,
        name=name,
        source="defense",
        base=base.name,
        description=f"{kind} {value:g} purification in front of {base.name}",
        extra={
            # the base's certified Lipschitz bound does not survive a purifier in front of it
            # (JPEG and bit-depth quantisation are not even continuous), so it is not inherited
            **{k: v for k, v in base.info.extra.items() if k != "certified"},
            "purifier": kind,
            "purifier_param": value,
            "bpda": purifier.bpda,
            "attacker_backward": purifier.backward,
            "eot_samples": EOT_SAMPLES if purifier.stochastic else 1,
        },
    )
    return IQAModel(PurifiedNet(purifier, base), info)
