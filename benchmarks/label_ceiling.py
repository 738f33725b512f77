"""How learnable is the built-in pseudo-MOS? Test SROCC of predictors that know the distortion.

Why: the zoo's bar (issue 4) is a test SROCC against the pseudo-MOS. If even a predictor
that knows each image's distortion type and level could not rank the test split, the bar
would measure the labels, not the models. These "oracles" score each test image by the
mean train-split MOS of its (type, level), of its type, or by its level alone; a
no-reference model has to infer type and level from the pixels of unseen photographs.

Usage: python benchmarks/label_ceiling.py   (builds the built-in dataset on first use)
"""

from __future__ import annotations

import pandas as pd
from scipy.stats import spearmanr

from benchmark.datasets.builtin import build_builtin


def main() -> None:
    index = pd.read_csv(build_builtin() / "index.csv")
    train, test = index[index.split == "train"], index[index.split == "test"]
    by_type_level = train.groupby(["distortion", "level"]).mos.mean()
    by_type = train.groupby("distortion").mos.mean()
    oracles = {
        "mean train MOS of its (distortion, level)": [
            by_type_level[(d, lv)] for d, lv in zip(test.distortion, test.level, strict=True)
        ],
        "mean train MOS of its distortion type": test.distortion.map(by_type),
        "its level alone (0 = pristine ... 5)": -test.level,
    }
    print(f"builtin test split: {len(test)} images, {test.source.nunique()} photographs")
    for name, pred in oracles.items():
        print(f"  SROCC of {name}: {spearmanr(pred, test.mos)[0]:.3f}")


if __name__ == "__main__":
    main()
