"""The Ray executor gives the same stored numbers as the local one, cell by cell."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmark.runner import RunConfig, run
from benchmark.store import ResultStore

ray = pytest.importorskip("ray", reason="Ray is an extra: pip install -e '.[ray]'")


def make_kadid(root: Path) -> Path:
    rng = np.random.default_rng(2)
    (root / "images").mkdir(parents=True)
    lines = ["dist_img,ref_img,dmos,var"]
    for r in (1, 2):
        ref = rng.uniform(40, 215, (32, 32, 3))
        Image.fromarray(ref.astype(np.uint8)).save(root / "images" / f"I{r:02d}.png")
        for d in (1, 2):
            noisy = np.clip(ref + rng.normal(0, 10 * d, ref.shape), 0, 255)
            Image.fromarray(noisy.astype(np.uint8)).save(
                root / "images" / f"I{r:02d}_{d:02d}_01.png"
            )
            lines.append(f"I{r:02d}_{d:02d}_01.png,I{r:02d}.png,{4 - d + 0.1 * r:.2f},0.4")
    (root / "dmos.csv").write_text("\n".join(lines) + "\n")
    return root


def test_ray_equals_local(tmp_path: Path):
    data = make_kadid(tmp_path / "kadid")
    cfg = RunConfig(
        models=("ssim", "gmsd", "piqe"),
        attacks=("ifgsm", "pgd"),
        dataset="kadid10k",
        split="all",
        data_root=str(data),
        params={"steps": 2},
        directions=("up", "down"),
        batch_size=2,
    )
    local, remote = ResultStore(tmp_path / "local.h5"), ResultStore(tmp_path / "ray.h5")
    run(cfg, local, progress=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        report = run(cfg, remote, progress=False, executor="ray")
    finally:
        ray.shutdown()
    assert len(report.computed) == 12 and not report.failed
    a = {c.key: c for c in local.read_cells()}
    b = {c.key: c for c in remote.read_cells()}
    assert a.keys() == b.keys()
    for key, cell in a.items():
        other = b[key]
        assert (cell.status, cell.gradient) == (other.status, other.gradient), key
        for name in ("clean", "attacked", "linf", "l2", "psnr", "ssim"):
            np.testing.assert_array_equal(
                getattr(cell, name), getattr(other, name), err_msg=f"{key} {name}"
            )
