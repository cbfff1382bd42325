"""Datasets (MNIST, CSV, scikit-learn's bundled tables) and the partitioners that spread them over clients."""

from cohort.data.datasets import ArrayDataset, standardize, train_test_split
from cohort.data.mnist import MIRRORS, load_mnist, resolve_data_dir
from cohort.data.partition import (
    Partition,
    describe,
    dirichlet,
    iid,
    label_histogram,
    quantity_skew,
    shards,
    split_holdout,
)
from cohort.data.tabular import load_breast_cancer, load_csv, load_diabetes

__all__ = [
    "MIRRORS",
    "ArrayDataset",
    "Partition",
    "describe",
    "dirichlet",
    "iid",
    "label_histogram",
    "load_breast_cancer",
    "load_csv",
    "load_diabetes",
    "load_mnist",
    "quantity_skew",
    "resolve_data_dir",
    "shards",
    "split_holdout",
    "standardize",
    "train_test_split",
]
