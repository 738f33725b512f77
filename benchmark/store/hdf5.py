"""The HDF5 results store: one file per run, crash-safe, resumable, O(cell) writes.

Layout (docs/architecture.md, "The results store")::

    <file>                 the compacted cells
    <file>.journal/        cells written since the last compaction, one small file each
    /cells/<model>/<dataset>/<attack>/<eps>/<direction>/   one group per cell (in both)
        image_id, mos, clean, attacked, linf, l2, psnr, ssim, seconds   per-image datasets
        l0, queries      optional per-image datasets (pixels changed, score queries)
        group (optional: each image's source photograph), example_delta (optional)
        certified/{lower, upper, ...} (optional: a smoothed model's certificate, a subgroup
        older readers skip)
        attrs: status, gradient, reason, config_hash, key (JSON), attack_config (JSON),
               model_info (JSON), meta (JSON: versions, git, device, wall time, seed),
               summary (JSON, optional: the cell's scores, computed when it was written)

Path components are percent-encoded, so any model name (a plugin path with slashes, say)
is one group. Why a write costs O(the cell) and a crash never corrupts: a write never
touches the compacted file. It writes the cell alone into `<file>.journal/.tmp-<pid>-<name>`,
fsyncs it and `os.replace`s it to its entry name (a hash of the cell's path), so a kill -9
at any instant leaves either no entry or a complete one (the commit). Readers merge the
journal over the compacted file (a journal entry is newer). `compact()`, run when a
writer's block ends, copies both (h5py `copy`, no decoding) into `<file>.tmp-<pid>`, fsyncs
and replaces the file, then deletes the entries it took in: O(the store) once per run, not
once per cell; a kill during compaction leaves the old file and the journal, which still
read the same. Writers take an exclusive `fcntl` lock on `<file>.lock`; a second run on
the same file waits briefly, then stops with a clear error. Files of format 1 (no journal,
no summaries) read unchanged.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, unquote

import h5py
import numpy as np

from benchmark.budget import budget_label
from benchmark.errors import StoreError
from benchmark.store.cell import (
    CERTIFIED_FIELDS,
    OPTIONAL_PER_IMAGE_FIELDS,
    PER_IMAGE_FIELDS,
    CellKey,
    CellResult,
    StoredCell,
)

FORMAT_VERSION = 2  # 2: journal beside the file, summaries, index; 1 reads as is
INDEX = "index"  # one JSON header per cell, written by compaction (format 2)
LOCK_TIMEOUT_S = 10.0
_STR = h5py.string_dtype("utf-8")
T = TypeVar("T")
_TMP = ".tmp-"


def cell_path(key: CellKey) -> str:
    parts = (key.model, key.dataset, key.attack, budget_label(key.eps), key.direction)
    return "cells/" + "/".join(quote(p, safe="") for p in parts)


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=json_default)


def json_default(obj: Any) -> Any:
    """JSON for numpy values, tuples and paths (repr otherwise): for store attributes and
    the per-cell summaries, so a summary reads back as it was made."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray | tuple):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    return repr(obj)


