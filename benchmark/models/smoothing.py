"""Certified smoothing of a score: randomized (Gaussian-mean) and median smoothing, with
certified lower and upper bounds on the smoothed score within an L2 radius.

Named `<rs|ms><sigma>[n<samples>][s<seed>]+<base>` on the command line: `rs0.25+cnniqa-builtin`
(mean over Gaussian noise of standard deviation 0.25, 100 samples), `ms0.5n400+...` (median
over 400 samples), `rs0.25n100s1+...` (noise seed 1). The base must declare its score range:
the score is normalised to [0,1] by it (and clipped there), which is what the bounds assume.

- `rs`: g(x) = E[f(x + N(0, sigma^2 I))], f the normalised score. For f with values in [0,1],
  Phi^-1(g) is 1/sigma-Lipschitz (Salman et al. 2019, Levine et al. 2020), so for every
  ||delta||_2 <= r: Phi(Phi^-1(p_low) - r/sigma) <= g(x + delta) <= Phi(Phi^-1(p_high) + r/sigma),
  with [p_low, p_high] a Hoeffding interval of the Monte Carlo mean at confidence 1 - ALPHA.
- `ms`: h(x) = median of f(x + N(0, sigma^2 I)). Percentile smoothing (Chiang et al. 2020):
  h_{p-}(x) <= h(x + delta) <= h_{p+}(x) with p+- = Phi(+-r/sigma); each side is bounded by an
  order statistic of the samples chosen with the binomial distribution at confidence
  1 - ALPHA/2. Where the needed order statistic does not exist (too few samples for r/sigma),
  that image abstains: its bounds are NaN, no number is invented.

Each image's noise comes from its own generator, seeded by the model's seed and the image's
bytes: the smoothed score of an image is a function of the image (the same in any batch, any
run on one device type), and clean and attacked images get independent draws. The input plus
noise is clipped to [0,1] before the base sees it (f composed with the clip is still a
function of x + noise with values in [0,1], so the bounds hold for it).

An attack on a smoothed model is an attack on a random function: whenever an input gradient is
taken, the score is the mean over `EOT_SAMPLES` draws from the global RNG (the attacks seed it),
i.e. the attacker follows the Expectation-over-Transformation gradient of E[f(x + noise)] (for
`ms` too: the mean is the smooth surrogate of the median), with a straight-through clip of the
normalised score so a base that leaves its range still shows the attacker the way.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from scipy import stats
from torch import nn

from benchmark.errors import ConfigError
from benchmark.models.base import IQAModel

METHODS = {"rs": "randomized (Gaussian mean) smoothing", "ms": "median smoothing"}
DEFAULT_SAMPLES = 100
ALPHA = 0.001  # the certificate holds with probability >= 1 - ALPHA per image
EOT_SAMPLES = 8
CHUNK = 32  # noisy copies of one image per base call (fixed: it is part of the noise stream)
_SPEC = re.compile(r"^(rs|ms)(\d+(?:\.\d+)?)(?:n(\d+))?(?:s(\d+))?\+(.+)$")


@dataclass(frozen=True)
class SmoothingSpec:
    method: str
    sigma: float
    n: int
    seed: int
    base: str


def parse_smoothed(name: str) -> SmoothingSpec | None:
    """`rs0.25n200+cnniqa-builtin` -> SmoothingSpec("rs", 0.25, 200, 0, "cnniqa-builtin")."""
    m = _SPEC.match(name)
    if m is None:
        return None
    n = int(m.group(3)) if m.group(3) is not None else DEFAULT_SAMPLES
    seed = int(m.group(4)) if m.group(4) is not None else 0
    return SmoothingSpec(m.group(1), float(m.group(2)), n, seed, m.group(5))


def _image_seed(seed: int, image: torch.Tensor) -> int:
    digest = hashlib.sha256(seed.to_bytes(8, "little", signed=True))
    digest.update(image.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return int.from_bytes(digest.digest()[:8], "little") & ((1 << 63) - 1)


class SmoothedNet(nn.Module):
    """The smoothed score of `base` in the base's own units (normalised internally)."""

    def __init__(
        self, base: IQAModel, method: str, sigma: float, n: int, seed: int = 0,
        eot: int = EOT_SAMPLES,
    ) -> None:  # fmt: skip
        super().__init__()
        if method not in METHODS:
            raise ConfigError(
                f"smoothing method must be one of {', '.join(METHODS)}, got {method!r}"
            )
        if not 0 < sigma <= 4:
            raise ConfigError(f"smoothing sigma must be in (0, 4], got {sigma}")
        if n < 1:
            raise ConfigError(f"smoothing needs at least one noise sample, got n={n}")
        if base.info.score_range is None:
            raise ConfigError(
                f"{base.name} declares no score range: its score cannot be normalised to [0,1], "
                "so smoothing cannot certify it"
            )
        self.base = base
        self.method, self.sigma, self.n, self.seed, self.eot = method, float(sigma), n, seed, eot
        self.lo, self.hi = (float(v) for v in base.info.score_range)

    def _normalised(self, s: torch.Tensor) -> torch.Tensor:
        return (s - self.lo) / (self.hi - self.lo)

    def to_raw(self, p: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        """A value of the normalised smoothed score, in the base's units."""
        return self.lo + (self.hi - self.lo) * p

    def samples(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        """(N, n) normalised scores of the noisy copies of each image, clipped to [0,1]."""
        out = torch.empty(x.shape[0], self.n, dtype=torch.float64)
        with torch.no_grad():
            for i in range(x.shape[0]):
                gen = torch.Generator(device=x.device).manual_seed(_image_seed(self.seed, x[i]))
                for start in range(0, self.n, CHUNK):
                    k = min(CHUNK, self.n - start)
                    noise = torch.randn(
                        (k, *x.shape[1:]), generator=gen, device=x.device, dtype=x.dtype
                    )
                    xi = (x[i : i + 1] + self.sigma * noise).clamp(0, 1)
                    r = None if ref is None else ref[i : i + 1].expand(k, *ref.shape[1:])
                    s = self._normalised(self.base.score(xi, r)).clamp(0, 1)
                    out[i, start : start + k] = s.double().cpu()
        return out

    def estimate(self, samples: torch.Tensor) -> torch.Tensor:
        """The smoothed value in [0,1]: the sample mean (rs) or the lower sample median (ms)."""
        if self.method == "rs":
            return samples.mean(dim=1)
        return samples.median(dim=1).values

    def forward(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        if x.requires_grad and torch.is_grad_enabled():
            draws = []
            for _ in range(self.eot):
                noisy = (x + self.sigma * torch.randn_like(x)).clamp(0, 1)
                p = self._normalised(self.base.score(noisy, ref))
                draws.append(p + (p.clamp(0, 1) - p).detach())  # straight-through clip
            return self.to_raw(torch.stack(draws).mean(dim=0))
        p = self.estimate(self.samples(x, ref)).to(device=x.device, dtype=x.dtype)
        return self.to_raw(p)


def smoother_of(model: IQAModel) -> SmoothedNet | None:
    """The smoothing wrapper when it is the model's outermost layer (only then is the model's
    score the smoothed score the certificate is about)."""
    return model.net if isinstance(model.net, SmoothedNet) else None


def smoothed_model(name: str, base: IQAModel) -> IQAModel:
    spec = parse_smoothed(name)
    if spec is None:
        raise ConfigError(f"{name!r} is not a smoothing name (rs<sigma>+<model>, ms<sigma>+...)")
    net = SmoothedNet(base, spec.method, spec.sigma, spec.n, spec.seed)
    info = replace(
        base.info,
        name=name,
        source="defense",
        base=base.name,
        description=f"{METHODS[spec.method]} (sigma {spec.sigma:g}, {spec.n} samples) of {base.name}",
        extra={
            **base.info.extra,
            "smoothing": {
                "method": spec.method,
                "sigma": spec.sigma,
                "n_samples": spec.n,
                "seed": spec.seed,
                "alpha": ALPHA,
            },
            "bpda": False,
            "attacker_backward": "exact, straight-through clip of the normalised score",
            "eot_samples": EOT_SAMPLES,
        },
    )
    return IQAModel(net, info)


# -- the certificates (normalised units, [0,1]) ----------------------------------------------


@dataclass(frozen=True)
class Interval:
    """Per image: the certified [lower, upper] of the smoothed score (NaN where abstained)."""

    lower: np.ndarray
    upper: np.ndarray

    @property
    def abstain(self) -> np.ndarray:
        return ~(np.isfinite(self.lower) & np.isfinite(self.upper))


def hoeffding_margin(n: int, alpha: float = ALPHA) -> float:
    """Half-width of a two-sided 1 - alpha Hoeffding interval for a mean of n values in [0,1]."""
    return math.sqrt(math.log(2.0 / alpha) / (2.0 * n))


def rs_interval(samples: np.ndarray, sigma: float, radius: float, alpha: float = ALPHA) -> Interval:
    """Bounds on the Gaussian-mean smoothed score g(x + delta), ||delta||_2 <= radius, from the
    (N, n) samples at x: Phi(Phi^-1(p_low) - r/sigma), Phi(Phi^-1(p_high) + r/sigma)."""
    samples = np.asarray(samples, dtype=np.float64)
    margin = hoeffding_margin(samples.shape[1], alpha)
    p = samples.mean(axis=1)  # NaN where the base gave a NaN: that image abstains
    with np.errstate(invalid="ignore"):
        p_low, p_high = np.clip(p - margin, 0.0, 1.0), np.clip(p + margin, 0.0, 1.0)
    shift = radius / sigma
    return Interval(
        stats.norm.cdf(stats.norm.ppf(p_low) - shift),
        stats.norm.cdf(stats.norm.ppf(p_high) + shift),
    )


def order_statistics(n: int, sigma: float, radius: float, alpha: float = ALPHA) -> tuple[int, int]:
    """(k_low, k_high), 1-based ranks of the sorted samples that bound the median smoothed
    score at radius r with confidence 1 - alpha/2 each; 0 / n + 1 where no rank suffices.

    X_(k) <= h_{p-}(x) with probability P(Binom(n, p-) >= k): the largest k with that >= 1 -
    alpha/2. X_(k) >= h_{p+}(x) with probability P(Binom(n, p+) <= k - 1): the smallest such k.
    """
    p_minus, p_plus = stats.norm.cdf(-radius / sigma), stats.norm.cdf(radius / sigma)
    ks = np.arange(1, n + 1)
    ok_low = stats.binom.sf(ks - 1, n, p_minus) >= 1 - alpha / 2
    ok_high = stats.binom.cdf(ks - 1, n, p_plus) >= 1 - alpha / 2
    k_low = int(ks[ok_low].max()) if ok_low.any() else 0
    k_high = int(ks[ok_high].min()) if ok_high.any() else n + 1
    return k_low, k_high


def ms_interval(samples: np.ndarray, sigma: float, radius: float, alpha: float = ALPHA) -> Interval:
    """Bounds on the median smoothed score h(x + delta), ||delta||_2 <= radius (Chiang et al.
    2020): order statistics of the (N, n) samples at x; NaN (abstain) where none exists."""
    samples = np.asarray(samples, dtype=np.float64)
    n = samples.shape[1]
    k_low, k_high = order_statistics(n, sigma, radius, alpha)
    ordered = np.sort(samples, axis=1)  # NaN sorts last; an image with a NaN abstains
    bad = ~np.isfinite(samples).all(axis=1)
    nan = np.full(samples.shape[0], np.nan)
    lower = ordered[:, k_low - 1].copy() if k_low >= 1 else nan.copy()
    upper = ordered[:, k_high - 1].copy() if k_high <= n else nan.copy()
    lower[bad] = np.nan
    upper[bad] = np.nan
    return Interval(lower, upper)


INTERVALS = {"rs": rs_interval, "ms": ms_interval}


def certify(
    samples: np.ndarray, method: str, sigma: float, radius: float, alpha: float = ALPHA
) -> Interval:
    """The certified interval (normalised units) of each image at one L2 radius."""
    if radius < 0 or not math.isfinite(radius):
        raise ConfigError(f"a certified radius must be finite and >= 0, got {radius}")
    return INTERVALS[method](samples, sigma, radius, alpha)


def l2_radius(eps: float, norm: str, shape: Sequence[int]) -> float:
    """The L2 radius of a ball that contains the threat on a (C, H, W) image: eps itself for
    L2, eps * sqrt(C*H*W) for an L_inf ball, sqrt(eps * C) for eps changed pixels (L0: each
    of a pixel's C values moves by at most 1 in [0,1] images)."""
    if norm == "l2":
        return float(eps)
    if norm == "linf":
        return float(eps) * math.sqrt(math.prod(shape))
    if norm == "l0":
        return math.sqrt(float(eps) * shape[0])
    raise ConfigError(f"no L2 radius for the {norm!r} threat model")
