"""A whole run as one call, in the forms the API and the CLI take: names or comma lists,
budgets like "4/255,8/255", `params` as {"steps": 10} or ["steps=10"]. `run_config` builds
the `RunConfig`, `run` runs it (`runner.run`, resume included) and returns `RunResults`.

`benchmark.run(...)`, `benchmark.api.run` and `python -m benchmark run` are this `run`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from benchmark.engine.config import RunConfig, RunReport
    from benchmark.report.tables import LeaderboardTables
    from benchmark.store.cell import CellResult

__all__ = ["DEFAULT_RESULTS", "RunResults", "run", "run_config"]

log = logging.getLogger("benchmark")

PathLike = str | os.PathLike[str]
Direction = Literal["up", "down", "both"]

# Where `run` (and `python -m benchmark run`) writes by default: relative to the current folder.
DEFAULT_RESULTS = Path("results") / "benchmark.h5"


def run_config(
    models: str | Sequence[str],
    attacks: str | Sequence[str],
    dataset: str = "builtin",
    eps: float | str | Sequence[float | str] | None = None,
    *,
    exclude: str | Sequence[str] = "",
    split: str | None = None,
    direction: Direction | Sequence[str] = "up",
    limit: int | None = None,
    sample: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    batch_size: int | str | None = "auto",
    params: Mapping[str, Any] | Sequence[str] | None = None,
    data_root: PathLike | None = None,
    attack_source: str | None = None,
) -> RunConfig:
    """The `RunConfig` of a run, from the arguments of `run` (and of the CLI's `run`, which
    builds its configuration here). Validates every name and value; see `run`."""
    from benchmark.attacks.registry import parse_overrides
    from benchmark.budget import parse_budgets
    from benchmark.engine.batching import parse_batch_size
    from benchmark.engine.config import RunConfig, resolve_attacks
    from benchmark.errors import ConfigError
    from benchmark.models.registry import resolve_model_names, select_models

    if isinstance(direction, str):
        directions = ("up", "down") if direction == "both" else (direction,)
    else:
        directions = tuple(direction)
    if batch_size is None or isinstance(batch_size, int):
        batch = batch_size
    else:
        batch = parse_batch_size(batch_size)
    if params is None:
        overrides: dict[str, Any] = {}
    elif isinstance(params, Mapping):
        overrides = dict(params)
    elif isinstance(params, str):
        raise ConfigError(f"params must be a mapping or a list of key=value, got {params!r}")
    else:
        overrides = parse_overrides(params)
    return RunConfig(
        models=select_models(models, exclude),
        attacks=resolve_attacks(attacks if isinstance(attacks, str) else ",".join(attacks)),
        dataset=dataset,
        split=split,
        eps=parse_budgets(eps),
        directions=directions,
        limit=limit,
        sample=sample,
        seed=seed,
        device=device,
        batch_size=batch,
        params=overrides,
        data_root=None if data_root is None else os.fspath(data_root),
        attack_source=resolve_model_names(attack_source)[0] if attack_source else None,
    )


@dataclass
class RunResults:
    """What `run` returns: where the results are and what the run did.

    `cells` holds every cell stored in `path` after the run: this run's, and those of
    earlier runs into the same file (the leaderboard ranks them all).
    """

    path: Path
    config: RunConfig
    report: RunReport  # computed / skipped / failed cells, unavailable models, wall time
    cells: list[CellResult]
    html: Path | None = None
    _tables: LeaderboardTables | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        """No failed cell and no unavailable model (the CLI's exit code 0)."""
        return not self.report.failed and not self.report.unavailable

    def tables(self) -> LeaderboardTables:
        """The leaderboard's tables of `cells`, built once: `.rows` is the ranking
        (`benchmark.leaderboard(path)`), `.cells` the scores of each cell. One row per image:
        `benchmark.load_results(path)`."""
        if self._tables is None:
            from benchmark.report.leaderboard import build_tables

            self._tables = build_tables(self.cells)
        return self._tables


def run(
    models: str | Sequence[str],
    attacks: str | Sequence[str],
    dataset: str = "builtin",
    eps: float | str | Sequence[float | str] | None = None,
    out: PathLike = DEFAULT_RESULTS,
    *,
    exclude: str | Sequence[str] = "",
    split: str | None = None,
    direction: Direction | Sequence[str] = "up",
    limit: int | None = None,
    sample: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    batch_size: int | str | None = "auto",
    params: Mapping[str, Any] | Sequence[str] | None = None,
    data_root: PathLike | None = None,
    attack_source: str | None = None,
    force: bool = False,
    executor: Literal["local", "ray"] = "local",
    ray_address: str | None = None,
    html: PathLike | None = None,
    progress: bool = True,
) -> RunResults:
    """Attack `models` with `attacks` on `dataset`, store every cell in `out`, and return
    the results. Cells already in `out` with the same configuration are skipped (resume).

    models:     names or a comma list; "all", "all-nr", "all-fr" (every usable model),
                `<purifier>+<model>`, plugin `file.py:Class`. `exclude` removes some.
    attacks:    preset names (`list_attacks()`) or a comma list.
    dataset:    a card name (`list_datasets()`), `folder:PATH`, or a plugin dataset;
                `split` (default: test where there is one), `data_root` overrides the card's.
    eps:        budgets: 0.0157, "4/255", "4/255,8/255" or a list (None: each card's own).
    direction:  "up" (inflate the quality), "down", or "both".
    limit:      the first N images; `sample`: N images evenly spread over the split.
    seed:       the attacks' seed; the same seed stores the same numbers.
    batch_size: images per attack batch, or "auto" (measured per model).
    params:     attack parameter overrides, {"steps": 10} or ["steps=10"].
    attack_source: transfer attack: craft on this model, score on each of `models`.
    force:      recompute cells even when stored.
    executor:   "local" (this process) or "ray" (a Ray cluster at `ray_address`).
    html:       also render the leaderboard page here.

    Raises `benchmark.errors.BenchmarkError` subclasses for bad names, values and data.
    A model that cannot be built here is reported in `result.report.unavailable`; a cell
    that fails is stored with its reason and listed in `result.report.failed`.
    """
    from benchmark.engine.executors import make_executor
    from benchmark.engine.runner import run as run_cells
    from benchmark.report.leaderboard import render_html
    from benchmark.store.hdf5 import ResultStore

    cfg = run_config(
        models,
        attacks,
        dataset,
        eps,
        exclude=exclude,
        split=split,
        direction=direction,
        limit=limit,
        sample=sample,
        seed=seed,
        device=device,
        batch_size=batch_size,
        params=params,
        data_root=data_root,
        attack_source=attack_source,
    )
    log.info("models: %s", ", ".join(cfg.models))
    store = ResultStore(out)
    report = run_cells(
        cfg, store, progress=progress, force=force, executor=make_executor(executor, ray_address)
    )
    result = RunResults(path=store.path, config=cfg, report=report, cells=store.read_cells())
    if html is not None:
        result.html = render_html(result.cells, Path(html), tables=result.tables())
    return result
