"""The Python API: the benchmark's commands as functions, re-exported from `benchmark`.

    import benchmark

    benchmark.list_models()                      # every model name: pyiqa, zoo, plugins
    model = benchmark.create_model("cnniqa-builtin")
    attack = benchmark.create_attack("pgd", eps="4/255", steps=10)
    x_adv = attack.perturb(model, x)             # x: (N, 3, H, W) in [0, 1]

    result = benchmark.run(models="cnniqa-builtin,ssim", attacks="fgsm", limit=8)
    benchmark.leaderboard(result.path)           # the ranking table of the HTML page
    benchmark.load_results(result.path)          # one row per image per cell

`run` is the run `python -m benchmark run` makes (the CLI calls it): same cells, same
config hashes, same resume; cells already stored with the same configuration are skipped.
Names and values take the CLI's forms too: `models="all"`, `eps="4/255,8/255"`,
`params=["steps=10"]`.

Everything heavy (torch, pyiqa, pandas) is imported on first use, not by `import benchmark`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from benchmark.engine.session import DEFAULT_RESULTS, RunResults, run, run_config

if TYPE_CHECKING:
    import pandas as pd

    from benchmark.attacks.base import Attack
    from benchmark.models.base import IQAModel
    from benchmark.store.cell import CellResult

__all__ = [
    "DEFAULT_RESULTS",
    "RESULT_COLUMNS",
    "RunResults",
    "create_attack",
    "create_model",
    "leaderboard",
    "list_attacks",
    "list_datasets",
    "list_models",
    "load_results",
    "run",
    "run_config",
]

PathLike = str | os.PathLike[str]

# The columns of `load_results`, in order.
RESULT_COLUMNS = (
    "model",  # model name
    "dataset",  # dataset name
    "attack",  # attack preset
    "eps",  # budget in [0, 1] image units
    "eps_label",  # the budget as shown: 8/255
    "norm",  # linf | l2
    "direction",  # up (inflate the quality) | down
    "status",  # done | not_applicable | failed (the cell's)
    "image_id",  # image within the dataset
    "mos",  # the dataset's opinion score (NaN without one)
    "clean",  # the model's raw score of the clean image (its own units and orientation)
    "attacked",  # the raw score of the attacked image (NaN unless status is done)
    "quality_clean",  # `clean` mapped to quality-up units, 0..1 over the model's range
    "quality_attacked",  # `attacked` in the same units: gain = attacked - clean
    "linf",  # the perturbation's L_inf norm
    "l2",  # its L2 norm
    "psnr",  # PSNR of attacked vs clean (dB)
    "ssim",  # SSIM of attacked vs clean
    "seconds",  # attack time per image
)


# -- registries -----------------------------------------------------------------------------


def list_models(usable: bool = False) -> list[str]:
    """Names of every model: pyiqa metrics, zoo cards (shipped and `$BENCHMARK_MODEL_DIRS`)
    and entry-point plugins, sorted.

    `usable=True` keeps only those that can be built here (weights present or downloadable);
    that check is slower. Details: `python -m benchmark list models`.
    """
    from benchmark.models.registry import list_models as model_statuses
    from benchmark.models.registry import model_registry

    if usable:
        return [s.name for s in model_statuses() if s.usable]
    return model_registry().names()


def list_attacks(usable: bool = False) -> list[str]:
    """Names of every attack preset (shipped cards, `$BENCHMARK_ATTACK_DIRS`, plugins), sorted.

    `usable=True` drops presets that cannot be loaded here.
    """
    from benchmark.attacks.registry import list_attacks as attack_cards

    return [c.name for c in attack_cards() if not (usable and c.problem())]


def list_datasets(usable: bool = False) -> list[str]:
    """Names of every dataset card (shipped, `$BENCHMARK_DATASET_DIRS`) and plugin dataset.

    `usable=True` keeps those whose data is found here (`builtin` always is: it is generated
    on first use). Any folder of images is a dataset too: `folder:/path/to/images`.
    """
    from benchmark.datasets.registry import list_datasets as dataset_statuses

    return [s.name for s in dataset_statuses() if s.usable or not usable]


def create_model(name: str, device: str = "cpu") -> IQAModel:
    """Build a model by name: a pyiqa metric, a zoo card, `<purifier>+<model>` (e.g.
    `jpeg50+cnniqa-builtin`) or a plugin `file.py:Class`.

    The result is a `torch.nn.Module`: `model.score(x, ref=None)` gives raw scores of a batch
    `x` of shape (N, 3, H, W) in [0, 1] (FR models need `ref`), `model.quality(x, ref)` the
    same oriented so that higher is better, `model.info` its kind, orientation and range.
    """
    from benchmark.models.registry import create_model as build

    return build(name, device=device)


def create_attack(
    name: str,
    eps: float | str | None = None,
    direction: Literal["up", "down"] = "up",
    seed: int = 0,
    **params: Any,
) -> Attack:
    """Build an attack preset by name (or a plugin `file.py:Class`).

    `eps`: the budget, a float in (0, 1] or a fraction like "8/255" (None: the card's).
    `direction`: "up" inflates the predicted quality, "down" deflates it. `params` override
    the card's [params], e.g. `steps=10`. Use it as
    `attack.perturb(model, x, ref=None) -> x_adv`; trainable ones (UAP, FACPA) need
    `attack.fit(...)` first, which `run` does for you.
    """
    from benchmark.attacks.registry import create_attack as build

    return build(name, eps=eps, direction=direction, seed=seed, **params)


# -- results --------------------------------------------------------------------------------


def _paths(paths: PathLike | Sequence[PathLike]) -> list[PathLike]:
    return [paths] if isinstance(paths, str | os.PathLike) else list(paths)


def _read(paths: PathLike | Sequence[PathLike]) -> list[CellResult]:
    from benchmark.errors import ConfigError
    from benchmark.store.hdf5 import read_results

    files = _paths(paths)
    cells = read_results(files)
    if not cells:
        raise ConfigError(f"no stored cell in {', '.join(map(str, files))}")
    return cells


def load_results(paths: PathLike | Sequence[PathLike]) -> pd.DataFrame:
    """Every stored image of every cell in the results file(s), as a tidy DataFrame.

    One row per image per cell, columns `RESULT_COLUMNS`: the cell (model, dataset, attack,
    eps, eps_label, norm, direction, status), the image (image_id, mos), the model's raw
    scores (clean, attacked), the same in quality-up units normalised to the model's range
    (quality_clean, quality_attacked: the leaderboard's absolute gain of a cell is the mean
    of quality_attacked - quality_clean over its images where both are finite), the
    perturbation's size (linf, l2, psnr, ssim) and the attack time per image (seconds).
    Where several files hold the same cell, the later file's wins.
    """
    return _tidy(_read(paths))


def leaderboard(
    paths: PathLike | Sequence[PathLike], n_boot: int = 1000, seed: int = 0
) -> pd.DataFrame:
    """The ranking table of the leaderboard page, from stored results alone.

    One row per (dataset, norm, eps, direction, model): the model's worst attack
    (`worst_attack`) and its gain (`abs_gain` with a bootstrap CI, `rel_gain`,
    `robustness`), clean correlations with MOS, `rank` within its threat model (1 = most
    robust; NA where the model could not be ranked, with `reason`). Ordered by threat
    model, then model: the table the page's ranking shows and `leaderboard.ranking.csv`
    holds. `n_boot`/`seed`: the bootstrap of the confidence intervals.
    """
    from benchmark.report.leaderboard import build_tables

    return build_tables(_read(paths), n_boot=n_boot, seed=seed).rows


def _tidy(cells: Sequence[CellResult]) -> pd.DataFrame:
    import numpy as np
    import pandas as pd

    from benchmark.errors import ConfigError
    from benchmark.report.scores import quality_map

    frames = []
    for cell in sorted(cells, key=lambda c: c.key):
        info = cell.model_info
        if "lower_better" not in info:  # as the leaderboard: no orientation, no quality units
            raise ConfigError(f"cell {cell.key}: model_info lacks 'lower_better'")
        qmap = quality_map(bool(info["lower_better"]), info.get("score_range"), cell.clean)
        n = len(cell)
        frames.append(
            pd.DataFrame(
                {
                    "model": [cell.key.model] * n,
                    "dataset": [cell.key.dataset] * n,
                    "attack": [cell.key.attack] * n,
                    "eps": np.full(n, float(cell.key.eps)),
                    "eps_label": [cell.key.eps_label] * n,
                    "norm": [str(cell.attack_config.get("norm", "linf"))] * n,
                    "direction": [cell.key.direction] * n,
                    "status": [cell.status] * n,
                    "image_id": np.asarray(cell.image_id).astype(str),
                    "mos": np.asarray(cell.mos, dtype=np.float64),
                    "clean": np.asarray(cell.clean, dtype=np.float64),
                    "attacked": np.asarray(cell.attacked, dtype=np.float64),
                    "quality_clean": qmap(cell.clean),
                    "quality_attacked": qmap(cell.attacked),
                    **{
                        k: np.asarray(getattr(cell, k), dtype=np.float64)
                        for k in ("linf", "l2", "psnr", "ssim", "seconds")
                    },
                }
            )
        )
    if not frames:
        return pd.DataFrame({c: [] for c in RESULT_COLUMNS})
    return pd.concat(frames, ignore_index=True)[list(RESULT_COLUMNS)]
