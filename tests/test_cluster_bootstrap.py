"""Intervals over source photographs: images cut from one photograph are not independent, so
the intervals resample photographs (then images within them), and tables that cannot order
two models say so."""

from __future__ import annotations

import numpy as np
import pytest

from benchmark.report.compare import AttackComparison
from benchmark.report.evaluation import correlation_report
from benchmark.report.scores import (
    bootstrap_ci,
    cluster_codes,
    paired_difference,
    rank_codes,
    row_mean,
    row_spearman_codes,
    summarize_cell,
)
from benchmark.report.tables import build_tables
from benchmark.store.cell import CellKey, CellResult
from benchmark.store.hdf5 import ResultStore, read_results

NB = 400


def photo_data(n_photos: int, per_photo: int, photo_sd: float, seed: int = 0):
    """Values whose mean varies between photographs by `photo_sd` (image noise sd 1)."""
    rng = np.random.default_rng(seed)
    offsets = rng.normal(0, photo_sd, n_photos)
    values = np.concatenate([o + rng.normal(0, 1, per_photo) for o in offsets])
    groups = np.repeat([f"photo{k}" for k in range(n_photos)], per_photo)
    return values, groups


def width(ci) -> float:
    return ci.high - ci.low


def test_photograph_effects_widen_the_interval_as_they_should():
    values, groups = photo_data(n_photos=6, per_photo=100, photo_sd=1.0)
    images = bootstrap_ci(row_mean, values, n_boot=NB)
    photos = bootstrap_ci(row_mean, values, n_boot=NB, clusters=cluster_codes(groups))
    assert width(photos) > 3 * width(images)
    assert photos.low < values.mean() < photos.high


def test_without_photograph_effects_the_two_intervals_agree():
    values, groups = photo_data(n_photos=40, per_photo=20, photo_sd=0.0)
    images = bootstrap_ci(row_mean, values, n_boot=NB)
    photos = bootstrap_ci(row_mean, values, n_boot=NB, clusters=cluster_codes(groups))
    assert 0.7 < width(photos) / width(images) < 1.4


def test_cluster_intervals_cover_the_truth_about_as_often_as_they_claim():
    """Across draws of new photographs, the 95% interval holds the true mean (0) in most
    draws; the per-image interval misses it far more often."""
    hits_photo = hits_image = 0
    trials = 40
    for seed in range(trials):
        values, groups = photo_data(n_photos=12, per_photo=30, photo_sd=1.0, seed=seed)
        p = bootstrap_ci(row_mean, values, n_boot=300, seed=seed, clusters=cluster_codes(groups))
        i = bootstrap_ci(row_mean, values, n_boot=300, seed=seed)
        hits_photo += p.low <= 0 <= p.high
        hits_image += i.low <= 0 <= i.high
    assert hits_photo >= 0.8 * trials
    assert hits_image <= 0.6 * trials


def test_singleton_groups_are_the_plain_bootstrap_and_one_group_gives_no_interval():
    values, _ = photo_data(n_photos=1, per_photo=50, photo_sd=0.0)
    ids = np.array([f"i{k}" for k in range(50)])
    assert bootstrap_ci(row_mean, values, n_boot=NB, seed=3) == bootstrap_ci(
        row_mean, values, n_boot=NB, seed=3, clusters=cluster_codes(ids)
    )
    one = bootstrap_ci(row_mean, values, n_boot=NB, clusters=cluster_codes(["p"] * 50))
    assert np.isnan(one.low) and np.isnan(one.high)


def test_unequal_photographs_and_correlations_resample_per_group():
    rng = np.random.default_rng(1)
    sizes = [5, 40, 17, 60, 9]
    groups = np.concatenate([[f"g{k}"] * n for k, n in enumerate(sizes)])
    x = rng.normal(size=groups.size)
    y = x + rng.normal(size=groups.size)
    ci = bootstrap_ci(
        row_spearman_codes, rank_codes(x), rank_codes(y), n_boot=NB, clusters=cluster_codes(groups)
    )
    assert -1 <= ci.low < ci.high <= 1 and ci.n_used == NB
    again = bootstrap_ci(
        row_spearman_codes, rank_codes(x), rank_codes(y), n_boot=NB, clusters=cluster_codes(groups)
    )
    assert ci == again  # deterministic under the seed


def cell(model: str, gain: np.ndarray, groups: np.ndarray | None, seed: int = 0) -> CellResult:
    rng = np.random.default_rng(seed)
    n = gain.size
    mos = rng.uniform(0, 1, n)
    clean = mos + rng.normal(0, 0.1, n)
    dist = np.full(n, 0.01)
    return CellResult(
        key=CellKey(model, "builtin", "ifgsm", 4 / 255),
        status="done",
        image_id=np.array([f"img{i}" for i in range(n)], dtype=object),
        mos=mos,
        clean=clean,
        attacked=clean + gain,
        linf=dist,
        l2=dist,
        psnr=np.full(n, 40.0),
        ssim=np.full(n, 0.99),
        seconds=np.full(n, 0.1),
        model_info={"lower_better": False, "score_range": [0.0, 1.0], "source": "zoo"},
        attack_config={"name": "ifgsm", "norm": "linf"},
        group=groups,
    )


