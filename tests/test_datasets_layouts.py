"""Real dataset layouts on tiny fixtures with the official file and column names."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark import cards
from benchmark.datasets.card import read_dataset_card
from benchmark.datasets.registry import create_dataset, list_datasets
from benchmark.errors import ConfigError, DataError, UnknownNameError

KONIQ_HEADER = '"image_name","c1","c2","c3","c4","c5","c_total","MOS","SD","MOS_zscore"'


def _img(path: Path, value: int, size: tuple[int, int] = (64, 48)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = (
        "JPEG"
        if path.suffix.lower() == ".jpg"
        else ("BMP" if path.suffix.lower() == ".bmp" else "PNG")
    )
    Image.new("RGB", size, (value, value, value)).save(path, format=fmt)
    return path


def make_koniq(root: Path, rows: list[tuple[str, str]], folder: str = "1024x768") -> Path:
    lines = [KONIQ_HEADER]
    for i, (name, mos) in enumerate(rows):
        lines.append(f'"{name}",1,2,3,4,5,15,{mos},0.5,{i}')
        if not name.startswith(("..", "/")):
            _img(root / folder / name, 40 * (i + 1))
    (root / "koniq10k_scores_and_distributions.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def koniq(tmp_path: Path) -> Path:
    return make_koniq(
        tmp_path / "koniq", [("100.jpg", "3.5"), ("200.jpg", "1.25"), ("300.jpg", "4.9")]
    )


def test_koniq_loads_with_card_policy(koniq: Path) -> None:
    ds = create_dataset("koniq10k", split="all", root=koniq)
    assert ds.ids() == ["100.jpg", "200.jpg", "300.jpg"]
    assert ds.info.mos_range == (1.0, 5.0) and not ds.info.has_refs
    samples = list(ds)
    assert [s.mos for s in samples] == [3.5, 1.25, 4.9]
    assert all(s.image.shape == (3, 384, 512) and s.ref is None for s in samples)  # card: resize
    assert abs(float(samples[0].image.mean()) - 40 / 255) < 2 / 255


def test_koniq_accepts_512x384_release_and_env_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_koniq(tmp_path / "k512", [("1.jpg", "2")], folder="512x384")
    monkeypatch.setenv("BENCHMARK_DATA_DIR", str(tmp_path / "nothing-here"))
    monkeypatch.setenv("BENCHMARK_DATA_KONIQ10K", str(root))  # wins over BENCHMARK_DATA_DIR
    ds = create_dataset("koniq10k", split="all")
    assert ds.ids() == ["1.jpg"] and next(iter(ds)).mos == 2.0


def test_missing_root_says_what_to_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BENCHMARK_DATA_KONIQ10K", raising=False)
    monkeypatch.setenv("BENCHMARK_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError) as err:
        create_dataset("koniq10k")
    msg = str(err.value)
    assert "koniq10k_scores_and_distributions.csv" in msg and str(tmp_path / "koniq10k") in msg
    assert "BENCHMARK_DATA_KONIQ10K" in msg and "http" in msg


def test_missing_column_names_csv_and_column(tmp_path: Path) -> None:
    root = make_koniq(tmp_path / "k", [("1.jpg", "2")])
    csv_path = root / "koniq10k_scores_and_distributions.csv"
    csv_path.write_text('"image_name","c1","SD"\n"1.jpg",1,0.3\n')
    with pytest.raises(DataError, match=r"koniq10k_scores_and_distributions.csv.*'MOS'"):
        create_dataset("koniq10k", split="all", root=root)


@pytest.mark.parametrize("bad", ["abc", "nan", ""])
def test_non_numeric_mos_names_file_and_row(tmp_path: Path, bad: str) -> None:
    root = make_koniq(tmp_path / "k", [("1.jpg", "2"), ("2.jpg", bad)])
    with pytest.raises(
        DataError, match=r"koniq10k_scores_and_distributions.csv row 3.*not a finite number"
    ):
        create_dataset("koniq10k", split="all", root=root)


def test_mos_outside_declared_range(tmp_path: Path) -> None:
    root = make_koniq(tmp_path / "k", [("1.jpg", "2"), ("2.jpg", "73.2")])  # a MOS_zscore value
    with pytest.raises(DataError, match=r"row 3.*outside the card's mos_range"):
        create_dataset("koniq10k", split="all", root=root)


def test_duplicate_ids_name_both_rows(tmp_path: Path) -> None:
    root = make_koniq(tmp_path / "k", [("1.jpg", "2"), ("2.jpg", "3"), ("1.jpg", "4")])
    with pytest.raises(DataError, match=r"row 4.*duplicate image '1.jpg'.*row 2"):
        create_dataset("koniq10k", split="all", root=root)


@pytest.mark.parametrize(
    "name", ["../../etc/passwd", "/etc/passwd", "sub/../../x.jpg", "C:\\Windows\\x.jpg"]
)
def test_path_traversal_is_refused(tmp_path: Path, name: str) -> None:
    root = make_koniq(tmp_path / "k", [("1.jpg", "2")])
    with open(root / "koniq10k_scores_and_distributions.csv", "a") as fh:
        fh.write(f'"{name}",1,2,3,4,5,15,3.0,0.5,1\n')
    with pytest.raises(DataError, match="outside the dataset root"):
        create_dataset("koniq10k", split="all", root=root)


def test_missing_and_unreadable_images_are_skipped_and_recorded(
    koniq: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (koniq / "1024x768" / "200.jpg").unlink()
    cut = koniq / "1024x768" / "300.jpg"
    cut.write_bytes(cut.read_bytes()[:100])
    ds = create_dataset("koniq10k", split="all", root=koniq)
    with caplog.at_level(logging.WARNING):
        got = [s.image_id for s in ds]
    assert got == ["100.jpg"]
    assert set(ds.skipped) == {"200.jpg", "300.jpg"}
    assert "not found" in ds.skipped["200.jpg"] and "300.jpg" in ds.skipped["300.jpg"]
    assert "skipping 200.jpg" in caplog.text
    batches = list(ds.batches(4))
    assert len(batches) == 1 and batches[0].ids == ["100.jpg"]


def make_kadid(root: Path, n_refs: int = 6) -> Path:
    lines = ["dist_img,ref_img,dmos,var"]
    for r in range(1, n_refs + 1):
        _img(root / "images" / f"I{r:02d}.png", 200)
        for d in (1, 2):
            name = f"I{r:02d}_{d:02d}_01.png"
            _img(root / "images" / name, 10 * r + d)
            lines.append(f"{name},I{r:02d}.png,{1 + r * 0.3 + d * 0.05:.2f},0.4")
    (root / "dmos.csv").write_text("\n".join(lines) + "\n")
    return root


def test_kadid_has_refs_and_splits_by_reference(tmp_path: Path) -> None:
    root = make_kadid(tmp_path / "kadid", n_refs=12)
    full = create_dataset("kadid10k", split="all", root=root)
    assert len(full) == 24 and full.info.has_refs
    s = full.load("I03_02_01.png")
    assert s.mos == pytest.approx(2.0)
    assert s.ref is not None and torch.allclose(s.ref, torch.full_like(s.ref, 200 / 255))
    assert torch.allclose(s.image, torch.full_like(s.image, 32 / 255))
    parts = {sp: create_dataset("kadid10k", split=sp, root=root) for sp in ("train", "val", "test")}
    ids = [set(p.ids()) for p in parts.values()]
    assert set().union(*ids) == set(full.ids()) and sum(len(i) for i in ids) == len(full)
    refs = [{i.split("_")[0] for i in part} for part in ids]
    for a in range(3):
        for b in range(a + 1, 3):
            assert not refs[a] & refs[b]  # no reference photo in two splits
    assert create_dataset("kadid10k", root=root).info.split == "test"  # benchmarking default


def test_unknown_split_is_config_error(tmp_path: Path) -> None:
    root = make_kadid(tmp_path / "kadid", n_refs=1)
    with pytest.raises(ConfigError, match="no split 'dev'"):
        create_dataset("kadid10k", split="dev", root=root)


def test_kadid_missing_ref_skips_item(tmp_path: Path) -> None:
    root = make_kadid(tmp_path / "kadid", n_refs=2)
    (root / "images" / "I02.png").unlink()
    ds = create_dataset("kadid10k", split="all", root=root)
    assert [s.image_id for s in ds] == ["I01_01_01.png", "I01_02_01.png"]
    assert set(ds.skipped) == {"I02_01_01.png", "I02_02_01.png"}


def make_tid(root: Path) -> Path:
    # The real release mixes case: refs I01.BMP ... and i25.bmp; distorted i01_01_1.bmp.
    _img(root / "reference_images" / "I01.BMP", 100)
    _img(root / "reference_images" / "i25.bmp", 150)
    _img(root / "distorted_images" / "i01_01_1.bmp", 11)
    _img(root / "distorted_images" / "I01_02_1.BMP", 12)  # listed in lower case below
    _img(root / "distorted_images" / "i25_01_1.bmp", 13)
    (root / "mos_with_names.txt").write_text(
        "5.51429 i01_01_1.bmp\r\n4.5 i01_02_1.bmp\r\n\r\n6.0 i25_01_1.bmp\r\n"
    )
    return root


def test_tid2013_case_insensitive_files_and_refs(tmp_path: Path) -> None:
    ds = create_dataset("tid2013", split="all", root=make_tid(tmp_path / "tid"))
    assert ds.ids() == ["i01_01_1.bmp", "i01_02_1.bmp", "i25_01_1.bmp"]
    samples = {s.image_id: s for s in ds}
    assert not ds.skipped
    assert samples["i01_01_1.bmp"].mos == pytest.approx(5.51429)
    assert float(samples["i01_02_1.bmp"].image.mean()) == pytest.approx(12 / 255, abs=1e-6)
    ref25 = samples["i25_01_1.bmp"].ref
    assert ref25 is not None and float(ref25.mean()) == pytest.approx(150 / 255, abs=1e-6)
    assert ds.info.mos_range == (0.0, 9.0)


def test_tid2013_bad_line_names_file_and_line(tmp_path: Path) -> None:
    root = make_tid(tmp_path / "tid")
    with open(root / "mos_with_names.txt", "a") as fh:
        fh.write("garbage-without-mos\n")
    with pytest.raises(DataError, match=r"mos_with_names.txt row 5.*'MOS filename'"):
        create_dataset("tid2013", split="all", root=root)


def test_folder_dataset_recursive_sorted_images_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "imgs"
    _img(root / "b.png", 10)
    _img(root / "a" / "z.jpg", 20)
    _img(root / "a" / "Y.PNG", 30)
    _img(root / ".hidden" / "x.png", 40)
    (root / "notes.txt").write_text("not an image")
    (root / "broken.png").write_bytes(b"")
    with caplog.at_level(logging.DEBUG, logger="benchmark.datasets.layouts"):
        ds = create_dataset(f"folder:{root}")
    assert "notes.txt" in caplog.text
    assert ds.ids() == ["a/Y.PNG", "a/z.jpg", "b.png", "broken.png"]
    assert ds.info.mos_range is None and ds.info.split == "all"
    batch = next(ds.batches(8))
    assert torch.isnan(batch.mos).all() and batch.refs is None
    assert list(ds.skipped) == ["broken.png"]


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        create_dataset(f"folder:{tmp_path / 'nope'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files"):
        create_dataset(f"folder:{tmp_path / 'empty'}")


def test_unknown_name_suggests(tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError, match="did you mean 'koniq10k'"):
        create_dataset("koniq10")


def test_listing_is_cheap_and_explains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCHMARK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("BENCHMARK_DATA_DIR", str(tmp_path / "data"))
    for var in ("BENCHMARK_DATA_KONIQ10K", "BENCHMARK_DATA_KADID10K", "BENCHMARK_DATA_TID2013"):
        monkeypatch.delenv(var, raising=False)
    make_kadid(tmp_path / "data" / "kadid10k", n_refs=1)
    status = {s.name: s for s in list_datasets()}
    assert {"builtin", "koniq10k", "kadid10k", "tid2013"} <= set(status)
    assert status["builtin"].usable and "generated on first use" in status["builtin"].reason
    assert not (tmp_path / "cache").exists() or not any(
        (tmp_path / "cache").iterdir()
    )  # nothing built
    assert status["kadid10k"].usable and status["kadid10k"].info.has_refs
    koniq = status["koniq10k"]
    assert not koniq.usable and "BENCHMARK_DATA_KONIQ10K" in koniq.reason and "http" in koniq.reason
    assert status["builtin"].splits == ("train", "val", "test")


def _card(tmp_path: Path, text: str, name: str = "mydata") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


GOOD_CARD = (
    'name = "mydata"\nlayout = "folder"\nroot = "~/imgs"\n[image]\npolicy = "crop"\nsize = [8, 8]\n'
)


def test_card_reading_is_strict(tmp_path: Path) -> None:
    card = read_dataset_card(_card(tmp_path, GOOD_CARD))
    assert card.policy == "crop" and card.size == (8, 8) and card.env_var == "BENCHMARK_DATA_MYDATA"
    bad = {
        GOOD_CARD + 'colour = "x"\n': "unknown key",
        GOOD_CARD.replace('"~/imgs"', "3"): "'root' must be str",
        GOOD_CARD.replace("[8, 8]", '"8x8"'): "'size' must be list",
        GOOD_CARD.replace("[8, 8]", "[8, 0]"): "positive integers",
        GOOD_CARD.replace('"crop"', '"squash"'): "policy",
        GOOD_CARD + "extra = 1\n": "unknown key",
        GOOD_CARD.replace('"folder"', '"koniq10k"'): "mos_range",
        GOOD_CARD.replace('name = "mydata"', 'name = "other"'): "file name",
        'name = "mydata"\nlayout = "kadid10k"\nroot = "x"\nmos_range = [5, 1]\n': "lo < hi",
        'name = "mydata"\nlayout = "kadid10k"\nroot = "x"\nmos_range = [1, 5]\n[splits]\ntrain = 0.5\n': "sum to 1",
        "name = ": "not valid TOML",
    }
    for text, message in bad.items():
        path = _card(tmp_path, text)
        with pytest.raises(ConfigError, match=message) as err:
            read_dataset_card(path)
        assert str(path) in str(err.value)


def test_card_folder_dataset_via_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    card_dir = tmp_path / "cards"
    card_dir.mkdir()
    monkeypatch.setitem(cards.CARD_DIRS, "dataset", card_dir)
    images = tmp_path / "imgs"
    _img(images / "a.png", 50, size=(20, 10))
    _img(images / "tiny.png", 50, size=(4, 4))
    _card(card_dir, GOOD_CARD.replace("~/imgs", str(images)))
    ds = create_dataset("mydata")
    assert [s.image.shape for s in ds] == [(3, 8, 8)]  # crop policy from the card
    assert "smaller" in ds.skipped["tiny.png"]
    _card(card_dir, GOOD_CARD + "bogus = true\n", name="broken")
    with pytest.raises(ConfigError, match="broken.toml"):
        create_dataset("broken")
    status = {s.name: s for s in list_datasets()}
    assert (
        status["mydata"].usable
        and not status["broken"].usable
        and "broken.toml" in status["broken"].reason
    )


def test_real_cards_are_valid() -> None:
    for path in cards.card_paths("dataset"):
        card = read_dataset_card(path)
        assert card.description and card.citation
        assert card.layout == "builtin" or card.url.startswith("http")


def test_batches_carry_refs_and_mos(tmp_path: Path) -> None:
    ds = create_dataset("kadid10k", split="all", root=make_kadid(tmp_path / "kadid", n_refs=2))
    (batch,) = list(ds.batches(8))
    assert batch.images.shape == (4, 3, 48, 64) and batch.refs is not None
    np.testing.assert_allclose(batch.mos.numpy(), [1.35, 1.4, 1.65, 1.7])


def test_sample_spreads_over_every_reference_while_limit_takes_the_first(tmp_path: Path) -> None:
    root = make_kadid(tmp_path / "kadid", n_refs=6)
    full = create_dataset("kadid10k", split="all", root=root)

    def ids(**kw: int) -> list[str]:
        return [i for b in full.batches(4, **kw) for i in b.ids]

    first = ids(limit=6)
    spread_ids = ids(sample=6)
    assert len(first) == len(spread_ids) == 6
    assert len({i[:3] for i in first}) == 3  # two images per reference, in order
    assert {i[:3] for i in spread_ids} == {f"I{r:02d}" for r in range(1, 7)}
    assert ids(sample=6) == spread_ids  # deterministic
    assert ids(sample=100) == ids()  # more than there are: all of them
