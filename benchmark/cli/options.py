"""Options several commands declare the same way: model lists and batch sizes (parsed by
`models.registry.select_models` and `engine.batching.parse_batch_size`)."""

from __future__ import annotations


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