def test_a_cell_reports_its_photographs_and_widens_every_interval():
    gain, groups = photo_data(n_photos=4, per_photo=60, photo_sd=0.02, seed=2)
    gain = 0.05 + 0.01 * gain
    with_photos = summarize_cell(cell("m", gain, groups), n_boot=NB)
    without = summarize_cell(cell("m", gain, None), n_boot=NB)
    assert with_photos["ci_unit"] == "photograph" and with_photos["n_groups"] == 4
    assert without["ci_unit"] == "image" and without["n_groups"] is None
    assert with_photos["abs_gain"] == pytest.approx(without["abs_gain"])
    for stat in ("abs_gain", "srocc_clean"):
        wide = with_photos[f"{stat}_high"] - with_photos[f"{stat}_low"]
        assert wide > without[f"{stat}_high"] - without[f"{stat}_low"]


def test_groups_are_stored_and_old_cells_without_them_read_as_images(tmp_path):
    gain, groups = photo_data(n_photos=3, per_photo=10, photo_sd=0.0)
    store = ResultStore(tmp_path / "r.h5")
    store.write_cell(cell("with", gain, groups), "h1")
    store.write_cell(cell("without", gain, None), "h2")
    cells = {c.key.model: c for c in read_results([tmp_path / "r.h5"], lazy=True)}
    assert list(cells["with"].group) == list(groups)
    assert cells["without"].group is None


def test_the_ranking_marks_models_the_photographs_cannot_separate():
    """Two models 0.01 apart in gain: over 300 images taken as independent they are ordered;
    over the 3 photographs they came from (with a photograph effect), they are not."""
    a, groups = photo_data(n_photos=3, per_photo=100, photo_sd=2.0, seed=4)
    base = 0.05 + 0.01 * a
    far = 0.2 + 0.01 * a
    cells = [
        cell("robust", base, groups, 1),
        cell("close", base + 0.01, groups, 2),
        cell("weak", far, groups, 3),
    ]
    rows = build_tables(cells, n_boot=NB).rows.set_index("model")
    assert rows.loc["close", "tied_with"] == "robust"
    assert rows.loc["weak", "tied_with"] == ""
    assert list(rows.loc[["robust", "close", "weak"], "rank"]) == [1, 2, 3]
    independent = [cell(c.key.model, c.attacked - c.clean, None, i) for i, c in enumerate(cells)]
    rows = build_tables(independent, n_boot=NB).rows.set_index("model")
    assert rows.loc["close", "tied_with"] == ""


def test_compare_says_not_separated_when_the_paired_interval_holds_zero():
    """The defense is lower on two photographs and higher on the third: over images it looks
    lower, over photographs the data cannot say."""
    gain, groups = photo_data(n_photos=3, per_photo=50, photo_sd=0.0, seed=5)
    by_photo = {"photo0": 0.01, "photo1": -0.012, "photo2": -0.012}
    shift = np.array([by_photo[g] for g in groups])
    defense = cell("d", 0.05 + 0.001 * gain + shift, groups, 1)
    baseline = cell("b", 0.05 + 0.001 * gain, groups, 1)
    diff, ci, _, n = paired_difference(defense, baseline, n_boot=NB)
    assert n == 150 and ci[0] <= 0 <= ci[1]
    as_images = cell("d", defense.attacked - defense.clean, None, 1)
    _, ci_images, _, _ = paired_difference(as_images, baseline, n_boot=NB)
    assert ci_images[1] < 0
    row = AttackComparison("ifgsm", "4/255", "up", 0, (0, 0), 0, (0, 0), diff, ci, 0.5, n, "done",
                           "done", 3)  # fmt: skip
    assert row.verdict == "not separated" and row.images_text == "150 (3 photos)"
    assert AttackComparison(*row.__dict__.values()).verdict == "not separated"
    clear = AttackComparison("ifgsm", "4/255", "up", 0, (0, 0), 0, (0, 0), -0.1, (-0.12, -0.08),
                             0.0, n, "done", "done")  # fmt: skip
    assert clear.verdict == "defense lower"


def test_evaluate_reports_the_photographs_behind_its_intervals():
    x, groups = photo_data(n_photos=4, per_photo=50, photo_sd=1.0, seed=6)
    mos = x + np.random.default_rng(0).normal(0, 1, x.size)
    by_photo = correlation_report(x, mos, photos=list(groups), n_boot=NB)
    by_image = correlation_report(x, mos, n_boot=NB)
    assert by_photo["n_photos"] == 4 and by_photo["ci_unit"] == "photograph"
    assert by_image["ci_unit"] == "image"
    assert by_photo["srocc"] == by_image["srocc"]
    assert np.diff(by_photo["srocc_ci"])[0] > np.diff(by_image["srocc_ci"])[0]
