"""Executors: where a run's model groups run. `LocalExecutor` runs them in this process;
`RayExecutor` runs one Ray task per cell on a cluster. Both hand every finished cell to the
runner's sink, so only the driver writes the store.

Ray, why per cell: cells are independent, so a cluster runs as many at once as it has slots,
and a lost worker costs one cell (Ray retries it, `max_retries`). Each task builds its own
model and dataset (clean scores are recomputed per task, the price of independence). The
driver alone writes the store, as results arrive, so a driver crash loses only the cells in
flight and a rerun resumes like a local one. Trained-attack artifacts live in the cache folder
(`$BENCHMARK_CACHE/artifacts`): put it on storage every node sees to share them.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any, Protocol

from tqdm import tqdm

from benchmark.attacks.base import Attack
from benchmark.engine.cells import CellSink, cell_key, make_attack, run_group
from benchmark.engine.config import RunConfig
from benchmark.errors import BenchmarkError, ConfigError, ModelUnavailable
from benchmark.store.cell import CellKey, CellResult

if TYPE_CHECKING:
    from benchmark.datasets.base import IQADataset

Todo = dict[str, list[tuple[CellKey, Attack]]]

log = logging.getLogger(__name__)


class Executor(Protocol):
    """Runs the cells of `todo` (model -> cells) and hands each finished one to `sink`.

    Returns {model: why} for models that could not be built here (missing weights, ...).
    """

    def run(
        self,
        cfg: RunConfig,
        todo: Todo,
        sink: CellSink,
        progress: bool,
        dataset: IQADataset | None = None,
    ) -> dict[str, str]: ...


class LocalExecutor:
    """Model groups one after another in this process (the default)."""

    def run(
        self,
        cfg: RunConfig,
        todo: Todo,
        sink: CellSink,
        progress: bool,
        dataset: IQADataset | None = None,
    ) -> dict[str, str]:
        unavailable: dict[str, str] = {}
        for model_name, group in tqdm(
            list(todo.items()), desc="models", unit="model", disable=not progress
        ):
            try:
                run_group(cfg, model_name, group, sink, progress, dataset)
            except ModelUnavailable as exc:
                log.error("skipping %s: %s", model_name, exc)
                unavailable[model_name] = str(exc)
        return unavailable


TASK_RETRIES = 3


def _cell_task(
    cfg: RunConfig, model_name: str, attack_name: str, eps: float, direction: str
) -> Any:
    """Runs on a Ray worker: one cell from scratch, through the local group runner."""
    attack = make_attack(cfg, attack_name, eps, direction)
    done: list[tuple[CellResult, str]] = []
    try:
        run_group(cfg, model_name, [(cell_key(cfg, model_name, attack), attack)],
                  lambda cell, chash: done.append((cell, chash)), progress=False)  # fmt: skip
    except ModelUnavailable as exc:
        return ("unavailable", str(exc))
    return ("done", done[0])


def _init_ray(address: str | None) -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("--executor ray needs Ray: pip install -e '.[ray]'") from None
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:  # a local instance on this machine's cores
            ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False)
    return ray


class RayExecutor:
    """One Ray task per cell on the cluster at `address` (a local instance when None)."""

    def __init__(self, address: str | None = None) -> None:
        self.address = address

    def run(
        self,
        cfg: RunConfig,
        todo: Todo,
        sink: CellSink,
        progress: bool,
        dataset: IQADataset | None = None,
    ) -> dict[str, str]:
        """Submit every cell as a task; hand each to `sink` as it finishes."""
        return _run_ray(cfg, todo, sink, self.address, progress)


def make_executor(name: str = "local", address: str | None = None) -> Executor:
    """The executor called `name`: "local" (this process) or "ray" (the cluster at `address`,
    a local one when None)."""
    if name == "ray":
        return RayExecutor(address)
    if name != "local":
        raise ConfigError(f"executor must be local or ray, got {name!r}")
    return LocalExecutor()


def _run_ray(
    cfg: RunConfig, todo: Todo, sink: CellSink, address: str | None, progress: bool
) -> dict[str, str]:
    ray = _init_ray(address)
    gpus = 1 if cfg.device.startswith("cuda") else 0
    task = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=TASK_RETRIES)(_cell_task)
    pending = {
        task.remote(cfg, key.model, attack.info.name, key.eps, key.direction): key
        for cells in todo.values()
        for key, attack in cells
    }
    unavailable: dict[str, str] = {}
    errors: list[str] = []
    bar = tqdm(total=len(pending), desc="cells (ray)", unit="cell", disable=not progress)
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        ref = ready[0]
        key = pending.pop(ref)
        try:
            status, payload = ray.get(ref)
        except ray.exceptions.RayError as exc:  # retries exhausted: keep the others going
            log.error("cell %s failed on Ray after %d retries: %s", key, TASK_RETRIES, exc)
            errors.append(str(key))
        else:
            if status == "unavailable":
                unavailable[key.model] = payload
            else:
                sink(*payload)
        bar.update()
    bar.close()
    if errors:
        raise BenchmarkError(
            f"{len(errors)} cell(s) lost on Ray ({'; '.join(errors[:3])}); finished cells are "
            "stored, rerun the same command to retry the rest"
        )
    return unavailable
