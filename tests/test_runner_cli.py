"""End to end through the CLI: run, resume, leaderboard, bad input; and the gradient check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.cli import main
from benchmark.engine.cells import check_gradient
from benchmark.models.base import IQAModel, ModelInfo
from benchmark.store.hdf5 import ResultStore

PLUGINS = '''
import torch

class NaNModel(torch.nn.Module):
    """Returns NaN for every image."""
    def forward(self, x):
        return x.mean(dim=(1, 2, 3)) * float("nan")

class Exploding(torch.nn.Module):
    """Raises on every call."""
    def forward(self, x):
        raise RuntimeError("boom")
'''


@pytest.fixture()
def setup(tmp_path: Path, make_kadid) -> dict[str, str]:
    data = make_kadid(tmp_path / "kadid")
    plugin = tmp_path / "plugins.py"
    plugin.write_text(PLUGINS)
    return {
        "data": str(data),
        "plugin": str(plugin),
        "out": str(tmp_path / "res" / "r.h5"),
        "html": str(tmp_path / "res" / "lb.html"),
    }


def run_args(s: dict[str, str], models: str, *extra: str) -> list[str]:
    return [
        "-q",
        "run",
        "--models",
        models,
        "--attacks",
        "ifgsm",
        "--dataset",
        "kadid10k",
        "--data-root",
        s["data"],
        "--split",
        "all",
        "--param",
        "steps=3",
        "--out",
        s["out"],
        "--html",
        s["html"],
        *extra,
    ]


def test_run_stores_cells_resumes_and_renders(setup, capsys):
    assert main(run_args(setup, "ssim,piqe")) == 0
    out = capsys.readouterr().out
    assert "2 cell(s) computed" in out
    cells = {c.key.model: c for c in ResultStore(setup["out"]).read_cells()}
    ssim, piqe = cells["ssim"], cells["piqe"]
    assert ssim.status == "done" and ssim.gradient == "ok" and len(ssim) == 6
    assert (ssim.attacked > ssim.clean).mean() > 0.8  # I-FGSM inflates SSIM
    assert (ssim.linf <= 10 / 255 + 1e-6).all() and (ssim.linf > 0).all()
    assert np.isfinite(ssim.psnr).all() and (ssim.ssim < 1).all()
    assert ssim.meta["versions"]["torch_build"] == torch.__version__ and ssim.meta["seed"] == 0
    assert ssim.attack_config["resolved"]["steps"] == 3
    # each image's source photograph (KADID: its reference) is stored for the intervals
    refs = [str(i).split("_")[0] for i in ssim.image_id]
    assert list(ssim.group) == refs and len(set(refs)) < len(refs)
    assert ssim.summary["ci_unit"] == "photograph" and ssim.summary["n_groups"] == len(set(refs))
    # piqe has no usable input gradient: not applicable, never a zero gain
    assert piqe.status == "not_applicable" and piqe.gradient == "none"
    assert np.isnan(piqe.attacked).all() and np.isfinite(piqe.clean).all()
    html = Path(setup["html"]).read_text()
    assert "ssim" in html and "data:image/png;base64" in html

    before = {k: c.attacked.copy() for k, c in cells.items()}
    assert main(run_args(setup, "ssim,piqe")) == 0
    out = capsys.readouterr().out
    assert "0 cell(s) computed, 2 already stored (nothing recomputed)" in out
    after = {c.key.model: c for c in ResultStore(setup["out"]).read_cells()}
    for k, arr in before.items():
        np.testing.assert_array_equal(after[k].attacked, arr)

    # a changed attack config is recomputed, not served from the store
    args = run_args(setup, "ssim")
    args[args.index("steps=3")] = "steps=2"
    assert main(args) == 0
    assert "1 cell(s) computed" in capsys.readouterr().out
    cells = {c.key.model: c for c in ResultStore(setup["out"]).read_cells()}
    assert cells["ssim"].attack_config["resolved"]["steps"] == 2 and len(cells) == 2

    # the leaderboard re-renders from the stored file alone
    other = str(Path(setup["html"]).with_name("again.html"))
    assert main(["leaderboard", setup["out"], "-o", other, "--bootstrap", "50"]) == 0
    assert "ssim" in Path(other).read_text()


def test_bad_models_fail_per_cell_and_the_rest_is_kept(setup, capsys):
    models = f"ssim,{setup['plugin']}:NaNModel,{setup['plugin']}:Exploding"
    assert main(run_args(setup, models)) == 1  # failures give a non-zero exit
    captured = capsys.readouterr()
    cells = {c.key.model.rsplit(":", 1)[-1]: c for c in ResultStore(setup["out"]).read_cells()}
    assert cells["ssim"].status == "done"
    assert cells["NaNModel"].status == "failed" and "finite" in cells["NaNModel"].reason
    assert cells["Exploding"].status == "failed" and "boom" in cells["Exploding"].reason
    assert "2 failed" in captured.out
    # failed cells are retried on the next run; done ones are not
    assert main(run_args(setup, models)) == 1
    assert "2 cell(s) computed, 1 already stored" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["run", "--models", "ssmi", "--attacks", "ifgsm"], 2, "did you mean 'ssim'"),
        (["run", "--models", "ssim", "--attacks", "ifgsn"], 2, "did you mean 'ifgsm'"),
        (["run", "--models", "ssim", "--attacks", "ifgsm", "--eps", "2"], 2, "(0, 1]"),
        (["run", "--models", "ssim", "--attacks", "ifgsm", "--eps", "0"], 2, "(0, 1]"),
        (["run", "--models", "ssim", "--attacks", "ifgsm", "--dataset", "konik"], 2, "koniq10k"),
        (["run", "--models", "ssim", "--attacks", "ifgsm", "--limit", "0"], 2, "--limit"),
        (["run", "--models", "ssim", "--attacks", "ifgsm", "--param", "stepz=3"], 2, "stepz"),
        (["leaderboard", "/nonexistent/r.h5"], 1, "not found"),
    ],
)
def test_bad_input_is_one_clear_line(argv, code, message, capsys):
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert message in err and err.startswith("error:") and "Traceback" not in err


def test_missing_dataset_says_where_to_put_it(tmp_path, capsys):
    argv = ["run", "--models", "ssim", "--attacks", "ifgsm", "--dataset", "tid2013"]
    argv += ["--data-root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r.h5")]
    assert main(argv) == 1
    assert "mos_with_names.txt" in capsys.readouterr().err


def test_list_commands(capsys):
    assert main(["list", "attacks"]) == 0
    out = capsys.readouterr().out
    assert "ifgsm" in out and "usable" in out
    assert main(["list", "datasets"]) == 0
    out = capsys.readouterr().out
    assert "builtin" in out and "koniq10k" in out


def _model(fn) -> IQAModel:
    return IQAModel(fn, ModelInfo("m", "NR", False, None, "plugin"))


def test_gradient_check_catches_masking():
    x = torch.rand(2, 3, 16, 16)
    ok, _ = check_gradient(_model(lambda t: (t**2).mean(dim=(1, 2, 3))), x, None)
    assert ok
    ok, why = check_gradient(_model(lambda t: t.detach().mean(dim=(1, 2, 3))), x, None)
    assert not ok and "grad_fn" in why
    ok, why = check_gradient(_model(lambda t: torch.round(t).mean(dim=(1, 2, 3))), x, None)
    assert not ok and "zero" in why
    ok, why = check_gradient(_model(lambda t: t.sqrt().mean(dim=(1, 2, 3))), x * 0, None)
    assert not ok and "not finite" in why


def test_trained_attack_runs_once_and_transfer_is_labelled(setup, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("BENCHMARK_CACHE", str(tmp_path / "cache"))
    base = run_args(setup, "gmsd")
    base[base.index("ifgsm")] = "uap"
    base[base.index("steps=3")] = "epochs=1"
    base += ["--param", "size=32", "--param", "train_images=4", "--param", "batch_size=2"]
    assert main(base) == 0
    cell = next(iter(ResultStore(setup["out"]).read_cells()))
    assert cell.status == "done" and cell.meta["attack_runtime"]["artifact_loaded"] is False
    assert (cell.linf <= 10 / 255 + 1e-6).all()
    assert cell.example_delta.shape == (40, 48, 3) and cell.example_delta.dtype == np.uint8
    assert "Learned perturbations" in Path(setup["html"]).read_text()
    assert main([*base, "--force"]) == 0  # the cached artifact is reused, not retrained
    cell = next(iter(ResultStore(setup["out"]).read_cells()))
    assert cell.meta["attack_runtime"]["artifact_loaded"] is True
    capsys.readouterr()

    transfer = run_args(setup, "ssim,psnr", "--attack-source", "gmsd")
    assert main(transfer) == 0
    cells = {
        c.key.model: c for c in ResultStore(setup["out"]).read_cells() if c.key.model != "gmsd"
    }
    assert {c.key.attack for c in cells.values()} == {"ifgsm@gmsd"}
    assert cells["ssim"].meta["attack_source"] == "gmsd" and cells["ssim"].status == "done"
    # crafted on GMSD, the perturbation still changes SSIM's score, within budget
    assert (cells["ssim"].attacked != cells["ssim"].clean).all()
    assert (cells["ssim"].linf <= 10 / 255 + 1e-6).all()


def test_exclude_leaves_models_out(setup, capsys):
    assert main([*run_args(setup, "ssim,piqe"), "--exclude", "piqe"]) == 0
    assert [c.key.model for c in ResultStore(setup["out"]).read_cells()] == ["ssim"]
    assert main([*run_args(setup, "ssim"), "--exclude", "ssmi"]) == 2  # typos are caught
    assert "did you mean 'ssim'" in capsys.readouterr().err


def test_a_batch_at_its_reference_does_not_decide_that_a_metric_has_no_gradient(
    tiny_root: Path,
) -> None:
    """With batches of one, the first image of a builtin split is pristine, where PSNR's
    input gradient is exactly zero; the check must look further and attack the metric."""
    from benchmark.datasets.builtin import BuiltinDataset
    from benchmark.engine.cells import plan_cells, run_group
    from benchmark.engine.config import RunConfig

    cfg = RunConfig(models=("psnry",), attacks=("ifgsm",), batch_size=1, params={"steps": 2})
    done = []
    run_group(cfg, "psnry", plan_cells(cfg), lambda cell, _: done.append(cell), progress=False,
              dataset=BuiltinDataset(tiny_root, "test"))  # fmt: skip
    (cell,) = done
    assert str(cell.image_id[0]).endswith("pristine.png")
    assert cell.status == "done" and cell.gradient == "ok"
    distorted = ~np.char.endswith(cell.image_id.astype(str), "pristine.png")
    assert (cell.attacked[distorted] > cell.clean[distorted]).all()  # I-FGSM inflates PSNR
