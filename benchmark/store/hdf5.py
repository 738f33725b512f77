"""The HDF5 results store: one file per run, crash-safe and resumable.

Layout (docs/architecture.md, "The results store")::

    /cells/<model>/<dataset>/<attack>/<eps>/<direction>/   one group per cell
        image_id, mos, clean, attacked, linf, l2, psnr, ssim, seconds   per-image datasets
        attrs: status, gradient, reason, config_hash, key (JSON), attack_config (JSON),
               model_info (JSON), meta (JSON: versions, git, device, wall time, seed)

Path components are percent-encoded, so any model name (a plugin path with slashes, say)
is one group. Why the file is never corrupted: a write never touches the live file. It
copies the stored cells (h5py `copy`, no decoding) and the new one into `<file>.tmp-<pid>`,
fsyncs it and `os.replace`s it over the live file, so a kill -9 at any instant leaves
either the old or the new complete file. Writers take an exclusive `fcntl` lock on
`<file>.lock`; a second run on the same file waits briefly, then stops with a clear error.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import h5py
import numpy as np

from benchmark.budget import budget_label
from benchmark.errors import StoreError
from benchmark.store.cell import PER_IMAGE_FIELDS, CellKey, CellResult

FORMAT_VERSION = 1
LOCK_TIMEOUT_S = 10.0
_STR = h5py.string_dtype("utf-8")


def cell_path(key: CellKey) -> str:
    parts = (key.model, key.dataset, key.attack, budget_label(key.eps), key.direction)
    return "cells/" + "/".join(quote(p, safe="") for p in parts)


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=_json_default)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray | tuple):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    return repr(obj)


class ResultStore:
    """Reads and atomically extends one results file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._lock_fh: Any = None

    # -- locking -------------------------------------------------------------------------

    @contextlib.contextmanager
    def writer(self, timeout: float = LOCK_TIMEOUT_S) -> Iterator[ResultStore]:
        """Hold the store's write lock for a whole run (other runs on this file are refused)."""
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
            yield self
        finally:
            self._lock_fh = None
            fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()

    # -- reading -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _open_read(self) -> Iterator[h5py.File | None]:
        if not self.path.exists():
            yield None
            return
        try:
            fh = h5py.File(self.path, "r")
        except OSError as exc:
            raise StoreError(f"{self.path} is not a readable results file: {exc}") from exc
        with fh:
            version = fh.attrs.get("format_version")
            if version is None or int(version) > FORMAT_VERSION:
                raise StoreError(
                    f"{self.path}: not a results file of this benchmark (format {version!r})"
                )
            yield fh

    def cell_index(self) -> dict[CellKey, dict[str, str]]:
        """Key -> {status, config_hash} of every stored cell, without reading arrays."""
        out: dict[CellKey, dict[str, str]] = {}
        with self._open_read() as fh:
            if fh is None or "cells" not in fh:
                return out
            for group in _cell_groups(fh["cells"]):
                key = _key_from_attrs(group)
                out[key] = {
                    "status": str(group.attrs["status"]),
                    "config_hash": str(group.attrs.get("config_hash", "")),
                }
        return out

    def read_cells(self) -> list[CellResult]:
        with self._open_read() as fh:
            if fh is None or "cells" not in fh:
                return []
            return [_read_cell(g) for g in _cell_groups(fh["cells"])]

    # -- writing -------------------------------------------------------------------------

    def write_cell(self, cell: CellResult, config_hash: str) -> None:
        """Add or replace one cell; the live file is replaced atomically."""
        if self._lock_fh is None:
            with self.writer():
                self.write_cell(cell, config_hash)
            return
        _check_lengths(cell)
        tmp = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}")
        target = cell_path(cell.key)
        try:
            with h5py.File(tmp, "w") as out:
                out.attrs["format_version"] = FORMAT_VERSION
                with self._open_read() as old:
                    if old is not None and "cells" in old:
                        for group in _cell_groups(old["cells"]):
                            if group.name.lstrip("/") != target:
                                old.copy(
                                    group,
                                    out.require_group(group.parent.name),
                                    group.name.rsplit("/", 1)[-1],
                                )
                _write_cell(out.create_group(target), cell, config_hash)
                out.flush()
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
            _fsync_dir(self.path.parent)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            why = "disk full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
            raise StoreError(
                f"cannot write {self.path} ({why}); cells stored before are unchanged"
            ) from exc


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _cell_groups(root: h5py.Group) -> Iterator[h5py.Group]:
    """Every group that holds a cell (marked by its `status` attribute), in sorted order."""
    for name in sorted(root):
        item = root[name]
        if isinstance(item, h5py.Group):
            if "status" in item.attrs:
                yield item
            else:
                yield from _cell_groups(item)


def _key_from_attrs(group: h5py.Group) -> CellKey:
    k = json.loads(group.attrs["key"])
    return CellKey(k["model"], k["dataset"], k["attack"], float(k["eps"]), k["direction"])


def _check_lengths(cell: CellResult) -> None:
    n = len(cell)
    for name in PER_IMAGE_FIELDS:
        if np.asarray(getattr(cell, name)).shape != (n,):
            raise StoreError(
                f"cell {cell.key}: {name} has shape {np.shape(getattr(cell, name))}, expected ({n},)"
            )


def _write_cell(group: h5py.Group, cell: CellResult, config_hash: str) -> None:
    group.create_dataset("image_id", data=np.asarray(cell.image_id, dtype=object), dtype=_STR)
    for name in PER_IMAGE_FIELDS:
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
    if cell.example_delta is not None:
        group.create_dataset("example_delta", data=np.asarray(cell.example_delta, dtype=np.uint8))


def _read_cell(group: h5py.Group) -> CellResult:
    try:
        arrays = {name: group[name][()] for name in PER_IMAGE_FIELDS}
        ids = np.array(
            [s.decode() if isinstance(s, bytes) else s for s in group["image_id"][()]], dtype=object
        )
        return CellResult(
            key=_key_from_attrs(group),
            status=str(group.attrs["status"]),  # type: ignore[arg-type]
            image_id=ids,
            model_info=json.loads(group.attrs["model_info"]),
            attack_config=json.loads(group.attrs["attack_config"]),
            gradient=str(group.attrs["gradient"]),  # type: ignore[arg-type]
            reason=str(group.attrs["reason"]),
            meta=json.loads(group.attrs["meta"]),
            example_delta=group["example_delta"][()] if "example_delta" in group else None,
            **arrays,
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise StoreError(f"cell {unquote(group.name)} is malformed: {exc}") from exc


def read_results(paths: list[str | os.PathLike[str]]) -> list[CellResult]:
    """Cells of several result files (a later file's cell replaces an earlier one's)."""
    cells: dict[CellKey, CellResult] = {}
    for p in paths:
        if not Path(p).is_file():
            raise StoreError(f"results file not found: {p}")
        for cell in ResultStore(p).read_cells():
            cells[cell.key] = cell
    return list(cells.values())
