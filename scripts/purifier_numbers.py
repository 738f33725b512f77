"""Print the numbers that tests/test_defenses_purifiers.py asserts bounds on (its docstrings
quote them): how close the attacker's JPEG stand-in is to the real codec, and each
purifier's 5-step I-FGSM 4/255 gain on resnet-small-builtin next to the base's.

    python scripts/purifier_numbers.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from kornia.enhance import jpeg_codec_differentiable

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_defenses_purifiers import _ifgsm_gain, _photos, _pil_jpeg, _psnr  # noqa: E402

from benchmark.models.registry import create_model  # noqa: E402


def main() -> None:
    for h, w in ((96, 96), (90, 130)):
        x = _photos(max(h, w))[:, :, :h, :w]
        real = _pil_jpeg(x, 50)
        approx = jpeg_codec_differentiable(x, torch.tensor([50.0]))
        print(
            f"{h}x{w}: PSNR(stand-in, real JPEG) {_psnr(approx, real):.1f} dB, "
            f"PSNR(real JPEG, input) {_psnr(real, x):.1f} dB"
        )
    x = _photos(96)
    print(f"resnet-small-builtin: {_ifgsm_gain(create_model('resnet-small-builtin'), x):.3f}")
    for spec in ("jpeg50", "bits4", "median3", "blur1", "resize1.15"):
        name = f"{spec}+resnet-small-builtin"
        print(f"{name}: {_ifgsm_gain(create_model(name), x):.3f}")


if __name__ == "__main__":
    main()
