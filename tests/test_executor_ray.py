"""The Ray executor gives the same stored numbers as the local one, cell by cell."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmark.engine.executors import RayExecutor
from benchmark.engine.runner import RunConfig, run
from benchmark.store.hdf5 import ResultStore

ray = pytest.importorskip("ray", reason="Ray is an extra: pip install -e '.[ray]'")


def test_ray_equals_local(tmp_path: Path, make_kadid):
    data = make_kadid(tmp_path / "kadid", n_refs=2, size=(32, 32))
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
        report = run(cfg, remote, progress=False, executor=RayExecutor())
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