class ResultStore:
    """Reads and extends one results file (and its journal)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.journal = self.path.with_name(self.path.name + ".journal")
        self._lock_fh: Any = None

    # -- locking -------------------------------------------------------------------------

    @contextlib.contextmanager
    def writer(
        self, timeout: float = LOCK_TIMEOUT_S, compact: bool = True
    ) -> Iterator[ResultStore]:
        """Hold the store's write lock for a whole run (other runs on this file are refused).

        On entry, temporary files left by a killed writer are removed (the lock says no
        other writer is alive); on a normal exit the journal is compacted into the file.
        """
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fh = open(self.lock_path, "a+")  # noqa: SIM115  (held for the block)
        except OSError as exc:
            raise StoreError(f"cannot write results to {self.path.parent}: {exc.strerror}") from exc
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    fh.close()
                    raise StoreError(
                        f"{self.path} is in use by another run (lock {self.lock_path}); "
                        "wait for it or write to another file with --out"
                    ) from None
                time.sleep(0.1)
        self._lock_fh = fh
        try:
            self._remove_stale_tmp()
            yield self
            if compact:
                self.compact()
        finally:
            self._lock_fh = None
            fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()

    def _remove_stale_tmp(self) -> None:
        stale = list(self.path.parent.glob(f"{glob.escape(self.path.name)}{_TMP}*"))
        if self.journal.is_dir():
            stale += list(self.journal.glob(f"{_TMP}*"))
        for p in stale:
            with contextlib.suppress(OSError):
                p.unlink()

    # -- reading -------------------------------------------------------------------------

    def _entries(self) -> list[Path]:
        """Committed journal entries (temporary files are not entries)."""
        if not self.journal.is_dir():
            return []
        return sorted(p for p in self.journal.iterdir() if not p.name.startswith(_TMP))

    def _merged(
        self, items: Callable[[h5py.File], Iterator[tuple[str, T]]]
    ) -> Iterator[tuple[Path, T]]:
        """(file, item) of every stored cell, `items(fh)` giving (cell path, item) of one open
        file; a journal entry replaces the file's copy.

        The journal is read first: a compaction running meanwhile replaces the file before
        it deletes the entries it took in, so an entry gone by the time it is opened is in
        the file opened after it.
        """
        seen: set[str] = set()
        for entry in self._entries():
            try:
                fh = _open_results(entry)
            except FileNotFoundError:
                continue
            with fh:
                for name, item in items(fh):
                    seen.add(name)
                    yield entry, item
        if not self.path.exists():
            return
        with _open_results(self.path) as fh:
            for name, item in items(fh):
                if name not in seen:
                    yield self.path, item

    def _groups(self) -> Iterator[tuple[Path, h5py.Group]]:
        return self._merged(lambda fh: ((g.name, g) for g in _cell_groups(fh.get("cells"))))

    def _headers(self) -> Iterator[tuple[Path, dict[str, Any]]]:
        """As `_groups`, as headers: from the file's index where it has one (format 2)."""
        return self._merged(lambda fh: ((h["path"], h) for h in _file_headers(fh)))

    def cell_index(self) -> dict[CellKey, dict[str, str]]:
        """Key -> {status, config_hash} of every stored cell, without reading arrays."""
        return {
            h["key"]: {"status": h["status"], "config_hash": h["config_hash"]}
            for _, h in self._headers()
        }

    def read_cells(self) -> list[CellResult]:
        """Every stored cell with its arrays, in cell-path order."""
        cells = [(g.name, _read_cell(g)) for _, g in self._groups()]
        return [c for _, c in sorted(cells, key=lambda t: t[0])]

    def read_stored(self) -> list[StoredCell]:
        """Every stored cell's header; arrays are read when asked (`StoredCell`)."""
        cells = [(h["path"], _stored_cell(self, f, h)) for f, h in self._headers()]
        return [c for _, c in sorted(cells, key=lambda t: t[0])]

    def _load(self, source: Path, name: str) -> CellResult:
        """One cell's arrays; a journal entry compacted meanwhile is read from the file."""
        for path in (source, self.path) if source != self.path else (source,):
            try:
                fh = _open_results(path)
            except FileNotFoundError:
                continue
            with fh:
                if name in fh:
                    return _read_cell(fh[name])
        raise StoreError(f"{self.path}: cell {unquote(name)} is gone (file changed while read)")

    # -- writing -------------------------------------------------------------------------

    def write_cell(
        self, cell: CellResult, config_hash: str, summary: dict[str, Any] | None = None
    ) -> None:
        """Add or replace one cell: one journal entry, committed by an atomic rename.

        Outside a `writer()` block the write takes the lock and compacts at once (a file
        complete by itself after every call, at O(the store) a call); a run holds the
        writer, so its writes cost O(the cell) and it compacts once, at its end."""
        if self._lock_fh is None:
            with self.writer():
                self.write_cell(cell, config_hash, summary)
            return
        _check_lengths(cell)
        target = cell_path(cell.key)
        name = hashlib.sha1(target.encode()).hexdigest() + ".h5"
        tmp = self.journal / f"{_TMP}{os.getpid()}-{name}"
        try:
            self.journal.mkdir(exist_ok=True)
            with h5py.File(tmp, "w") as out:
                out.attrs["format_version"] = FORMAT_VERSION
                _write_cell(out.create_group(target), cell, config_hash, summary)
            _commit(tmp, self.journal / name)
        except OSError as exc:
            _raise_write_error(self.path, tmp, exc)

    def compact(self) -> None:
        """Fold the journal into the file (needs the write lock); a no-op without entries."""
        if self._lock_fh is None:
            with self.writer():
                return
        entries = self._entries()
        if not entries:
            return
        tmp = self.path.with_name(f"{self.path.name}{_TMP}{os.getpid()}")
        try:
            with h5py.File(tmp, "w") as out:
                out.attrs["format_version"] = FORMAT_VERSION
                index = []
                for _, group in self._groups():
                    index.append(_header_json(group))  # what _file_headers reads back
                    out.copy(
                        group, out.require_group(group.parent.name), group.name.rsplit("/", 1)[-1]
                    )
                out.create_dataset(INDEX, data=np.array(sorted(index), dtype=object), dtype=_STR)
            _commit(tmp, self.path)
        except OSError as exc:
            _raise_write_error(self.path, tmp, exc)
        for entry in entries:  # only after the file holds them
            with contextlib.suppress(OSError):
                entry.unlink()
        with contextlib.suppress(OSError):
            self.journal.rmdir()


