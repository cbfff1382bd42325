"""In-memory datasets as plain numpy arrays, with a seeded stratified split and z-scoring."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from cohort.core.errors import ConfigError, DataError
from cohort.core.seeding import Stage, rng

TASKS = ("classification", "regression")


@dataclass(frozen=True, eq=False)
class ArrayDataset:
    """Features and targets of ``n`` examples, held as numpy arrays (compared by identity)."""

    x: np.ndarray  # (n, ...) features, any numeric dtype (uint8 images stay uint8)
    y: np.ndarray  # (n,) integer class labels in [0, num_classes), or float regression targets
    task: str  # "classification" | "regression"
    num_classes: int = 0  # 0 for regression
    x_scale: float = 1.0  # consumers multiply x by this when they turn it to float32 (1/255 for MNIST)
    name: str = ""

    def __post_init__(self) -> None:
        label = f"dataset {self.name!r}" if self.name else "dataset"
        if not isinstance(self.x, np.ndarray) or not isinstance(self.y, np.ndarray):
            raise DataError(f"{label}: x and y must be numpy arrays, got {type(self.x).__name__} and "
                            f"{type(self.y).__name__}")
        if self.x.ndim < 1 or self.x.dtype.kind not in "biuf":
            raise DataError(f"{label}: x must be a numeric array of shape (n, ...), got dtype {self.x.dtype} "
                            f"and shape {self.x.shape}")
        if self.y.ndim != 1:
            raise DataError(f"{label}: y must have shape (n,), got {self.y.shape}")
        if len(self.x) != len(self.y):
            raise DataError(f"{label}: len(x)={len(self.x)} but len(y)={len(self.y)}; expected equal lengths")
        if self.task not in TASKS:
            raise DataError(f"{label}: task={self.task!r}; expected one of {TASKS}")
        if not (isinstance(self.x_scale, (int, float)) and math.isfinite(self.x_scale) and self.x_scale > 0):
            raise DataError(f"{label}: x_scale={self.x_scale!r}; expected a finite number > 0")
        if self.task == "regression":
            if self.num_classes != 0:
                raise DataError(f"{label}: num_classes={self.num_classes} for a regression task; expected 0")
            if self.y.dtype.kind != "f":
                raise DataError(f"{label}: regression targets y have dtype {self.y.dtype}; expected a float dtype")
            return
        if not isinstance(self.num_classes, (int, np.integer)) or self.num_classes < 2:
            raise DataError(f"{label}: num_classes={self.num_classes!r} for classification; expected an int >= 2")
        if self.y.dtype.kind not in "iu":
            raise DataError(f"{label}: class labels y have dtype {self.y.dtype}; expected an integer dtype")
        if len(self.y) and (self.y.min() < 0 or self.y.max() >= self.num_classes):
            raise DataError(f"{label}: labels span [{self.y.min()}, {self.y.max()}]; expected values in "
                            f"[0, {self.num_classes - 1}] (num_classes={self.num_classes})")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """The shape of one example's features, e.g. (1, 28, 28) for MNIST."""
        return tuple(self.x.shape[1:])

    def subset(self, indices: np.ndarray) -> ArrayDataset:
        """The examples at ``indices`` (in that order), as a new dataset of copied arrays."""
        indices = np.asarray(indices)
        if indices.ndim != 1 or (indices.size and indices.dtype.kind not in "iu"):
            raise DataError(f"subset: indices must be a 1-D integer array, got dtype {indices.dtype} "
                            f"and shape {indices.shape}")
        if indices.size and (indices.min() < -len(self) or indices.max() >= len(self)):
            raise DataError(f"subset: indices span [{indices.min()}, {indices.max()}]; expected values in "
                            f"[0, {len(self) - 1}]")
        indices = indices.astype(np.int64, copy=False)
        return dataclasses.replace(self, x=self.x[indices], y=self.y[indices])


def train_test_split(ds: ArrayDataset, test_fraction: float, seed: int) -> tuple[ArrayDataset, ArrayDataset]:
    """Split ``ds`` into (train, test), stratified by label for classification.

    The test part gets round(test_fraction * n) examples; each class contributes in proportion to
    its size (largest remainders take the leftover). Both parts keep the original example order.
    """
    if not (isinstance(test_fraction, (int, float)) and 0 < test_fraction < 1):
        raise ConfigError(f"test_fraction={test_fraction!r}; expected a number in (0, 1)")
    n = len(ds)
    n_test = int(math.floor(test_fraction * n + 0.5))
    if n_test < 1 or n_test > n - 1:
        raise DataError(f"train_test_split: test_fraction={test_fraction} of {n} examples leaves "
                        f"{n_test} test and {n - n_test} train examples; expected at least 1 in each")
    gen = rng(seed, 0, Stage.SPLIT)
    if ds.task == "regression":
        test_idx = gen.permutation(n)[:n_test]
    else:
        test_idx = _stratified_pick(ds.y, n_test, gen)
    is_test = np.zeros(n, dtype=bool)
    is_test[test_idx] = True
    return ds.subset(np.flatnonzero(~is_test)), ds.subset(np.flatnonzero(is_test))


def _stratified_pick(labels: np.ndarray, count: int, gen: np.random.Generator) -> np.ndarray:
    """``count`` indices drawn from every class in proportion to its size."""
    classes, inverse, class_sizes = np.unique(labels, return_inverse=True, return_counts=True)
    quota = class_sizes * (count / len(labels))
    take = np.floor(quota).astype(np.int64)
    leftover = count - int(take.sum())
    # Stable order on the remainders: ties go to the smaller label, so the split is reproducible.
    take[np.argsort(-(quota - take), kind="stable")[:leftover]] += 1
    # One random key per example: sorting by (class, key) shuffles each class independently.
    by_class = np.lexsort((gen.random(len(labels)), inverse))
    starts = np.concatenate(([0], np.cumsum(class_sizes)[:-1]))
    rank = np.arange(len(labels)) - np.repeat(starts, class_sizes)
    return by_class[rank < np.repeat(take, class_sizes)]


def standardize(train: ArrayDataset, test: ArrayDataset) -> tuple[ArrayDataset, ArrayDataset]:
    """Z-score both datasets' features with the train mean and std (std 0 -> 1); x becomes float32."""
    if train.feature_shape != test.feature_shape:
        raise DataError(f"standardize: train features have shape {train.feature_shape} but test features "
                        f"{test.feature_shape}; expected equal shapes")
    if len(train) == 0:
        raise DataError("standardize: the train dataset is empty; expected at least 1 example")
    # x_scale is dropped: z-scores do not depend on a constant scale of x.
    mean = train.x.mean(axis=0, dtype=np.float64)
    std = train.x.std(axis=0, dtype=np.float64)
    std = np.where(std == 0, 1.0, std)

    def scaled(ds: ArrayDataset) -> ArrayDataset:
        x = ((ds.x - mean) / std).astype(np.float32)
        return dataclasses.replace(ds, x=x, x_scale=1.0)

    return scaled(train), scaled(test)
