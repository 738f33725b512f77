"""Builtin datasets with Debian photographs (`debian.py`): tiny .deb fixtures, never the archive.

A fake package holds small generated photographs; the build must read them out of the
.deb, check them against the card, build deterministically with `builtin`'s recipe and
keep every photograph in one split. The shipped `builtin-photos` card is checked as data.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from benchmark.datasets.builtin import DEFAULT_CONFIG, BuildConfig, all_sources, recipe
from benchmark.datasets.card import DatasetCard, read_dataset_card
from benchmark.datasets.debian import build_photos, photos_status, read_members
from benchmark.datasets.registry import load_card
from benchmark.errors import ConfigError, DataError

PKG, VERSION = "fake-wallpapers", "1:1.0-1"
# Small and cheap: one crop of 64 px, one distortion at two levels, one metric.
TINY = BuildConfig(
    crops_per_source=1,
    crop_size=64,
    source_short_side=96,
    levels=(1, 5),
    distortions=("white_noise",),
    metrics=("ciede2000_lp",),  # scikit-image only: no pyiqa import in these tests
)
# name -> (split, group): two views of one scene (fake_c, fake_d) share a group.
FAKE = {
    "fake_a": ("train", "fake_a"),
    "fake_b": ("val", "fake_b"),
    "fake_c": ("train", "scene"),
    "fake_d": ("train", "scene"),
    "fake_e": ("test", "fake_e"),
}


def _photo(seed: int) -> bytes:
    """A textured JPEG: smooth colour gradients plus noise, 120x100."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:100, 0:120]
    base = np.stack([xx * 2, yy * 2, (xx + yy)], axis=-1) % 256
    img = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


PHOTOS = {name: _photo(i) for i, name in enumerate(FAKE)}


def _member_path(name: str) -> str:
    return f"usr/share/backgrounds/fake/{name}.jpg"


