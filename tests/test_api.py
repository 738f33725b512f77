"""The Python API (`benchmark.api`, re-exported from `benchmark`): results as DataFrames that
agree with the leaderboard, `run` storing the cells the CLI stores, user card folders, and
the example script."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import benchmark
from benchmark.api import RESULT_COLUMNS
from benchmark.attacks.registry import attack_registry
from benchmark.cards import ATTACK_DIRS_ENV, CARD_DIRS, DATASET_DIRS_ENV
from benchmark.cli import main
from benchmark.errors import ConfigError, StoreError
from benchmark.report.leaderboard import build_tables
from benchmark.store.cell import PER_IMAGE_FIELDS
from benchmark.store.hdf5 import ResultStore, read_results

REPO = Path(__file__).resolve().parent.parent
PREMOVE = REPO / "tests" / "data" / "premove"


def test_import_is_cheap_and_names_resolve_lazily() -> None:
    code = (
        "import sys, benchmark; heavy = [m for m in ('torch', 'pandas', 'pyiqa') if m in sys.modules];"
        "assert not heavy, heavy; assert benchmark.__version__ == '0.1.0';"
        "assert callable(benchmark.run) and callable(benchmark.load_results);"
        "import benchmark.engine.batching as b; assert b.__name__ == 'benchmark.engine.batching';"
        "import inspect; assert inspect.isfunction(benchmark.run);"
        "from benchmark import run; assert run is benchmark.run and callable(run)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_load_results_is_tidy_and_its_gains_are_the_leaderboards() -> None:
    df = benchmark.load_results(PREMOVE / "premove.h5")
    cells = read_results([PREMOVE / "premove.h5"])
    assert tuple(df.columns) == RESULT_COLUMNS
    assert len(df) == sum(len(c) for c in cells) == 40
    assert df["image_id"].map(type).eq(str).all()
    tables = build_tables(cells, n_boot=10)
    per_cell = tables.cells.set_index(["model", "dataset", "attack", "eps", "direction"])
    keys = ["model", "dataset", "attack", "eps", "direction"]
    for key, rows in df.groupby(keys):
        want = per_cell.loc[key]
        assert len(rows) == want["n_images"]
        np.testing.assert_array_equal(rows["mos"], next(c.mos for c in cells if _key(c) == key))
        if want["status"] != "done":
            continue
        terms = rows["quality_attacked"] - rows["quality_clean"]
        assert terms[np.isfinite(terms)].mean() == pytest.approx(want["abs_gain"], rel=1e-12)
    # the ranking rows take their gain from the worst attack's cell
    for _, row in tables.ranked.iterrows():
        mine = df[(df.model == row.model) & (df.attack == row.worst_attack)]
        gain = (mine.quality_attacked - mine.quality_clean).mean()
        assert gain == pytest.approx(row.abs_gain, rel=1e-12)


def _key(cell) -> tuple:
    k = cell.key
    return (k.model, k.dataset, k.attack, k.eps, k.direction)


def test_leaderboard_is_the_exported_ranking() -> None:
    board = benchmark.leaderboard([PREMOVE / "premove.h5"])
    want = pd.read_csv(PREMOVE / "leaderboard.ranking.csv")
    assert list(board["model"]) == list(want["model"])
    assert list(board["rank"].astype("Int64")) == list(want["rank"].astype("Int64"))
    np.testing.assert_allclose(board["abs_gain"].astype(float), want["abs_gain"], rtol=1e-12)
    with pytest.raises(StoreError, match="results file not found"):
        benchmark.leaderboard("nowhere.h5")


@pytest.mark.usefixtures("one_thread")
def test_run_from_python_stores_the_cells_the_cli_stores(tmp_path: Path, make_kadid) -> None:
    data = make_kadid(tmp_path / "kadid")
    common = dict(dataset="kadid10k", split="all", limit=4, seed=3, batch_size=4)
    argv = ["-q", "run", "--models", "cnniqa-builtin", "--attacks", "fgsm", "--eps", "4/255"]
    argv += ["--dataset", "kadid10k", "--data-root", str(data), "--split", "all"]
    argv += ["--limit", "4", "--seed", "3", "--batch-size", "4", "--out", str(tmp_path / "cli.h5")]
    assert main(argv) == 0
    result = benchmark.run(
        models="cnniqa-builtin",
        attacks=["fgsm"],
        eps="4/255",
        data_root=data,
        out=tmp_path / "api.h5",
        progress=False,
        **common,
    )
    assert result.ok and len(result.report.computed) == 1 and result.html is None
    (cli_cell,), (api_cell,) = ResultStore(tmp_path / "cli.h5").read_cells(), result.cells
    assert cli_cell.key == api_cell.key and cli_cell.status == api_cell.status == "done"
    for name in ("image_id", *PER_IMAGE_FIELDS):
        if name != "seconds":
            np.testing.assert_array_equal(getattr(api_cell, name), getattr(cli_cell, name))
    assert api_cell.attack_config == cli_cell.attack_config
    assert api_cell.model_info == cli_cell.model_info
    assert api_cell.meta["seed"] == cli_cell.meta["seed"] == 3
    cli_index = ResultStore(tmp_path / "cli.h5").cell_index()
    assert ResultStore(result.path).cell_index() == cli_index
    # resume: the same run again computes nothing; the results agree with the file's
    again = benchmark.run(
        models=["cnniqa-builtin"], attacks="fgsm", eps=4 / 255, data_root=str(data),
        out=result.path, progress=False, **common,
    )  # fmt: skip
    assert again.report.skipped == result.report.computed and not again.report.computed
    assert len(benchmark.load_results(again.path)) == 4
    assert again.tables().rows["model"].tolist() == ["cnniqa-builtin"]


@pytest.mark.usefixtures("one_thread")
def test_create_model_and_attack() -> None:
    import torch

    model = benchmark.create_model("cnniqa-builtin")
    attack = benchmark.create_attack("ifgsm", eps="2/255", steps=2)
    assert attack.eps == pytest.approx(2 / 255) and attack.params["steps"] == 2
    x = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    x_adv = attack.perturb(model, x)
    assert (x_adv - x).abs().max() <= 2 / 255 + 1e-6
    assert (model.quality(x_adv) > model.quality(x)).all()


def test_user_card_folders_for_attacks_and_datasets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_kadid
) -> None:
    attacks, datasets = tmp_path / "my-attacks", tmp_path / "my-datasets"
    attacks.mkdir()
    datasets.mkdir()
    fgsm = (CARD_DIRS["attack"] / "fgsm.toml").read_text()
    (attacks / "fgsm-mine.toml").write_text(fgsm.replace('name = "fgsm"', 'name = "fgsm-mine"'))
    make_kadid(datasets / "data")
    kadid = (CARD_DIRS["dataset"] / "kadid10k.toml").read_text()
    mine = kadid.replace('name = "kadid10k"', 'name = "mykadid"')
    (datasets / "mykadid.toml").write_text(
        mine.replace('root = "~/data/kadid10k"', 'root = "data"')
    )
    monkeypatch.setenv(ATTACK_DIRS_ENV, str(attacks))
    monkeypatch.setenv(DATASET_DIRS_ENV, os.pathsep.join(["", str(datasets)]))
    attack_registry.cache_clear()
    try:
        assert "fgsm-mine" in benchmark.list_attacks() and "fgsm" in benchmark.list_attacks()
        assert benchmark.create_attack("fgsm-mine", eps="1/255").eps == pytest.approx(1 / 255)
        assert {"mykadid", "kadid10k"} <= set(benchmark.list_datasets())
        assert "mykadid" in benchmark.list_datasets(usable=True)  # its relative root is found
        from benchmark.datasets.registry import create_dataset

        assert len(create_dataset("mykadid", "all")) == 6
        # a name defined twice is an error naming both cards
        (attacks / "fgsm.toml").write_text(fgsm)
        attack_registry.cache_clear()
        with pytest.raises(ConfigError, match="defined twice"):
            benchmark.list_attacks()
        monkeypatch.setenv(ATTACK_DIRS_ENV, str(tmp_path / "missing"))
        attack_registry.cache_clear()
        with pytest.raises(ConfigError, match="BENCHMARK_ATTACK_DIRS.*not a folder"):
            benchmark.list_attacks()
    finally:
        attack_registry.cache_clear()


@pytest.mark.usefixtures("one_thread")
def test_api_tour_example_runs(tmp_path: Path, make_kadid, monkeypatch, capsys) -> None:
    data = make_kadid(tmp_path / "kadid")
    monkeypatch.chdir(tmp_path)
    for name, value in dict(
        TOUR_DATASET="kadid10k", TOUR_DATA_ROOT=str(data), TOUR_SPLIT="all", TOUR_LIMIT="3"
    ).items():
        monkeypatch.setenv(name, value)
    runpy.run_path(str(REPO / "examples" / "api_tour.py"), run_name="__main__")
    printed = capsys.readouterr().out
    assert (tmp_path / "results" / "api_tour.h5").is_file()
    assert "cnniqa-builtin" in printed and "ssim" in printed
