"""The runner: expands a run into cells, skips stored ones, hands the rest to an executor,
stores each cell as it comes back.

Data flow: `RunConfig` -> `plan_cells` (CellKeys) -> skip cells stored with the same config
hash -> `executor.run(cfg, todo, sink)` (`benchmark.engine.executors`; local by default) ->
`run_group` per model (`benchmark.engine.cells`) -> `cell_summary` + `ResultStore.write_cell`
(a journal entry; compacted when the run ends). Only this
process writes the store.
"""

from __future__ import annotations

import logging
import time

from benchmark.attacks.base import Attack
from benchmark.datasets.registry import create_dataset
from benchmark.engine.cells import config_hash, plan_cells
from benchmark.engine.config import RunConfig, RunReport, resolve_attacks
from benchmark.engine.executors import Executor, LocalExecutor
from benchmark.report.tables import cell_summary
from benchmark.store.cell import CellKey, CellResult
from benchmark.store.hdf5 import ResultStore

__all__ = ["RunConfig", "RunReport", "resolve_attacks", "run"]

log = logging.getLogger(__name__)


def run(
    cfg: RunConfig,
    store: ResultStore,
    progress: bool = True,
    force: bool = False,
    executor: Executor | None = None,
) -> RunReport:
    """Run every cell of `cfg` not yet stored with the same config; store each when done.

    `executor` decides where model groups run (`LocalExecutor`, in this process, by default;
    `RayExecutor` on a cluster). Either way only this process writes the store.
    """
    executor = executor or LocalExecutor()
    report = RunReport()
    t0 = time.perf_counter()
    cells = plan_cells(cfg)
    dataset = create_dataset(cfg.dataset, cfg.split, cfg.data_root)  # fail fast on bad data
    with store.writer():
        stored = store.cell_index()
        todo: dict[str, list[tuple[CellKey, Attack]]] = {}
        for key, attack in cells:
            have = stored.get(key)
            if (
                not force
                and have
                and have["status"] != "failed"
                and have["config_hash"] == config_hash(cfg, attack)
            ):
                report.skipped.append(key)
                continue
            if have and have["status"] != "failed":
                log.info("recomputing %s: its stored config differs", key)
            todo.setdefault(key.model, []).append((key, attack))
        if report.skipped:
            log.info("%d cell(s) already stored in %s: skipped", len(report.skipped), store.path)

        def sink(cell: CellResult, chash: str) -> None:
            # scored once here, so a leaderboard of many cells reads it back (O(1) a cell)
            store.write_cell(cell, chash, summary=cell_summary(cell))
            if cell.status == "failed":
                report.failed.append((cell.key, cell.reason))
            report.computed.append(cell.key)

        report.unavailable.update(executor.run(cfg, todo, sink, progress, dataset))
    report.wall_s = time.perf_counter() - t0
    return report