def _commit(tmp: Path, target: Path) -> None:
    """fsync `tmp`, rename it over `target` and fsync the folder: all or nothing."""
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, target)
    _fsync_dir(target.parent)


def _raise_write_error(path: Path, tmp: Path, exc: OSError) -> None:
    with contextlib.suppress(OSError):
        tmp.unlink()
    why = "disk full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
    raise StoreError(f"cannot write {path} ({why}); cells stored before are unchanged") from exc


def _open_results(path: Path) -> h5py.File:
    """A results file (or journal entry) opened for reading, its format checked."""
    try:
        fh = h5py.File(path, "r")
    except FileNotFoundError:
        raise
    except OSError as exc:
        if not path.exists():
            raise FileNotFoundError(str(path)) from exc
        raise StoreError(f"{path} is not a readable results file: {exc}") from exc
    version = fh.attrs.get("format_version")
    if version is None or int(version) > FORMAT_VERSION:
        fh.close()
        raise StoreError(f"{path}: not a results file of this benchmark (format {version!r})")
    return fh


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _cell_groups(root: h5py.Group | None) -> Iterator[h5py.Group]:
    """Every group that holds a cell (marked by its `status` attribute), in sorted order."""
    if root is None:
        return
    for name in sorted(root):
        item = root[name]
        if isinstance(item, h5py.Group):
            if "status" in item.attrs:
                yield item
            else:
                yield from _cell_groups(item)


def _check_lengths(cell: CellResult) -> None:
    n = len(cell)
    optional = [f for f in (*OPTIONAL_PER_IMAGE_FIELDS, "group") if getattr(cell, f) is not None]
    for name in (*PER_IMAGE_FIELDS, *optional):
        if np.asarray(getattr(cell, name)).shape != (n,):
            raise StoreError(
                f"cell {cell.key}: {name} has shape {np.shape(getattr(cell, name))}, expected ({n},)"
            )
    for name, values in (cell.certified or {}).items():
        if name not in CERTIFIED_FIELDS or np.shape(values) != (n,):
            raise StoreError(
                f"cell {cell.key}: certified {name} of shape {np.shape(values)} is not one of "
                f"{', '.join(CERTIFIED_FIELDS)} of shape ({n},)"
            )


def _write_cell(
    group: h5py.Group, cell: CellResult, config_hash: str, summary: dict[str, Any] | None
) -> None:
    group.create_dataset("image_id", data=np.asarray(cell.image_id, dtype=object), dtype=_STR)
    for name in PER_IMAGE_FIELDS:
        group.create_dataset(name, data=np.asarray(getattr(cell, name), dtype=np.float64))
    for name in OPTIONAL_PER_IMAGE_FIELDS:  # absent, not NaN, where a cell has none
        if getattr(cell, name) is not None:
            group.create_dataset(name, data=np.asarray(getattr(cell, name), dtype=np.float64))
    key = cell.key
    group.attrs["key"] = _json(
        {
            "model": key.model,
            "dataset": key.dataset,
            "attack": key.attack,
            "eps": key.eps,
            "direction": key.direction,
        }
    )
    group.attrs["status"] = cell.status
    group.attrs["gradient"] = cell.gradient
    group.attrs["reason"] = cell.reason
    group.attrs["config_hash"] = config_hash
    group.attrs["attack_config"] = _json(cell.attack_config)
    group.attrs["model_info"] = _json(cell.model_info)
    group.attrs["meta"] = _json(cell.meta)
    if summary is not None:
        # in its own order: the order of a leaderboard's columns
        group.attrs["summary"] = json.dumps(summary, default=json_default)
    if cell.example_delta is not None:
        group.create_dataset("example_delta", data=np.asarray(cell.example_delta, dtype=np.uint8))
    if cell.group is not None:
        group.create_dataset("group", data=np.asarray(cell.group, dtype=object), dtype=_STR)
    if cell.certified is not None:
        cert = group.create_group("certified")
        for name, values in cell.certified.items():
            cert.create_dataset(name, data=np.asarray(values, dtype=np.float64))


