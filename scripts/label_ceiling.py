"""How learnable is the built-in pseudo-MOS? Test SROCC of predictors that know the distortion.

Why: the zoo's bar (issue 4) is a test SROCC against the pseudo-MOS. If even a predictor
that knows each image's distortion type and level could not rank the test split, the bar
would measure the labels, not the models (`benchmark.datasets.builtin.label_ceiling`).

Usage: python scripts/label_ceiling.py   (builds the built-in dataset on first use)
"""

from __future__ import annotations

from benchmark.datasets.builtin import build_builtin, label_ceiling

NAMES = {
    "distortion_and_level": "mean train MOS of its (distortion, level)",
    "distortion": "mean train MOS of its distortion type",
    "level": "its level alone (0 = pristine ... 5)",
}


def main() -> None:
    for key, value in label_ceiling(build_builtin()).items():
        print(f"SROCC on builtin/test of {NAMES[key]}: {value:.3f}")


if __name__ == "__main__":
    main()
