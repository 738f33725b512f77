"""Datasets: the built-in offline dataset and loaders for the real IQA layouts."""

from benchmark.datasets.base import Batch, DatasetInfo, IQADataset, Sample
from benchmark.datasets.builtin import build_builtin
from benchmark.datasets.images import load_image
from benchmark.datasets.registry import DatasetStatus, create_dataset, list_datasets

__all__ = [
    "Batch",
    "DatasetInfo",
    "DatasetStatus",
    "IQADataset",
    "Sample",
    "build_builtin",
    "create_dataset",
    "list_datasets",
    "load_image",
]