_RAW_JSON_ATTRS = ("key", "model_info", "attack_config", "meta")
_TEXT_ATTRS = ("status", "gradient", "reason", "config_hash")


def _header_json(group: h5py.Group) -> str:
    """A cell's header (its attributes, array length, example flag) as one JSON text, built
    from the stored JSON attributes without parsing them: one entry of the file's index."""
    a = group.attrs
    parts = [f'"path":{json.dumps(group.name)}']
    parts += [f'"{k}":{a[k]}' for k in _RAW_JSON_ATTRS]
    parts += [f'"{k}":{json.dumps(str(a.get(k, "")))}' for k in _TEXT_ATTRS]
    parts.append(f'"summary":{a.get("summary", "null")}')
    parts.append(f'"n_images":{int(group["image_id"].shape[0])}')
    parts.append(f'"has_example":{"true" if "example_delta" in group else "false"}')
    return "{" + ",".join(parts) + "}"


def _parse_header(text: str | bytes) -> dict[str, Any]:
    h = json.loads(text)
    k = h["key"]
    h["key"] = CellKey(k["model"], k["dataset"], k["attack"], float(k["eps"]), k["direction"])
    return h


def _file_headers(fh: h5py.File) -> Iterator[dict[str, Any]]:
    """Every cell header of one open file: its index, or its groups (format 1, journal)."""
    if INDEX in fh:
        return (_parse_header(t) for t in fh[INDEX].asstr()[()])
    return (_group_header(g) for g in _cell_groups(fh.get("cells")))


def _group_header(group: h5py.Group) -> dict[str, Any]:
    try:
        return _parse_header(_header_json(group))
    except (KeyError, ValueError, TypeError) as exc:
        raise StoreError(f"cell {unquote(group.name)} is malformed: {exc}") from exc


# the header fields a CellResult (and a StoredCell) takes
_CELL_HEADER = ("key", "status", "gradient", "reason", "model_info", "attack_config", "meta",
                "summary")  # fmt: skip


def _stored_cell(store: ResultStore, source: Path, h: dict[str, Any]) -> StoredCell:
    name = h["path"]
    try:
        return StoredCell(
            **{k: h[k] for k in _CELL_HEADER},
            n_images=int(h["n_images"]),
            has_example=bool(h["has_example"]),
            loader=lambda: store._load(source, name),
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise StoreError(f"cell {unquote(name)} is malformed: {exc}") from exc


def _read_cell(group: h5py.Group) -> CellResult:
    try:
        h = _group_header(group)
        arrays = {name: group[name][()] for name in PER_IMAGE_FIELDS}
        arrays |= {n: group[n][()] for n in OPTIONAL_PER_IMAGE_FIELDS if n in group}
        return CellResult(
            **{k: h[k] for k in _CELL_HEADER},
            image_id=_strings(group["image_id"]),
            example_delta=group["example_delta"][()] if "example_delta" in group else None,
            group=_strings(group["group"]) if "group" in group else None,
            certified=_certified(group),
            **arrays,
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise StoreError(f"cell {unquote(group.name)} is malformed: {exc}") from exc


def _certified(group: h5py.Group) -> dict[str, np.ndarray] | None:
    if "certified" not in group:
        return None
    cert = group["certified"]
    return {name: cert[name][()] for name in CERTIFIED_FIELDS if name in cert}


def _strings(dataset: h5py.Dataset) -> np.ndarray:
    return np.array([s.decode() if isinstance(s, bytes) else s for s in dataset[()]], dtype=object)


def read_results(
    paths: list[str | os.PathLike[str]], lazy: bool = False
) -> list[CellResult] | list[StoredCell]:
    """Cells of several result files (a later file's cell replaces an earlier one's).

    `lazy`: headers only (`StoredCell`, arrays read on access), for views of many cells.
    """
    cells: dict[CellKey, Any] = {}
    for p in paths:
        if not Path(p).is_file() and not ResultStore(p).journal.is_dir():
            raise StoreError(f"results file not found: {p}")
        store = ResultStore(p)
        for cell in store.read_stored() if lazy else store.read_cells():
            cells[cell.key] = cell
    return list(cells.values())
