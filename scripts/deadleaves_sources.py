"""Do procedural training photographs help the zoo generalise? A dead-leaves experiment.

Why: the zoo's bar (issue 4) is missed because 15 training photographs are too little
content to generalise from, and no installed package ships more. Dead-leaves images
(occluding disks, ellipses and rectangles with power-law sizes, textured fills and smooth
illumination) are the classic procedural stand-in for natural-image statistics. This script
renders `--sources` of them, distorts and labels them exactly as the built-in dataset does
(`benchmark.datasets.builtin.build_source`: same 16 distortions x 5 levels, same pseudo-MOS),
and writes a cache folder whose index is the built-in one plus these rows, all in the train
split. Validation and test (the real photographs) are untouched, so any train command given
`--data-root OUT` is evaluated on the usual test split.

Usage (60 sources: about 16 CPU minutes of labelling):

    python scripts/deadleaves_sources.py --sources 60 --out /tmp/deadleaves [--workers 2]
    python -m benchmark train --arch cnniqa --dataset builtin --data-root /tmp/deadleaves ...
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from augmented_cache import write_augmented_cache
from PIL import Image

from benchmark.datasets import builtin

SIZE = 768  # rendered size; Lanczos-halved afterwards so edges are anti-aliased like photos


def photo_colours(rng: np.random.Generator, per_source: int = 400) -> np.ndarray:
    """Pixel colours of the colour training photographs: a natural palette to paint with."""
    cols = []
    for src in builtin.find_sources():
        if builtin.split_of(src.group) != "train" or builtin.is_grey_file(src.path):
            continue
        pixels = builtin.load_source(src, 96).reshape(-1, 3)
        cols.append(pixels[rng.choice(len(pixels), per_source)])
    return np.concatenate(cols).astype(np.float64)


def noise_1f(rng: np.random.Generator, h: int, w: int, alpha: float) -> np.ndarray:
    """Unit-variance noise with a 1/f^alpha amplitude spectrum."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fx**2 + fy**2)
    f[0, 0] = 1.0
    spec = (rng.normal(size=f.shape) + 1j * rng.normal(size=f.shape)) / f**alpha
    spec[0, 0] = 0
    n = np.fft.irfft2(spec, s=(h, w))
    return n / (n.std() + 1e-12)


def _shape_mask(rng: np.random.Generator, ys: np.ndarray, xs: np.ndarray, r: float) -> np.ndarray:
    kind = rng.integers(3)
    if kind == 0:  # disk
        return ys**2 + xs**2 <= r * r
    t = rng.uniform(0, np.pi)
    u = xs * np.cos(t) + ys * np.sin(t)
    v = -xs * np.sin(t) + ys * np.cos(t)
    if kind == 1:  # ellipse
        return (u / r) ** 2 + (v / (r * rng.uniform(0.3, 1))) ** 2 <= 1
    return (np.abs(u) <= r) & (np.abs(v) <= r * rng.uniform(0.2, 1))  # rectangle


def _texture(
    rng: np.random.Generator, ys: np.ndarray, xs: np.ndarray, centre: tuple[float, float], r: float
) -> np.ndarray:
    """Fill of one leaf over its box; ys, xs are absolute pixel coordinates."""
    kind = rng.integers(4)
    if kind == 0:
        return np.zeros(ys.shape)
    if kind == 1:
        return noise_1f(rng, *ys.shape, rng.uniform(0.8, 1.6)) * rng.uniform(5, 40)
    if kind == 2:  # grating
        t = rng.uniform(0, np.pi)
        f = rng.uniform(0.03, 0.4)
        along = xs * np.cos(t) + ys * np.sin(t)
        return np.sin(2 * np.pi * f * along) * rng.uniform(5, 40)
    t = rng.uniform(0, 2 * np.pi)  # linear shading across the leaf
    along = (xs - centre[1]) * np.cos(t) + (ys - centre[0]) * np.sin(t)
    return along / max(r, 1.0) * rng.uniform(5, 50)


def dead_leaves(rng: np.random.Generator, colours: np.ndarray) -> np.ndarray:
    """One RGB uint8 image of SIZE/2 px: leaves painted front to back until the canvas is full."""
    img = np.zeros((SIZE, SIZE, 3))
    filled = np.zeros((SIZE, SIZE), bool)
    rmin, rmax = rng.uniform(6, 30), SIZE / 2
    palette = colours[rng.choice(len(colours), int(rng.integers(8, 60)))]
    for _ in range(20000):
        if filled.mean() >= 0.999:
            break
        u = rng.random()
        r = 1 / np.sqrt(u / rmin**2 + (1 - u) / rmax**2)  # density ~ r^-3: scale invariance
        cy, cx = rng.uniform(-r, SIZE + r, 2)
        y0, y1 = int(max(0, cy - r)), int(min(SIZE, cy + r + 1))
        x0, x1 = int(max(0, cx - r)), int(min(SIZE, cx + r + 1))
        if y0 >= y1 or x0 >= x1:
            continue
        ys, xs = np.mgrid[y0:y1, x0:x1]
        mask = _shape_mask(rng, ys - cy, xs - cx, r) & ~filled[y0:y1, x0:x1]
        if not mask.any():
            continue
        colour = palette[rng.integers(len(palette))]
        tex = _texture(rng, ys, xs, (cy, cx), r)
        patch = colour + tex[..., None] * rng.uniform(0.6, 1.0, 3)
        img[y0:y1, x0:x1][mask] = patch[mask]
        filled[y0:y1, x0:x1] |= mask
    img = np.clip(img * (1 + 0.25 * noise_1f(rng, SIZE, SIZE, 2.5))[..., None], 0, 255)
    im = Image.fromarray(img.round().astype(np.uint8))
    return np.asarray(im.resize((SIZE // 2, SIZE // 2), Image.Resampling.LANCZOS))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sources", type=int, default=60)
    ap.add_argument("--out", type=Path, required=True, help="cache folder for --data-root")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    colours = photo_colours(np.random.default_rng(12345 + args.seed))
    sources = []
    (args.out / "sources").mkdir(parents=True, exist_ok=True)
    for i in range(args.sources):
        name = f"synth{i:03d}"  # the name seeds its distortions' noise (build_source)
        path = args.out / "sources" / f"{name}.png"
        if not path.exists():
            rng = np.random.default_rng(1000 + 100_000 * args.seed + i)
            Image.fromarray(dead_leaves(rng, colours)).save(path)
        sources.append((builtin.Source(name, name, path, "procedural"), builtin.DEFAULT_CONFIG))
    n = write_augmented_cache(args.out, sources, args.workers, "dead-leaves sources")
    print(f"{n} dead-leaves images added to the train split: --data-root {args.out}")


if __name__ == "__main__":
    main()
