"""KADID-style synthetic distortions for the built-in dataset, each at 5 levels.

Every distortion maps an (H, W, 3) uint8 RGB array to another one of the same shape, is
deterministic given its `numpy.random.Generator`, and its 5 parameter values run from
barely visible (level 1) to strong (level 5). The families follow KADID-10k (Lin et al.
2019): blurs, noises, compression, colour, brightness, contrast, spatial and sharpness
distortions, so that no-reference models must learn more than "noise and blur".

`colour_only` distortions change nothing on a grey image; the builder skips them for
grey sources rather than label an unchanged image as distorted.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, features
from scipy import ndimage

from benchmark.errors import ConfigError

Array = np.ndarray
DistortFn = Callable[[Array, float, np.random.Generator], Array]

# ITU-R BT.601 luma weights, as in JPEG and pyiqa's Y channel.
_LUMA = np.array([0.299, 0.587, 0.114])


@dataclass(frozen=True)
class Distortion:
    name: str
    fn: DistortFn
    params: tuple[float, float, float, float, float]  # parameter at levels 1..5
    colour_only: bool
    description: str

    def apply(self, image: Array, level: int, rng: np.random.Generator) -> Array:
        if not 1 <= level <= len(self.params):
            raise ConfigError(
                f"distortion {self.name}: level must be 1..{len(self.params)}, got {level}"
            )
        out = self.fn(image, self.params[level - 1], rng)
        return out if out.dtype == np.uint8 else _to_u8(out)


def _f(image: Array) -> Array:
    return image.astype(np.float64) / 255.0


def _to_u8(x: Array) -> Array:
    return np.clip(np.rint(np.asarray(x, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)


def _luma(x: Array) -> Array:
    return (x @ _LUMA)[..., None]


def gaussian_blur(image: Array, sigma: float, rng: np.random.Generator) -> Array:
    return ndimage.gaussian_filter(_f(image), sigma=(sigma, sigma, 0), mode="reflect")


def motion_blur(image: Array, length: float, rng: np.random.Generator) -> Array:
    """Average along a line of `length` px at a random angle (camera shake)."""
    n = int(length)
    angle = rng.uniform(0.0, np.pi)
    kernel = np.zeros((n, n))
    c = (n - 1) / 2
    for t in np.linspace(-c, c, 4 * n):
        kernel[int(round(c + t * np.sin(angle))), int(round(c + t * np.cos(angle)))] = 1.0
    kernel /= kernel.sum()
    x = _f(image)
    return np.stack(
        [ndimage.convolve(x[..., i], kernel, mode="reflect") for i in range(3)], axis=-1
    )


def white_noise(image: Array, sigma: float, rng: np.random.Generator) -> Array:
    return _f(image) + rng.normal(0.0, sigma, size=image.shape)


def impulse_noise(image: Array, density: float, rng: np.random.Generator) -> Array:
    """Salt-and-pepper: a `density` fraction of pixels set to black or white in all channels."""
    out = image.copy()
    hit = rng.random(image.shape[:2]) < density
    salt = rng.random(image.shape[:2]) < 0.5
    out[hit & salt] = 255
    out[hit & ~salt] = 0
    return out


def _codec(image: Array, fmt: str, **kwargs: object) -> Array:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt, **kwargs)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def jpeg(image: Array, quality: float, rng: np.random.Generator) -> Array:
    return _codec(image, "JPEG", quality=int(quality), subsampling=2)


def jpeg2000(image: Array, ratio: float, rng: np.random.Generator) -> Array:
    return _codec(
        image, "JPEG2000", quality_mode="rates", quality_layers=[float(ratio)], irreversible=True
    )


def contrast_decrease(image: Array, alpha: float, rng: np.random.Generator) -> Array:
    """Blend towards the mean grey: contrast multiplied by `alpha`."""
    x = _f(image)
    mean = x.mean(axis=(0, 1), keepdims=True).mean()
    return mean + alpha * (x - mean)


def saturation_decrease(image: Array, s: float, rng: np.random.Generator) -> Array:
    """Blend towards luma: chroma multiplied by `s` (0 = grey)."""
    x = _f(image)
    y = _luma(x)
    return y + s * (x - y)


def saturation_increase(image: Array, s: float, rng: np.random.Generator) -> Array:
    """Push away from luma (over-saturation, clipped)."""
    return saturation_decrease(image, s, rng)


def darken(image: Array, gamma: float, rng: np.random.Generator) -> Array:
    return _f(image) ** gamma


def brighten(image: Array, gamma: float, rng: np.random.Generator) -> Array:
    return 1.0 - (1.0 - _f(image)) ** gamma


def colour_cast(image: Array, k: float, rng: np.random.Generator) -> Array:
    """White-balance error: red gain up, blue gain down (or the reverse), by `k`."""
    x = _f(image)
    sign = 1.0 if rng.random() < 0.5 else -1.0
    gains = np.array([1.0 + sign * k, 1.0, 1.0 - sign * k])
    return x * gains


def pixelate(image: Array, factor: float, rng: np.random.Generator) -> Array:
    h, w = image.shape[:2]
    small = Image.fromarray(image).resize(
        (max(1, round(w / factor)), max(1, round(h / factor))), Image.Resampling.BOX
    )
    return np.asarray(small.resize((w, h), Image.Resampling.NEAREST), dtype=np.uint8).copy()


def colour_quantization(image: Array, colours: float, rng: np.random.Generator) -> Array:
    """Median-cut palette of `colours` entries, no dithering (banding, false contours)."""
    im = Image.fromarray(image).quantize(
        colors=int(colours), method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
    )
    return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def over_sharpen(image: Array, amount: float, rng: np.random.Generator) -> Array:
    """Unsharp mask with a large gain: halos and amplified noise."""
    x = _f(image)
    blurred = ndimage.gaussian_filter(x, sigma=(1.5, 1.5, 0), mode="reflect")
    return x + amount * (x - blurred)


def chromatic_aberration(image: Array, shift: float, rng: np.random.Generator) -> Array:
    """Red and blue planes shifted `shift` px in opposite directions, slightly blurred."""
    x = _f(image)
    d = float(shift)
    angle = rng.uniform(0.0, 2 * np.pi)
    dy, dx = d * np.sin(angle), d * np.cos(angle)
    out = x.copy()
    out[..., 0] = ndimage.shift(x[..., 0], (dy, dx), order=1, mode="nearest")
    out[..., 2] = ndimage.shift(x[..., 2], (-dy, -dx), order=1, mode="nearest")
    out[..., [0, 2]] = ndimage.gaussian_filter(
        out[..., [0, 2]], sigma=(0.5 + d / 8, 0.5 + d / 8, 0)
    )
    return out


_ALL = [
    Distortion(
        "gaussian_blur", gaussian_blur, (0.7, 1.2, 2.0, 3.2, 5.0), False, "Gaussian blur, sigma px"
    ),
    Distortion(
        "motion_blur", motion_blur, (3, 5, 9, 14, 21), False, "linear motion blur, length px"
    ),
    Distortion(
        "white_noise",
        white_noise,
        (0.015, 0.03, 0.05, 0.08, 0.13),
        False,
        "additive Gaussian noise, sigma",
    ),
    Distortion(
        "impulse_noise",
        impulse_noise,
        (0.002, 0.008, 0.022, 0.055, 0.12),
        False,
        "salt and pepper, density",
    ),
    Distortion("jpeg", jpeg, (55, 30, 15, 8, 3), False, "JPEG, quality"),
    Distortion("jpeg2000", jpeg2000, (16, 32, 64, 128, 250), False, "JPEG 2000, compression ratio"),
    Distortion(
        "contrast_decrease",
        contrast_decrease,
        (0.84, 0.68, 0.52, 0.37, 0.24),
        False,
        "contrast gain",
    ),
    Distortion(
        "saturation_decrease", saturation_decrease, (0.7, 0.5, 0.3, 0.12, 0.0), True, "chroma gain"
    ),
    Distortion(
        "saturation_increase", saturation_increase, (1.4, 1.8, 2.4, 3.2, 4.5), True, "chroma gain"
    ),
    Distortion("darken", darken, (1.15, 1.45, 1.9, 2.6, 3.6), False, "gamma on [0, 1] values"),
    Distortion(
        "brighten", brighten, (1.15, 1.45, 1.9, 2.6, 3.6), False, "gamma on inverted values"
    ),
    Distortion(
        "colour_cast", colour_cast, (0.06, 0.12, 0.2, 0.3, 0.45), False, "red/blue gain offset"
    ),
    Distortion("pixelate", pixelate, (2, 3, 4, 6, 9), False, "block size px"),
    Distortion(
        "colour_quantization", colour_quantization, (64, 32, 16, 8, 4), False, "palette size"
    ),
    Distortion("over_sharpen", over_sharpen, (0.6, 1.3, 2.4, 4.0, 6.5), False, "unsharp-mask gain"),
    Distortion(
        "chromatic_aberration", chromatic_aberration, (1, 2, 3.5, 5.5, 8), False, "channel shift px"
    ),
]

if not features.check("jpg_2000"):  # Pillow built without OpenJPEG: the type is dropped
    _ALL = [d for d in _ALL if d.name != "jpeg2000"]

DISTORTIONS: dict[str, Distortion] = {d.name: d for d in _ALL}


def get_distortion(name: str) -> Distortion:
    try:
        return DISTORTIONS[name]
    except KeyError:
        raise ConfigError(f"unknown distortion {name!r}; known: {', '.join(DISTORTIONS)}") from None
