"""Shared fixtures: tiny datasets in the real release layouts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def build_kadid(
    root: Path, n_refs: int = 3, size: tuple[int, int] = (48, 40), levels: int = 2
) -> Path:
    """A KADID-10k layout (dmos.csv + images/): textured references, noisier distortions
    with lower MOS."""
    rng = np.random.default_rng(0)
    lines = ["dist_img,ref_img,dmos,var"]
    (root / "images").mkdir(parents=True)
    for r in range(1, n_refs + 1):
        ref = rng.uniform(40, 215, (size[1], size[0], 3))
        Image.fromarray(ref.astype(np.uint8)).save(root / "images" / f"I{r:02d}.png")
        for d in range(1, levels + 1):
            noisy = np.clip(ref + rng.normal(0, 12 * d, ref.shape), 0, 255)
            name = f"I{r:02d}_{d:02d}_01.png"
            Image.fromarray(noisy.astype(np.uint8)).save(root / "images" / name)
            lines.append(f"{name},I{r:02d}.png,{4.5 - 1.1 * d + 0.05 * r:.2f},0.4")
    (root / "dmos.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture()
def make_kadid() -> Callable[..., Path]:
    return build_kadid


# One photograph per split (astronaut: train, rocket: val, chelsea: test), two distortions.
TINY_BUILTIN = dict(
    sources=("astronaut", "rocket", "chelsea"),
    crops_per_source=1,
    levels=(1, 5),
    distortions=("white_noise", "gaussian_blur"),
)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny builtin dataset (generated once per session) for training tests."""
    from benchmark.datasets.builtin import BuildConfig, generate_builtin

    out = tmp_path_factory.mktemp("tiny") / "ds"
    return generate_builtin(out, BuildConfig(**TINY_BUILTIN), workers=0, progress=False)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: intra-op threads only add sync cost on the shared 2-core box."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
