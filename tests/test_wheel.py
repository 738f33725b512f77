"""The wheel is the benchmark: built from this tree and installed into a bare folder, it lists
every shipped card, runs, stores and renders from a folder outside the checkout."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import benchmark
from benchmark.cards import DIRS_ENV
from benchmark.store.hdf5 import ResultStore

REPO = Path(__file__).resolve().parent.parent
CARD_FOLDERS = ("attacks", "datasets", "models")
# What a build needs from the tree; build/ and *.egg-info are left behind, so nothing stale
# from an earlier build can end up in this one.
BUILD_INPUTS = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "LICENSE", "CITATION.cff")
DIST_INFO = f"iqa_robustness_benchmark-{benchmark.__version__}.dist-info"

pytestmark = pytest.mark.slow


def _version(dist: str) -> tuple[int, ...]:
    try:
        raw = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return ()
    return tuple(int(part) for part in re.findall(r"\d+", raw)[:3])


def repo_card_files() -> list[str]:
    """Every file of the repository's card folders (tracked ones in a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "ls-files", "--", *CARD_FOLDERS],
            capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        out = []
    if out:
        return sorted(out)
    return sorted(
        str(p.relative_to(REPO))
        for folder in CARD_FOLDERS
        for p in (REPO / folder).rglob("*")
        if p.is_file()
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in BUILD_INPUTS:
        if (REPO / name).is_file():
            shutil.copy2(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "shipped")
    for folder in ("benchmark", *CARD_FOLDERS):
        shutil.copytree(REPO / folder, src / folder, ignore=ignore)
    # The installed setuptools when it can build this project (PEP 639 licence fields need
    # 77), else pip's isolated build, which fetches one.
    isolation = ["--no-build-isolation"] if _version("setuptools") >= (77,) else []
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q",
         "--disable-pip-version-check", "-w", str(tmp / "dist"), str(src)],
        check=True, cwd=tmp,
    )  # fmt: skip
    (whl,) = (tmp / "dist").glob("*.whl")
    return whl


@pytest.fixture(scope="module")
def site(wheel: Path) -> Path:
    target = wheel.parent.parent / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--disable-pip-version-check",
         "--target", str(target), str(wheel)],
        check=True,
    )  # fmt: skip
    return target


def installed(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python *args` with the installed wheel first on the path, from `cwd`."""
    env = {k: v for k, v in os.environ.items() if k not in DIRS_ENV.values()}
    env["PYTHONPATH"] = str(site)
    env["PYTHONNOUSERSITE"] = "1"
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def listed_names(stdout: str) -> list[str]:
    return [line.split()[0] for line in stdout.splitlines()[1:] if line.strip()]


def test_wheel_holds_only_the_package_and_every_card(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"benchmark", DIST_INFO}
    assert f"{DIST_INFO}/licenses/LICENSE" in names
    missing = [f for f in repo_card_files() if f"benchmark/shipped/{f}" not in names]
    assert not missing, f"not in the wheel: {missing}"
    shipped = [n for n in names if n.startswith("benchmark/shipped/")]
    assert len(shipped) == len(repo_card_files())  # nothing else: no results/ablation cards
    assert not [n for n in names if "ablation" in n or "nomscn" in n or n.endswith("__init__.py")
                and n.startswith("benchmark/shipped/")]  # fmt: skip
    assert "benchmark/py.typed" in names
    assert any(n.startswith("benchmark/report/templates/") for n in names)


def test_installed_wheel_lists_runs_and_renders_outside_the_checkout(
    site: Path, tmp_path: Path, make_kadid
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    where = installed(site, work, "-c", "import benchmark; print(benchmark.__file__)")
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(site), where.stdout  # not the checkout's

    from benchmark import api

    for what, names in (
        ("attacks", api.list_attacks()),
        ("datasets", api.list_datasets()),
        ("models", api.list_models()),
    ):
        done = installed(site, work, "-m", "benchmark", "list", what)
        assert done.returncode == 0, done.stderr
        assert sorted(listed_names(done.stdout)) == sorted(names), what

    data = make_kadid(tmp_path / "kadid")
    done = installed(
        site, work, "-m", "benchmark", "-q", "run", "--models", "cnniqa-builtin,ssim",
        "--attacks", "fgsm", "--limit", "4", "--dataset", "kadid10k", "--data-root", str(data),
        "--split", "all", "--batch-size", "4",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    results = work / "results" / "benchmark.h5"  # the default: under the current folder
    assert (work / "results" / "leaderboard.html").is_file()
    cells = ResultStore(results).read_cells()
    assert sorted(c.key.model for c in cells) == ["cnniqa-builtin", "ssim"]
    assert all(c.status == "done" and len(c) == 4 for c in cells)
    assert {c.meta["git"] for c in cells} == {"unknown"}  # no checkout to take a revision of
    assert not (REPO / "benchmark" / "shipped").exists()
