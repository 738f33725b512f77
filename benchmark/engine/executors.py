"""Executors: where a run's model groups run. `LocalExecutor` runs them in this process;
`RayExecutor` runs one Ray task per model group on a cluster. Both hand every finished cell
to the runner's sink, so only the driver writes the store.

Ray, why per model group: a cell's own work (the attack) is often cheaper than what its
model group needs before any attack can run: building the model (a large pretrained
network: seconds to load), decoding the dataset, probing the batch size, checking the input
gradient and scoring the clean images. One task per cell repeated all of that for every
cell, 20-100 times per model in a real run. One task per group does it once, like a local
run, and streams each cell back as it finishes (a Ray generator task), so the driver stores
cells as they come and a crash of anything loses only cells still being computed.

Retries are per cell, by the driver: when a group task's worker dies (killed, out of
memory, its node lost), the cells already received stay stored and a new group task is
submitted for the rest only. The cell that was running when the worker died is charged one
try and goes to the back of the group (so a cell that kills its worker every time cannot
starve the others); a cell is given up after `TASK_RETRIES` retries, a group after
`TASK_RETRIES + 1` tries in a row that finished no cell (a model that cannot even be built).
An exception raised by the group task itself (bad data, a broken plugin) is not retried:
its remaining cells are reported lost, as a local run would stop on it.

Trained attacks: an artifact (`$BENCHMARK_CACHE/artifacts`, written atomically) is keyed by
model, not budget, so a group owns its model's artifacts and trains each once for all its
budgets, and a retried group loads what its earlier try saved. The one case where several
groups need the same artifact is a transfer run (`--attack-source`): every group crafts on
the source model. Then one task trains those artifacts first, and the groups that use them
start when it has finished, so nothing is trained twice (nor written twice at once). Put
the cache folder on storage every node sees to share artifacts across nodes.

Where a group runs is Ray's choice; each asks for 1 CPU, plus 1 GPU with `--device cuda`.
A run with fewer model groups than slots leaves slots idle (the price of building each
model once). The driver alone writes the store, as results arrive, so a driver crash loses
only the cells in flight and a rerun resumes like a local one.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from tqdm import tqdm

from benchmark.attacks.base import Attack
from benchmark.datasets.registry import create_dataset
from benchmark.engine.cells import (
    CellSink,
    GroupContext,
    cell_key,
    fit_attack,
    iter_group,
    make_attack,
    run_group,
)
from benchmark.engine.config import RunConfig
from benchmark.errors import BenchmarkError, ConfigError, ModelUnavailable
from benchmark.models.registry import create_model
from benchmark.store.cell import CellKey

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


TASK_RETRIES = 3  # per cell: tries after the first, when the worker running it dies

# (attack preset, eps, direction): what a worker rebuilds a cell's attack from
CellSpec = tuple[str, "float | None", str]


def _spec(attack: Attack) -> CellSpec:
    return (attack.info.name, attack.eps, attack.direction)


# -- what runs on a Ray worker ---------------------------------------------------------------


def _group_task(cfg: RunConfig, model_name: str, specs: list[CellSpec]) -> Iterator[Any]:
    """Runs on a Ray worker: one model group, each cell streamed back as it finishes."""
    attacks = [make_attack(cfg, *spec) for spec in specs]
    cells = [(cell_key(cfg, model_name, a), a) for a in attacks]
    try:
        for done in iter_group(cfg, model_name, cells, progress=False):
            yield ("done", done)
    except ModelUnavailable as exc:
        yield ("unavailable", str(exc))


def _fit_task(cfg: RunConfig, specs: list[CellSpec]) -> str:
    """Runs on a Ray worker: train (or load) the transfer source's artifacts once, as the
    groups would (same batch size, same gradient check); returns "" or why it did not.

    Only saves time: a group whose artifact is not there trains it itself.
    """
    assert cfg.attack_source
    try:
        model = create_model(cfg.attack_source, cfg.device)
        ctx = GroupContext(model, create_dataset(cfg.dataset, cfg.split, cfg.data_root), cfg)
        ctx.resolve_batch_size()
        first = next(ctx.batches(), None)
        if first is None:
            return "no image"
        ctx.clean_scores(first, ctx.attacker_ref(first))  # runs the groups' gradient check
        for spec in specs:
            attack = make_attack(cfg, *spec)
            if ctx.gradient_ok or attack.info.gradient_free:
                fit_attack(ctx, attack)
    except Exception as exc:  # noqa: BLE001 -- the groups will meet it and report it per cell
        return f"{type(exc).__name__}: {exc}"
    return ""


# -- the driver ------------------------------------------------------------------------------


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
    """One Ray task per model group on the cluster at `address` (a local instance when None)."""

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
        """Submit every model group as a task; hand each cell to `sink` as it arrives."""
        return _RayRun(cfg, todo, sink, _init_ray(self.address), progress).run()


def make_executor(name: str = "local", address: str | None = None) -> Executor:
    """The executor called `name`: "local" (this process) or "ray" (the cluster at `address`,
    a local one when None)."""
    if name == "ray":
        return RayExecutor(address)
    if name != "local":
        raise ConfigError(f"executor must be local or ray, got {name!r}")
    return LocalExecutor()


@dataclass
class _Try:
    """One submitted group task: its model and the cells it has not sent back yet, in the
    order it runs them (so the first is the one in progress)."""

    model: str
    cells: list[tuple[CellKey, Attack]]
    received: int = 0


@dataclass
class _RayRun:
    cfg: RunConfig
    todo: Todo
    sink: CellSink
    ray: Any
    progress: bool
    tries: dict[CellKey, int] = field(default_factory=dict)  # failed tries per cell
    barren: dict[str, int] = field(default_factory=dict)  # group tries in a row with no cell
    pending: dict[Any, _Try] = field(default_factory=dict)  # ObjectRefGenerator -> its try
    unavailable: dict[str, str] = field(default_factory=dict)
    lost: list[str] = field(default_factory=list)
    group_task: Any = None  # the Ray remote function, made in `run`
    bar: Any = None

    def run(self) -> dict[str, str]:
        ray = self.ray
        gpus = 1 if self.cfg.device.startswith("cuda") else 0
        self.group_task = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=0)(_group_task)
        total = sum(len(cells) for cells in self.todo.values())
        self.bar = tqdm(total=total, desc="cells (ray)", unit="cell", disable=not self.progress)
        waiting, fit_ref = self._fit_shared_artifacts(gpus)
        for model, cells in self.todo.items():
            if model not in waiting:
                self._submit(model, list(cells))
        while self.pending or fit_ref is not None:
            ready, _ = ray.wait([*self.pending, *([fit_ref] if fit_ref else [])], num_returns=1)
            if ready[0] not in self.pending:  # the shared artifacts are trained: go on
                self._fit_done(fit_ref)
                fit_ref = None
                for model in waiting:
                    self._submit(model, list(self.todo[model]))
            else:
                self._receive(ready[0])
        self.bar.close()
        if self.lost:
            raise BenchmarkError(
                f"{len(self.lost)} cell(s) lost on Ray ({'; '.join(self.lost[:3])}); finished "
                "cells are stored, rerun the same command to retry the rest"
            )
        return self.unavailable

    def _fit_shared_artifacts(self, gpus: int) -> tuple[list[str], Any]:
        """Transfer runs: one task trains the artifacts several groups share, first.
        Returns the groups that wait for it and its ref (None when nothing is shared)."""
        if not self.cfg.attack_source:
            return [], None
        users: dict[tuple[str, str], list[str]] = {}  # (attack, direction) -> models
        specs: dict[tuple[str, str], CellSpec] = {}
        for model, cells in self.todo.items():
            for _, attack in cells:
                if attack.info.trainable:
                    name = (attack.info.name, attack.direction)
                    specs.setdefault(name, _spec(attack))
                    if model not in users.setdefault(name, []):
                        users[name].append(model)
        shared = [name for name, models in users.items() if len(models) > 1]
        if not shared:
            return [], None
        waiting = sorted({m for name in shared for m in users[name]})
        task = self.ray.remote(num_cpus=1, num_gpus=gpus, max_retries=TASK_RETRIES)(_fit_task)
        log.info("training %d shared artifact(s) on %s first", len(shared), self.cfg.attack_source)
        return waiting, task.remote(self.cfg, [specs[name] for name in shared])

    def _fit_done(self, ref: Any) -> None:
        try:
            why = self.ray.get(ref)
        except self.ray.exceptions.RayError as exc:
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if why:
            log.warning("shared artifacts not trained up front (%s); each group fits its own", why)

    def _submit(self, model: str, cells: list[tuple[CellKey, Attack]]) -> None:
        specs = [_spec(attack) for _, attack in cells]
        gen = self.group_task.options(name=f"group:{model}").remote(self.cfg, model, specs)
        self.pending[gen] = _Try(model, cells)

    def _receive(self, gen: Any) -> None:
        """Take the next item of a ready group task: a cell, the end, or its failure."""
        ray = self.ray
        attempt = self.pending[gen]
        try:
            ref = next(gen)
        except StopIteration:  # the group is through
            del self.pending[gen]
            if attempt.cells:  # never expected: cells the task did not send back
                log.error("model group %s ended without %d cell(s)", attempt.model,
                          len(attempt.cells))  # fmt: skip
                self._lose(attempt.cells)
            return
        try:
            status, payload = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:  # raised by the task itself: not retried
            del self.pending[gen]
            log.error("model group %s failed on Ray: %s", attempt.model, exc)
            self._lose(attempt.cells)
            return
        except ray.exceptions.RayError as exc:  # its worker or node died
            del self.pending[gen]
            with contextlib.suppress(Exception):  # should the task still run (a lost object)
                ray.cancel(gen, force=True)
            self._retry(attempt, exc)
            return
        if status == "unavailable":
            del self.pending[gen]
            log.error("skipping %s: %s", attempt.model, payload)
            self.unavailable[attempt.model] = payload
            self.bar.update(len(attempt.cells))
            return
        cell, chash = payload
        attempt.cells = [c for c in attempt.cells if c[0] != cell.key]
        attempt.received += 1
        self.barren[attempt.model] = 0
        self.sink(cell, chash)
        self.bar.update()
        log.debug("%s: received from Ray", cell.key)

    def _retry(self, attempt: _Try, exc: Exception) -> None:
        """A group task's worker died: charge the cell it was running, resubmit the rest."""
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if not attempt.cells:
            return
        running, rest = attempt.cells[0], attempt.cells[1:]
        self.tries[running[0]] = self.tries.get(running[0], 0) + 1
        if attempt.received == 0:
            self.barren[attempt.model] = self.barren.get(attempt.model, 0) + 1
        if self.tries[running[0]] > TASK_RETRIES:
            log.error("cell %s lost on Ray after %d retries: %s", running[0], TASK_RETRIES, why)
            self._lose([running])
        else:
            rest.append(running)
        if rest and self.barren.get(attempt.model, 0) > TASK_RETRIES:
            log.error("model group %s lost on Ray: %d tries finished no cell", attempt.model,
                      self.barren[attempt.model])  # fmt: skip
            self._lose(rest)
            return
        if rest:
            log.warning(
                "model group %s: worker lost (%s); resubmitting %d unfinished cell(s)",
                attempt.model,
                why,
                len(rest),
            )
            self._submit(attempt.model, rest)

    def _lose(self, cells: list[tuple[CellKey, Attack]]) -> None:
        self.lost += [str(key) for key, _ in cells]
        self.bar.update(len(cells))
