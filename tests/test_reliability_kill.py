"""kill -9 at random moments, store writes included, then resume: nothing lost, nothing changed."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from benchmark.store.cell import PER_IMAGE_FIELDS, CellKey, CellResult
from benchmark.store.hdf5 import ResultStore

pytestmark = pytest.mark.slow

KILLS = 20


def command(data: Path, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "benchmark", "-q", "run",
        "--models", "ssim,psnr,gmsd", "--attacks", "ifgsm,pgd",
        "--eps", "2/255,4/255", "--direction", "both",
        "--dataset", "kadid10k", "--data-root", str(data), "--split", "all",
        "--param", "steps=2", "--batch-size", "2", "--out", str(out),
    ]  # fmt: skip


def snapshot(path: Path) -> dict:
    return {
        c.key: (c.status, c.clean.tobytes(), c.attacked.tobytes(), c.linf.tobytes())
        for c in ResultStore(path).read_cells()
    }


def test_kill_nine_then_resume_loses_and_changes_nothing(tmp_path: Path, make_kadid):
    data = make_kadid(tmp_path / "kadid", n_refs=2, size=(40, 32))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    reference = tmp_path / "reference.h5"
    subprocess.run(command(data, reference), check=True, env=env, capture_output=True, timeout=600)
    expected = snapshot(reference)
    assert len(expected) == 3 * 2 * 2 * 2

    out = tmp_path / "killed" / "r.h5"
    rng = random.Random(0)
    kills = 0
    seen: dict = {}
    while kills < KILLS:
        proc = subprocess.Popen(
            command(data, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            proc.wait(timeout=rng.uniform(2.0, 10.0))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
        else:
            assert proc.returncode == 0
            out.unlink()  # finished before the kill: start over so every kill lands mid-run
            seen = {}
            continue
        if out.exists() or ResultStore(out).journal.exists():  # opens after every kill ...
            now = snapshot(out)
            for key, value in seen.items():  # ... and every cell stored before is unchanged
                assert now[key] == value
            seen = now
    subprocess.run(command(data, out), check=True, env=env, capture_output=True, timeout=600)
    final = snapshot(out)
    assert final.keys() == expected.keys()  # no cell lost, none duplicated
    for key, value in expected.items():
        assert final[key] == value, key  # bit-identical to an uninterrupted run


def _write_forever(path: str) -> None:
    """Journal writes in a held writer (as a run does), a compaction every 4 cells, and a
    single unlocked write (which compacts at once) in between: a kill lands in each."""
    store = ResultStore(path)
    i = 0
    while True:
        with store.writer():
            for _ in range(4):
                store.write_cell(big_cell(f"model{i % 7}", i), f"hash{i}")
                i += 1
        store.write_cell(big_cell(f"model{i % 7}", i), f"hash{i}")
        i += 1


def big_cell(model: str, seed: int) -> CellResult:
    n = 20_000  # big enough that most of the child's time is spent inside write_cell
    rng = np.random.default_rng(seed)
    arrays = {k: rng.uniform(size=n) for k in PER_IMAGE_FIELDS}
    return CellResult(
        key=CellKey(model, "d", "a", 4 / 255, "up"),
        status="done",
        image_id=np.array([f"i{j}" for j in range(n)], dtype=object),
        model_info={"lower_better": False},
        attack_config={},
        meta={"seed": seed},
        **arrays,
    )


def test_kill_nine_during_store_writes_never_corrupts(tmp_path: Path):
    path = tmp_path / "r.h5"
    rng = random.Random(1)
    ctx = multiprocessing.get_context("fork")
    previous: dict = {}
    for _ in range(KILLS):
        child = ctx.Process(target=_write_forever, args=(str(path),))
        child.start()
        time.sleep(rng.uniform(0.3, 1.5))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        cells = {c.key: c.meta["seed"] for c in ResultStore(path).read_cells()}  # opens cleanly
        assert previous.keys() <= cells.keys()  # a finished cell is never lost
        previous = cells
    assert previous  # the children did write (so kills did land between and inside writes)