def _tar_xz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        for path, data in files.items():
            info = tarfile.TarInfo("./" + path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_deb(path: Path, files: dict[str, bytes]) -> Path:
    """A Debian binary package (ar: debian-binary, control.tar.xz, data.tar.xz)."""
    control = b"Package: fake-wallpapers\nVersion: 1:1.0-1\nArchitecture: all\n"
    members = [
        ("debian-binary", b"2.0\n"),
        ("control.tar.xz", _tar_xz({"control": control})),
        ("data.tar.xz", _tar_xz(files)),
    ]
    out = bytearray(b"!<arch>\n")
    for name, data in members:
        header = f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n"
        out += header.encode("ascii") + data + (b"\n" if len(data) % 2 else b"")
    path.write_bytes(bytes(out))
    return path


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_card(
    folder: Path,
    photos: dict[str, bytes] = PHOTOS,
    layout: dict[str, tuple[str, str]] = FAKE,
) -> Path:
    """A card with one wheel photograph (chelsea, test) and the fake package's photographs."""
    chelsea = next(s for s in all_sources() if s.name == "chelsea")
    lines = [
        'name = "tiny-photos"',
        'layout = "builtin"',
        "mos_range = [0.0, 1.0]",
        "[[photos]]",
        'name = "chelsea"',
        'origin = "wheel"',
        'package = "scikit-image"',
        'version = "any"',
        'path = "skimage/data/chelsea.png"',
        'license = "CC0-1.0"',
        f'sha256 = "{_sha(chelsea.path.read_bytes())}"',
        'split = "test"',
    ]
    for name, (split, group) in layout.items():
        lines += [
            "[[photos]]",
            f'name = "{name}"',
            'origin = "deb"',
            f'package = "{PKG}"',
            f'version = "{VERSION}"',
            f'path = "{_member_path(name)}"',
            'license = "CC0-1.0"',
            f'sha256 = "{_sha(photos[name])}"',
            f'split = "{split}"',
            f'group = "{group}"',
        ]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tiny-photos.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture()
def debs(tmp_path: Path) -> Path:
    folder = tmp_path / "debs"
    folder.mkdir()
    write_deb(
        folder / "fake-wallpapers_1%3a1.0-1_all.deb",
        {_member_path(n): data for n, data in PHOTOS.items()} | {"usr/share/doc/x": b"doc"},
    )
    return folder


@pytest.fixture()
def card(tmp_path: Path) -> DatasetCard:
    return read_dataset_card(write_card(tmp_path / "cards"))


def _build(card: DatasetCard, cache: Path, debs: Path | None) -> Path:
    return build_photos(card, cache, debs=debs, config=TINY, workers=0, progress=False)


def test_builds_deterministically_from_a_deb(tmp_path: Path, card: DatasetCard, debs: Path) -> None:
    a = _build(card, tmp_path / "cache_a", debs)
    b = _build(card, tmp_path / "cache_b", debs)
    assert a.name == b.name and a.name.startswith("tiny-photos-")
    assert (a / "index.csv").read_bytes() == (b / "index.csv").read_bytes()
    index = pd.read_csv(a / "index.csv")
    assert sorted(index["source"].unique()) == sorted(["chelsea", *FAKE])
    assert len(index) == 6 * (1 + 2)  # 6 photographs x (pristine + 2 levels)
    for image_id in index["image_id"]:
        assert (a / "images" / image_id).read_bytes() == (b / "images" / image_id).read_bytes()
    # The photographs were read out of the .deb, byte for byte.
    unpacked = tmp_path / "cache_a" / "debian" / PKG / _member_path("fake_a")
    assert unpacked.read_bytes() == PHOTOS["fake_a"]


def test_splits_follow_the_card_and_share_no_photograph(
    tmp_path: Path, card: DatasetCard, debs: Path
) -> None:
    index = pd.read_csv(_build(card, tmp_path / "cache", debs) / "index.csv")
    by_split = {s: set(g["group"]) for s, g in index.groupby("split")}
    assert by_split == {
        "train": {"fake_a", "scene"},
        "val": {"fake_b"},
        "test": {"chelsea", "fake_e"},
    }
    for source, rows in index.groupby("source"):
        assert set(rows["split"]) == {dict(FAKE).get(source, ("test",))[0]}


def test_manifest_records_each_photograph(tmp_path: Path, card: DatasetCard, debs: Path) -> None:
    import json

    out = _build(card, tmp_path / "cache", debs)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["recipe"]["sources"]["fake_c"] == _sha(PHOTOS["fake_c"])
    assert manifest["recipe"]["splits"]["fake_d"] == ["scene", "train"]


def test_missing_package_says_how_to_get_it(tmp_path: Path, card: DatasetCard) -> None:
    empty = tmp_path / "nodebs"
    with pytest.raises(DataError) as err:
        _build(card, tmp_path / "cache", empty)
    text = str(err.value)
    assert f"apt-get download {PKG}" in text
    assert f"--debs {empty}" in text and "dpkg-deb -x" in text
    assert str(tmp_path / "cache" / "debian") in text
    ok, reason = photos_status(card, tmp_path / "cache")
    assert not ok and PKG in reason


def test_an_unpacked_tree_needs_no_deb(tmp_path: Path, card: DatasetCard) -> None:
    cache = tmp_path / "cache"
    for name, data in PHOTOS.items():
        target = cache / "debian" / PKG / _member_path(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    assert photos_status(card, cache)[0]
    out = _build(card, cache, tmp_path / "nodebs")
    assert (out / "index.csv").is_file()


def test_a_different_photograph_is_refused(tmp_path: Path, debs: Path) -> None:
    changed = dict(PHOTOS) | {"fake_b": _photo(99)}  # the card expects another file
    card = read_dataset_card(write_card(tmp_path / "cards", changed))
    with pytest.raises(DataError, match="fake_b.jpg"):
        _build(card, tmp_path / "cache", debs)


def test_card_rejects_a_group_in_two_splits(tmp_path: Path) -> None:
    layout = dict(FAKE) | {"fake_d": ("val", "scene")}  # fake_c, its other view, is in train
    with pytest.raises(ConfigError, match="scene"):
        read_dataset_card(write_card(tmp_path / "cards", layout=layout))


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")
def test_reads_a_package_built_by_dpkg_deb(tmp_path: Path) -> None:
    root = tmp_path / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {PKG}\nVersion: {VERSION}\nArchitecture: all\nMaintainer: t <t@t>\n"
        "Description: test\n"
    )
    target = root / _member_path("fake_a")
    target.parent.mkdir(parents=True)
    target.write_bytes(PHOTOS["fake_a"])
    deb = tmp_path / "fake.deb"
    subprocess.run(["dpkg-deb", "-b", str(root), str(deb)], check=True, capture_output=True)
    assert read_members(deb, {_member_path("fake_a")}) == {_member_path("fake_a"): PHOTOS["fake_a"]}


# -- the shipped card ---------------------------------------------------------------------


def test_shipped_card_records_provenance_and_disjoint_splits() -> None:
    card = load_card("builtin-photos")
    photos = card.photos
    assert len({p.name for p in photos}) == len(photos) == 59
    for p in photos:
        assert p.package and p.version and p.path and p.license and len(p.sha256) == 64
    debs = Counter(p.package for p in photos if p.origin == "deb")
    assert sum(debs.values()) == 38 and len(debs) == 4
    groups = {s: {p.group for p in photos if p.split == s} for s in ("train", "val", "test")}
    assert len(groups["test"]) >= 10
    assert not (groups["test"] & groups["train"]) and not (groups["test"] & groups["val"])
    assert not (groups["train"] & groups["val"])
    # Its wheel photographs are exactly `builtin`'s, with builtin's test photographs in test.
    wheel = {p.name: p for p in photos if p.origin == "wheel"}
    sources = {s.name: s for s in all_sources()}
    assert set(wheel) == set(sources)
    for name, p in wheel.items():
        assert sources[name].path.as_posix().endswith("/" + p.path)
        assert p.split == sources[name].split_name()


def test_default_builtin_recipe_is_unchanged() -> None:
    """Sources without their own split keep the default recipe (and its cache hash) as it was."""
    rec = recipe(DEFAULT_CONFIG, [s for s in all_sources() if s.path.is_file()])
    assert rec["splits"] == {
        "test": ["chelsea", "coffee", "camera", "I08"],
        "val": ["rocket", "grass"],
    }


def test_build_dataset_command_prints_how_to_get_the_packages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from benchmark.cli import main

    write_card(tmp_path / "cards")
    monkeypatch.setenv("BENCHMARK_DATASET_DIRS", str(tmp_path / "cards"))
    monkeypatch.setenv("BENCHMARK_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("BENCHMARK_DEBS", raising=False)
    code = main(["-q", "build-dataset", "tiny-photos"])
    err = capsys.readouterr().err
    assert code == 1
    assert f"apt-get download {PKG}" in err and str(tmp_path / "cache" / "debs") in err
    assert main(["-q", "build-dataset", "kadid10k"]) == 2  # not a generated dataset
    assert "builtin-layout" in capsys.readouterr().err
