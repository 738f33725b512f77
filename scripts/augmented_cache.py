"""A built-in dataset cache with extra training sources: the shared half of the experiments
that ask whether more training content would lift the zoo (issue 4).

The extra sources are distorted and labelled exactly as the built-in dataset
(`benchmark.datasets.builtin.build_source`), all in the train split; the real photographs'
crops and the validation and test rows are the built-in ones, so a model trained with
`--data-root OUT` is evaluated on the usual test split.
"""

from __future__ import annotations

import csv
import shutil
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from tqdm import tqdm

from benchmark.datasets import builtin


def _label(src: builtin.Source, config: builtin.BuildConfig, images: Path) -> list[dict]:
    import torch

    torch.set_num_threads(1)
    return builtin.build_source(src, config, images)


def write_augmented_cache(
    out: Path,
    sources: list[tuple[builtin.Source, builtin.BuildConfig]],
    workers: int,
    what: str,
) -> int:
    """Label `sources` (each with its build config) into a copy of the built-in cache under
    `out`; returns the number of images added to the train split."""
    base = builtin.build_builtin()
    target = out / base.name
    images = target / "images"
    images.mkdir(parents=True, exist_ok=True)
    for entry in (base / "images").iterdir():  # the real photographs' crops, shared
        if not (images / entry.name).exists():
            (images / entry.name).symlink_to(entry)
    rows: list[dict] = []
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        jobs = [pool.submit(_label, src, config, images) for src, config in sources]
        for job in tqdm(jobs, desc=f"label {what}"):
            rows += job.result()
    with open(base / "index.csv", newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns = list(reader.fieldnames or [])
        base_rows = list(reader)
    with open(target / "index.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, columns, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(base_rows)
        writer.writerows(
            {k: f"{v:.6f}" if isinstance(v, float) else v for k, v in r.items()} for r in rows
        )
    shutil.copy(base / "manifest.json", target / "manifest.json")  # same folder, same hash
    return len(rows)
