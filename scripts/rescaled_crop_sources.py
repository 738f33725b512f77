"""Do more crops of the training photographs help the zoo generalise? A rescaling experiment.

Why: the zoo's bar (issue 4) is missed because 15 training photographs (30 crops) are too
little content to generalise from. Procedural content did not help
(`deadleaves_sources.py`). This script takes the other cheap source of content: the same
training photographs at other scales. Each is downscaled (Lanczos) to every short side in
`--scales` (the built-in dataset uses 384) and gives `--crops` new 192x192 crops there, at
the most detailed places (`builtin.select_crops`), so one photograph yields crops of other
framings and of finer texture. They are distorted and labelled exactly as the built-in
dataset, all in the train split; validation and test are untouched.

Usage (15 photographs x 3 scales x 2 crops: about 7,000 images):
    python scripts/rescaled_crop_sources.py --out /tmp/rescaled [--scales 320,256,224]
    python -m benchmark train --arch cnniqa --dataset builtin --data-root /tmp/rescaled ...
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from augmented_cache import write_augmented_cache

from benchmark.datasets import builtin


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="cache folder for --data-root")
    ap.add_argument("--scales", default="320,256,224", help="short sides, px (not 384)")
    ap.add_argument("--crops", type=int, default=2, help="crops per photograph and scale")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    base = builtin.DEFAULT_CONFIG
    scales = [int(s) for s in args.scales.split(",")]
    if base.source_short_side in scales or min(scales) < base.crop_size:
        raise SystemExit(
            f"--scales must avoid {base.source_short_side} (the built-in crops) and stay "
            f">= {base.crop_size}"
        )
    sources = []
    for src in builtin.find_sources():
        if builtin.split_of(src.group) != "train":
            continue
        for side in scales:
            config = dataclasses.replace(base, source_short_side=side, crops_per_source=args.crops)
            # a new name: its own image folder and its own distortion noise seeds
            sources.append((dataclasses.replace(src, name=f"{src.name}-s{side}"), config))
    n = write_augmented_cache(args.out, sources, args.workers, "rescaled crops")
    print(f"{n} rescaled-crop images added to the train split: --data-root {args.out}")


if __name__ == "__main__":
    main()
