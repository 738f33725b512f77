"""The HDF5 store: round trip, atomic replacement, locking, clear errors."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

import benchmark.store.hdf5 as store_mod
from benchmark.errors import StoreError
from benchmark.store.cell import CellKey, CellResult
from benchmark.store.hdf5 import ResultStore, read_results


def cell(model: str = "m", attack: str = "ifgsm", n: int = 5, seed: int = 0) -> CellResult:
    rng = np.random.default_rng(seed)
    return CellResult(
        key=CellKey(model, "builtin", attack, 8 / 255, "up"),
        status="done",
        image_id=np.array([f"img/{i}.png" for i in range(n)], dtype=object),
        mos=rng.uniform(size=n),
        clean=rng.uniform(size=n),
        attacked=rng.uniform(size=n),
        linf=np.full(n, 8 / 255),
        l2=rng.uniform(size=n),
        psnr=np.full(n, np.inf),
        ssim=rng.uniform(size=n),
        seconds=rng.uniform(size=n),
        model_info={"name": model, "lower_better": False, "score_range": [0, 1]},
        attack_config={"name": attack, "params": {"steps": 3}},
        meta={"versions": {"torch": "x"}, "seed": 0},
    )


def test_round_trip_with_awkward_names(tmp_path: Path):
    s = ResultStore(tmp_path / "r.h5")
    a = cell("plugins/def.py:My/Model")
    b = cell("<script>alert(1)</script>", seed=1)
    s.write_cell(a, "h1")
    s.write_cell(b, "h2")
    got = {c.key: c for c in s.read_cells()}
    assert set(got) == {a.key, b.key}
    for want in (a, b):
        have = got[want.key]
        assert list(have.image_id) == list(want.image_id)
        np.testing.assert_array_equal(have.attacked, want.attacked)
        np.testing.assert_array_equal(have.psnr, want.psnr)
        assert have.model_info == want.model_info and have.attack_config == want.attack_config
    assert s.cell_index()[a.key] == {"status": "done", "config_hash": "h1"}


def test_rewriting_a_cell_replaces_it(tmp_path: Path):
    s = ResultStore(tmp_path / "r.h5")
    s.write_cell(cell(seed=0), "h1")
    s.write_cell(cell("other"), "h1")
    s.write_cell(cell(seed=5), "h2")
    cells = {c.key.model: c for c in s.read_cells()}
    assert len(cells) == 2
    np.testing.assert_array_equal(cells["m"].attacked, cell(seed=5).attacked)


def test_failed_write_leaves_stored_cells_intact(tmp_path: Path, monkeypatch):
    s = ResultStore(tmp_path / "r.h5")
    s.write_cell(cell("kept"), "h")
    before = (tmp_path / "r.h5").read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_mod, "_write_cell", disk_full)
    with pytest.raises(StoreError, match="disk full.*unchanged"):
        s.write_cell(cell("new"), "h")
    assert (tmp_path / "r.h5").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []
    assert [c.key.model for c in s.read_cells()] == ["kept"]


def test_second_writer_is_refused_with_a_clear_message(tmp_path: Path):
    s = ResultStore(tmp_path / "r.h5")
    with (
        s.writer(),
        pytest.raises(StoreError, match="in use by another run"),
        ResultStore(tmp_path / "r.h5").writer(timeout=0.2),
    ):
        pass


def test_unwritable_results_path_is_a_store_error(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="cannot write results"):
        ResultStore(blocker / "r.h5").write_cell(cell(), "h")


def test_foreign_or_corrupt_files_are_refused(tmp_path: Path):
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(StoreError, match="not a readable results file"):
        ResultStore(junk).read_cells()
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as fh:
        fh["x"] = 1
    with pytest.raises(StoreError, match="not a results file"):
        ResultStore(foreign).read_cells()
    with pytest.raises(StoreError, match="not found"):
        read_results([tmp_path / "missing.h5"])


def test_read_results_merges_files(tmp_path: Path):
    ResultStore(tmp_path / "a.h5").write_cell(cell("a"), "h")
    ResultStore(tmp_path / "b.h5").write_cell(cell("b"), "h")
    assert sorted(c.key.model for c in read_results([tmp_path / "a.h5", tmp_path / "b.h5"])) == [
        "a",
        "b",
    ]


def test_a_run_writes_journal_entries_and_compacts_once_at_its_end(tmp_path: Path):
    s = ResultStore(tmp_path / "r.h5")
    s.write_cell(cell("first"), "h")  # unlocked: compacted at once
    before = (tmp_path / "r.h5").stat()
    with s.writer():
        for i in range(5):
            s.write_cell(cell(f"m{i}", seed=i), "h")
            # the compacted file is not touched by a write inside a run ...
            assert (tmp_path / "r.h5").stat().st_ino == before.st_ino
            # ... yet every committed cell reads, from the journal
            assert len(ResultStore(tmp_path / "r.h5").read_cells()) == i + 2
        assert len(list(s.journal.iterdir())) == 5
    assert not s.journal.exists()  # compacted when the run ended
    cells = {c.key.model: c for c in s.read_cells()}
    assert sorted(cells) == ["first", "m0", "m1", "m2", "m3", "m4"]
    np.testing.assert_array_equal(cells["m3"].attacked, cell("m3", seed=3).attacked)
    with h5py.File(tmp_path / "r.h5") as fh:
        assert fh.attrs["format_version"] == store_mod.FORMAT_VERSION


def test_a_journal_entry_replaces_the_compacted_copy(tmp_path: Path):
    s = ResultStore(tmp_path / "r.h5")
    s.write_cell(cell(seed=0), "h1")
    with s.writer(compact=False):
        s.write_cell(cell(seed=7), "h2")
    assert s.journal.exists()  # a killed run leaves its journal: it still reads
    (only,) = s.read_cells()
    np.testing.assert_array_equal(only.attacked, cell(seed=7).attacked)
    assert s.cell_index()[only.key]["config_hash"] == "h2"
    with s.writer():  # the next run's end folds it in
        pass
    assert not s.journal.exists()
    (only,) = s.read_cells()
    np.testing.assert_array_equal(only.attacked, cell(seed=7).attacked)


def test_a_killed_writers_temporary_files_are_removed_by_the_next_writer(tmp_path: Path):
    s = ResultStore(tmp_path / "r.h5")
    s.write_cell(cell(), "h")
    s.journal.mkdir()
    stale = [s.journal / ".tmp-999-x.h5", tmp_path / "r.h5.tmp-999"]
    for p in stale:
        p.write_bytes(b"half a file")
    assert len(s.read_cells()) == 1  # readers skip them
    with s.writer():
        pass
    assert not any(p.exists() for p in stale)


def test_lazy_cells_read_arrays_on_access_and_keep_the_summary(tmp_path: Path):
    s = ResultStore(tmp_path / "r.h5")
    with s.writer(compact=False):
        s.write_cell(cell("a"), "h", summary={"abs_gain": 0.5, "x": [1, 2]})
    (lazy,) = read_results([tmp_path / "r.h5"], lazy=True)
    assert lazy.summary == {"abs_gain": 0.5, "x": [1, 2]}
    assert len(lazy) == 5 and not lazy.has_example and lazy.uses_gradient
    s.compact()  # the journal entry it was read from is gone: it reads from the file
    np.testing.assert_array_equal(lazy.clean, cell("a").clean)
    assert list(lazy.load().image_id) == list(cell("a").image_id)
    with pytest.raises(AttributeError):
        _ = lazy.no_such_field
