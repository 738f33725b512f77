"""scripts/gpu_check.py: the comparison flags what differs, CUDA asked for where there is none
is a clear error, and a CPU-against-CPU run passes end to end (quick mode, tiny dataset)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def frame(
    attack: str = "ifgsm",
    clean: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8),
    gain: float = 0.1,
    eps: float = 8 / 255,
    linf: float | None = None,
    status: str = "done",
) -> pd.DataFrame:
    """One cell in `benchmark.load_results`'s columns (those the comparison reads)."""
    n = len(clean)
    q = np.array(clean)
    return pd.DataFrame(
        {
            "model": "m",
            "dataset": "d",
            "attack": attack,
            "eps": eps,
            "direction": "up",
            "status": status,
            "image_id": [f"i{k}" for k in range(n)],
            "quality_clean": q,
            "quality_attacked": q + gain if status == "done" else np.nan,
            "linf": np.full(n, eps if linf is None else linf),
        }
    )


def test_equal_results_pass(gpu_check) -> None:
    a = pd.concat([frame(), frame("square", gain=0.0)])
    (c1, c2) = gpu_check.compare(a, a.copy())
    assert c1.ok and c2.ok and c1.clean_diff == 0.0 and c2.gain_a == 0.0


def test_a_gain_mismatch_beyond_tolerance_fails(gpu_check) -> None:
    (check,) = gpu_check.compare(frame(gain=0.10), frame(gain=0.13))
    assert not check.ok and check.problems[0].startswith("|dG| 0.0300 > 0.0200")
    (check,) = gpu_check.compare(frame(gain=0.50), frame(gain=0.54))  # 8% of 0.54: within
    assert check.ok and check.gain_tol == pytest.approx(0.054)


def test_clean_score_budget_status_and_missing_cells_fail(gpu_check) -> None:
    base = frame()
    (check,) = gpu_check.compare(base, frame(clean=(0.2, 0.4, 0.6, 0.8015)))
    assert not check.ok and "clean |dq| 1.50e-03 > 0.001" in check.problems
    (check,) = gpu_check.compare(base, frame(linf=8 / 255 + 1e-4))
    assert not check.ok and "4 image(s) over budget on B" in check.problems[0]
    (check,) = gpu_check.compare(base, frame(status="not_applicable"))
    assert not check.ok and check.status == "done|not_applicable"
    (check,) = gpu_check.compare(base, frame(status="failed"))
    assert not check.ok and "cell failed on B" in check.problems
    checks = gpu_check.compare(pd.concat([base, frame("apgd")]), base)
    assert [c.ok for c in checks] == [False, True] and checks[0].problems == ["missing on B"]
    # not applicable on both sides (a model without gradient) is agreement
    (check,) = gpu_check.compare(frame(status="not_applicable"), frame(status="not_applicable"))
    assert check.ok


def test_cuda_asked_for_without_cuda_is_a_clear_error(gpu_check, monkeypatch, capsys) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--device", "cuda", "--no-speed"]) == 2
    err = capsys.readouterr().err
    assert "--device cuda asked for, but torch sees no CUDA device here" in err
    assert gpu_check.main(["--device", "cpu", "--reference-device", "cuda:0"]) == 2
    assert gpu_check.main(["--device", "tpu"]) == 2
    assert "cpu or cuda" in capsys.readouterr().err


def test_unknown_model_names_stop_before_any_run(gpu_check, capsys) -> None:
    argv = ["--device", "cpu", "--reference-device", "cpu", "--models", "ssmi", "--no-speed"]
    assert gpu_check.main(argv) == 2
    assert "did you mean 'ssim'" in capsys.readouterr().err


@pytest.mark.slow
def test_cpu_against_cpu_passes(tmp_path: Path, make_kadid: Callable[..., Path]) -> None:
    """The whole script in quick mode, both sides on the CPU: every cell PASS, exit 0, and
    the speed tables printed. A tiny KADID layout (64x64 images) keeps it short."""
    data = make_kadid(tmp_path / "kadid", size=(64, 64))
    env = dict(os.environ, BENCHMARK_CACHE=str(tmp_path / "cache"))
    cmd = [sys.executable, str(SCRIPT), "--device", "cpu", "--reference-device", "cpu",
           "--quick", "--dataset", "kadid10k", "--data-root", str(data), "--split", "all"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3000, cwd=ROOT)
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-4000:]
    assert "20 of 20 cells PASS" in out and "GPU CHECK: PASS" in out
    rows = [line for line in out.splitlines() if line.endswith("  PASS")]
    assert len(rows) == 20  # 4 models x 5 attacks
    assert {line.split()[1] for line in rows} == {"ifgsm", "apgd", "square", "uap", "facpa"}
    assert "FAIL" not in out
    assert "runner/floor:" in out and "cached inference" in out and "norm error" in out
