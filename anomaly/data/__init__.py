"""Datasets: categories split into train / val / test, from disk layouts or built in."""

from anomaly.data.dataset import Dataset, Sample
from anomaly.data.layouts import load_directory
from anomaly.data.registry import default_data_dir, list_categories, load_category, load_dataset

__all__ = [
    "Dataset",
    "Sample",
    "default_data_dir",
    "list_categories",
    "load_category",
    "load_dataset",
    "load_directory",
]
