"""Options several commands share, parsed one way: model lists, budgets, batch sizes."""

from __future__ import annotations

from benchmark.budget import parse_budget
from benchmark.errors import ConfigError


def parse_eps(text: str | None) -> tuple[float, ...]:
    """`4/255,8/255` -> budgets; None -> () (each attack card's default)."""
    if text is None:
        return ()
    values = tuple(parse_budget(v) for v in text.split(",") if v.strip())
    if not values:
        raise ConfigError("--eps is empty")
    return values


def resolve_models(spec: str, exclude: str = "") -> tuple[str, ...]:
    """`--models` as every command reads it: names, `all`, `all-nr`, `all-fr`, purifier
    compositions and plugins, minus `--exclude`."""
    from benchmark.models.registry import resolve_model_names

    excluded = set(resolve_model_names(exclude)) if exclude.strip() else set()
    models = tuple(m for m in resolve_model_names(spec) if m not in excluded)
    if not models:
        raise ConfigError(
            "no usable model matches --models (see `python -m benchmark list models`)"
        )
    return models


def add_model_options(p, required: bool = True) -> None:  # noqa: ANN001 (argparse parser)
    p.add_argument(
        "--models",
        required=required,
        help="comma list of names, 'all' (every usable model), 'all-nr', 'all-fr', or file.py:Class",
    )
    p.add_argument(
        "--exclude",
        default="",
        help="comma list of models to leave out of --models (e.g. slow ones)",
    )


def add_batch_size_option(p) -> None:  # noqa: ANN001
    p.add_argument(
        "--batch-size",
        default="auto",
        help="images per attack batch, or auto: the fastest per image that fits, measured per model",
    )
