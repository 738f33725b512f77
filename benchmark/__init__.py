"""Adversarial-robustness benchmark for image-quality-assessment (IQA) models.

The Python API (`benchmark.api`, loaded on first use so that `import benchmark` stays cheap):

    list_models(), list_attacks(), list_datasets()      names of everything registered
    create_model(name, device=...)                      an IQA model (torch.nn.Module)
    create_attack(name, eps=..., **params)              an attack preset
    run(models=..., attacks=..., dataset=..., eps=..., out=...)
                                                        the CLI's `run`: store every cell
    load_results(paths)                                 one row per image per cell
    leaderboard(paths)                                  the ranking table

The command line is `python -m benchmark COMMAND` (or `iqa-benchmark COMMAND`).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = (
    "RunResults",
    "create_attack",
    "create_model",
    "leaderboard",
    "list_attacks",
    "list_datasets",
    "list_models",
    "load_results",
    "run",
)
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    """PEP 562: the API's names, from `benchmark.api` when first asked for."""
    if name not in _API:
        raise AttributeError(f"module 'benchmark' has no attribute {name!r}")
    from benchmark import api  # the facade: nothing heavy until a function is called

    value = getattr(api, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
