"""Options several commands share, parsed one way: model lists, budgets, batch sizes."""

from __future__ import annotations

from benchmark.budget import parse_budgets


def parse_eps(text: str | None) -> tuple[float, ...]:
    """`4/255,8/255` -> budgets; None -> () (each attack card's default)."""
    return parse_budgets(text)


def resolve_models(spec: str, exclude: str = "") -> tuple[str, ...]:
    """`--models` as every command reads it (`benchmark.models.registry.select_models`)."""
    from benchmark.models.registry import select_models

    return select_models(spec, exclude)


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
