"""The Ray executor: one Ray task per cell, results streamed back to the driver's store.

Why per cell: cells are independent, so a cluster runs as many at once as it has slots,
and a lost worker costs one cell (Ray retries it, `max_retries`). Each task builds its own
model and dataset (clean scores are recomputed per task, the price of independence). The
driver alone writes the store, as results arrive, so a driver crash loses only the cells in
flight and a rerun resumes like a local one. Trained-attack artifacts live in the cache folder
(`$BENCHMARK_CACHE/artifacts`): put it on storage every node sees to share them.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from tqdm import tqdm

from benchmark.attacks.base import Attack
from benchmark.errors import BenchmarkError, ConfigError, ModelUnavailable
from benchmark.results import CellKey, CellResult

log = logging.getLogger(__name__)

TASK_RETRIES = 3


def _cell_task(cfg: Any, model_name: str, attack_name: str, eps: float, direction: str) -> Any:
    """Runs on a Ray worker: one cell from scratch, through the local group runner."""
    from benchmark.runner import cell_key, make_attack, run_group

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


def run_ray(
    cfg: Any,
    todo: dict[str, list[tuple[CellKey, Attack]]],
    sink: Any,
    address: str | None = None,
    progress: bool = True,
) -> dict[str, str]:
    """Submit every cell as a task; store each as it finishes. Returns unavailable models."""
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
