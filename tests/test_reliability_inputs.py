"""Untrusted inputs: odd file names, unsafe checkpoints, misbehaving plugins, busy stores."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmark.cli import main
from benchmark.datasets.registry import create_dataset
from benchmark.errors import CheckpointError
from benchmark.models.zoo import load_state
from benchmark.store.hdf5 import ResultStore


def _png(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(path, format="PNG")


def test_non_utf8_file_name_is_loaded_and_stored(tmp_path: Path, caplog):
    folder = tmp_path / "imgs"
    folder.mkdir()
    _png(folder / "good.png", 0)
    raw = os.path.join(os.fsencode(folder), b"bad\xff.png")
    _png(Path(os.fsdecode(raw)), 1)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    ds = create_dataset(f"folder:{folder}")
    loaded = [s.image_id for s in ds]
    assert "good.png" in loaded and "bad\\xff.png" in loaded
    assert list(ds.skipped) == ["broken.png"] and "broken.png" in ds.skipped["broken.png"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="benchmark"):
        assert [s.image_id for s in ds] == loaded  # a second pass: same images, no new warning
    assert not caplog.records


class _Bomb:
    def __reduce__(self):
        return (os.system, ("touch /tmp/benchmark-pickle-bomb-ran",))


def test_pickle_checkpoint_is_refused_without_running_it(tmp_path: Path):
    marker = Path("/tmp/benchmark-pickle-bomb-ran")
    marker.unlink(missing_ok=True)
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(pickle.dumps({"w": _Bomb()}))
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        load_state(ckpt)
    assert not marker.exists()


PLUGINS = """
import torch

class TwoScores(torch.nn.Module):
    def forward(self, x):
        return torch.cat([x.mean(dim=(1, 2, 3))] * 2)

class NotDifferentiable(torch.nn.Module):
    def forward(self, x):
        return torch.tensor([float(v) for v in x.detach().mean(dim=(1, 2, 3))])
"""


def test_misbehaving_plugins_are_reported_per_cell(tmp_path: Path, caplog):
    plugin = tmp_path / "p.py"
    plugin.write_text(PLUGINS)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        _png(folder / f"{i}.png", i)
    out = tmp_path / "r.h5"
    models = f"{plugin}:TwoScores,{plugin}:NotDifferentiable,ssim"
    argv = [
        "-q",
        "run",
        "--models",
        models,
        "--attacks",
        "fgsm,ifgsm",
        "--dataset",
        f"folder:{folder}",
    ]
    with caplog.at_level("WARNING", logger="benchmark"):
        assert main([*argv, "--out", str(out)]) == 1
    # an FR model without references is not applicable: nothing to probe, nothing to warn
    assert not [r for r in caplog.records if "ssim: batch-size probe failed" in r.getMessage()]
    cells = {
        (c.key.model.rsplit(":", 1)[-1], c.key.attack): c for c in ResultStore(out).read_cells()
    }
    assert len(cells) == 6  # every cell stored, with its outcome
    assert cells[("TwoScores", "fgsm")].status == "failed"
    assert "returned 6 scores for a batch of 3" in cells[("TwoScores", "fgsm")].reason
    nd = cells[("NotDifferentiable", "ifgsm")]
    assert nd.status == "not_applicable" and nd.gradient == "none"
    assert np.isfinite(nd.clean).all()
    fr = cells[("ssim", "fgsm")]  # a full-reference model on a dataset without references
    assert fr.status == "not_applicable" and "no reference images" in fr.reason
    html = (tmp_path / "leaderboard.html").read_text()
    assert "TwoScores" in html and "no reference images" in html


def test_second_run_on_a_busy_results_file_is_refused(tmp_path: Path, capsys):
    out = tmp_path / "r.h5"
    _png(tmp_path / "a.png", 0)
    argv = ["run", "--models", "piqe", "--attacks", "fgsm", "--dataset", f"folder:{tmp_path}"]
    with ResultStore(out).writer():
        code = main([*argv, "--out", str(out)])
    assert code == 1
    assert "in use by another run" in capsys.readouterr().err
