"""The built-in dataset: tiny builds into tmp dirs (the full build is ~3 min and not run here)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from benchmark.datasets import builtin
from benchmark.datasets.builtin import (
    BuildConfig,
    BuiltinDataset,
    builtin_status,
    find_sources,
    generate_builtin,
    is_built,
    pseudo_mos,
    recipe_hash,
)
from benchmark.datasets.distortions import DISTORTIONS
from benchmark.errors import ConfigError, DataError

# One source per split plus a grey one; distortions covering blur, noise, compression,
# contrast and colour, at a weak and a strong level.
SPREAD = BuildConfig(
    sources=("astronaut", "rocket", "coffee", "camera"),
    crops_per_source=1,
    levels=(1, 3, 5),
    distortions=(
        "gaussian_blur",
        "white_noise",
        "jpeg",
        "contrast_decrease",
        "saturation_decrease",
        "colour_cast",
    ),
)
TINY = BuildConfig(
    sources=("chelsea", "moon"),
    crops_per_source=1,
    levels=(2, 5),
    distortions=("white_noise", "darken"),
)


@pytest.fixture(scope="module")
def spread_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_builtin(
        tmp_path_factory.mktemp("spread") / "ds", SPREAD, workers=0, progress=False
    )


@pytest.fixture(scope="module")
def index(spread_build: Path) -> pd.DataFrame:
    return pd.read_csv(spread_build / "index.csv")


def test_build_is_deterministic(tmp_path: Path) -> None:
    a = generate_builtin(tmp_path / "a", TINY, workers=0, progress=False)
    b = generate_builtin(tmp_path / "b", TINY, workers=0, progress=False)
    assert (a / "index.csv").read_bytes() == (b / "index.csv").read_bytes()
    ids = pd.read_csv(a / "index.csv")["image_id"]
    assert len(ids) == 2 * (1 + 2 * 2)
    for image_id in ids:
        pa = np.asarray(Image.open(a / "images" / image_id))
        pb = np.asarray(Image.open(b / "images" / image_id))
        assert pa.shape == (192, 192, 3) and np.array_equal(pa, pb)
    assert (
        json.loads((a / "manifest.json").read_text())["hash"]
        == json.loads((b / "manifest.json").read_text())["hash"]
    )


def test_index_content_and_splits_by_source(index: pd.DataFrame) -> None:
    assert set(index.columns) >= {
        *builtin.INDEX_COLUMNS,
        "ms_ssim",
        "fsim",
        "gmsd",
        "nlpd",
        "ciede2000_lp",
    }
    assert index["mos"].between(0, 1).all()
    pristine = index[index["distortion"] == "none"]
    assert (pristine["mos"] == 1.0).all() and (pristine["image_id"] == pristine["ref_id"]).all()
    splits_of_source = index.groupby("source")["split"].nunique()
    assert (splits_of_source == 1).all()
    assert dict(index.groupby("source")["split"].first()) == {
        "astronaut": "train",
        "rocket": "val",
        "coffee": "test",
        "camera": "test",
    }
    grey = index[index["source"] == "camera"]
    assert not set(grey["distortion"]) & {"saturation_decrease"}  # colour-only: skipped for grey
    assert "colour_cast" in set(grey["distortion"])  # a cast does change a grey photo


def test_weak_levels_score_higher_and_labels_are_not_flat(index: pd.DataFrame) -> None:
    dist = index[index["distortion"] != "none"]
    for name, g in dist.groupby("distortion"):
        by_level = g.groupby("level")["mos"].mean()
        assert by_level[1] > by_level[3] > by_level[5], name
        assert by_level[1] - by_level[5] > 0.15, name  # colour/contrast included: not flat
        assert g["mos"].std() > 0.08, name
    assert dist[dist["level"] == 1]["mos"].mean() > 0.85
    assert dist[dist["level"] == 5]["mos"].mean() < 0.6


def test_metric_columns_reproduce_the_mos(index: pd.DataFrame) -> None:
    values = {m: index[m].to_numpy() for m in SPREAD.metrics}
    np.testing.assert_allclose(pseudo_mos(values), index["mos"].to_numpy(), atol=2e-5)


def test_dataset_yields_split_items_with_refs(spread_build: Path, index: pd.DataFrame) -> None:
    test = BuiltinDataset(spread_build, "test")
    assert test.info.split == "test" and test.info.mos_range == (0.0, 1.0) and test.info.has_refs
    assert set(test.ids()) == set(index[index["split"] == "test"]["image_id"])
    sample = test.load("coffee/c0/jpeg_5.png")
    ref = test.load("coffee/c0/pristine.png").image
    assert sample.ref is not None and np.array_equal(sample.ref.numpy(), ref.numpy())
    assert sample.image.shape == (3, 192, 192) and not np.array_equal(
        sample.image.numpy(), ref.numpy()
    )
    assert len(BuiltinDataset(spread_build, "all")) == len(index)
    with pytest.raises(ConfigError, match="no split"):
        BuiltinDataset(spread_build, "holdout")


def test_failed_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def boom(*args: object) -> list[dict[str, object]]:
        calls.append(args)
        raise RuntimeError("killed mid-build")

    monkeypatch.setattr(builtin, "build_source", boom)
    with pytest.raises(RuntimeError):
        generate_builtin(tmp_path / "ds", TINY, workers=0, progress=False)
    assert calls and not (tmp_path / "ds").exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_leftovers_of_killed_builds_are_not_trusted(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    # A temp folder of a dead process (pid far above pid_max) with a partial index.
    stale = tmp_path / f".ds.tmp-{2**30}-deadbeef"
    (stale / "images").mkdir(parents=True)
    (stale / "index.csv").write_text("image_id\n")
    assert not is_built(stale)
    # A final folder without a complete manifest (hand-made or corrupted) is refused.
    out.mkdir()
    (out / "index.csv").write_text("image_id\n")
    assert not is_built(out)
    with pytest.raises(DataError, match="not a complete builtin dataset"):
        generate_builtin(out, TINY, workers=0, progress=False)
    os.remove(out / "index.csv")
    out.rmdir()
    generate_builtin(out, TINY, workers=0, progress=False)
    assert is_built(out) and not stale.exists()
    with open(out / "index.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 10


def test_missing_source_changes_the_cache_key(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    full = recipe_hash()
    real = builtin._package_dir
    monkeypatch.setattr(builtin, "_package_dir", lambda pkg: None if pkg == "pyiqa" else real(pkg))
    names = [s.name for s in find_sources()]
    assert "I08" not in names and "astronaut" in names
    assert "I08 not found" in caplog.text
    assert recipe_hash() != full


def test_status_never_builds(tmp_path: Path) -> None:
    built, reason = builtin_status(tmp_path)
    assert not built and "generated on first use" in reason and not list(tmp_path.iterdir())


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="ms_ssim needs crop_size"):
        generate_builtin("/nonexistent/x", BuildConfig(crop_size=64), progress=False)
    with pytest.raises(ConfigError, match="unknown distortion"):
        BuildConfig(distortions=("smudge",)).validate()
    with pytest.raises(ConfigError, match="unknown builtin source"):
        find_sources(["lena"])


@pytest.mark.parametrize("name", list(DISTORTIONS))
def test_distortions_grow_with_level(name: str) -> None:
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(30, 220, (12, 12, 3)), np.ones((16, 16, 1))).astype(np.uint8)
    image = np.clip(smooth + rng.integers(-8, 9, smooth.shape), 0, 255).astype(np.uint8)
    dist = DISTORTIONS[name]
    outs = [dist.apply(image, level, np.random.default_rng(1)) for level in (1, 5)]
    again = dist.apply(image, 1, np.random.default_rng(1))
    assert all(o.shape == image.shape and o.dtype == np.uint8 for o in outs)
    assert np.array_equal(outs[0], again)  # deterministic given the generator
    err = [np.abs(o.astype(float) - image).mean() for o in outs]
    assert 0 < err[0] < err[1], (name, err)


def test_label_ceiling_ranks_test_images_by_what_the_train_split_says_of_their_distortion(
    tmp_path: Path,
) -> None:
    from benchmark.datasets.builtin import label_ceiling

    rows = ["split,distortion,level,mos"]
    for split, offset in (("train", 0.0), ("test", 0.01)):
        for dist, scale in (("blur", 0.10), ("noise", 0.15)):
            rows += [f"{split},{dist},{lv},{1 - scale * lv + offset}" for lv in range(1, 6)]
    (tmp_path / "index.csv").write_text("\n".join(rows) + "\n")
    ceiling = label_ceiling(tmp_path)
    # MOS is a function of (type, level): knowing both ranks the test split perfectly.
    assert ceiling["distortion_and_level"] == pytest.approx(1.0)
    assert 0.8 < ceiling["level"] < 1.0  # level alone ties across types
    assert abs(ceiling["distortion"]) < 0.5  # type alone says little here
