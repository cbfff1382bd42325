from __future__ import annotations

import numpy as np
import pytest

from cohort.core.errors import ConfigError, DataError
from cohort.data import ArrayDataset, standardize, train_test_split


def make_classification(n: int = 200) -> ArrayDataset:
    gen = np.random.default_rng(0)
    y = np.repeat(np.arange(3), [n // 2, n // 4, n - n // 2 - n // 4]).astype(np.int64)
    x = gen.normal(size=(n, 4)).astype(np.float32) + y[:, None]
    return ArrayDataset(x=x, y=y, task="classification", num_classes=3, name="toy")


def test_subset_and_feature_shape():
    ds = ArrayDataset(x=np.zeros((5, 1, 2, 2), np.uint8), y=np.arange(5, dtype=np.int64) % 2,
                      task="classification", num_classes=2, x_scale=1 / 255)
    sub = ds.subset(np.array([4, 0]))
    assert len(sub) == 2 and sub.y.tolist() == [0, 0] and sub.feature_shape == (1, 2, 2)
    assert sub.x.dtype == np.uint8 and sub.x_scale == ds.x_scale and sub.num_classes == 2
    with pytest.raises(DataError, match="indices"):
        ds.subset(np.array([5]))


@pytest.mark.parametrize("kwargs, match", [
    (dict(x=np.zeros((3, 2)), y=np.zeros(2, np.int64), task="classification", num_classes=2), "len"),
    (dict(x=np.zeros((3, 2)), y=np.zeros(3, np.int64), task="clustering", num_classes=2), "task"),
    (dict(x=np.zeros((3, 2)), y=np.zeros(3, np.int64), task="classification", num_classes=1), "num_classes"),
    (dict(x=np.zeros((3, 2)), y=np.array([0, 1, 2]), task="classification", num_classes=2), "labels span"),
    (dict(x=np.zeros((3, 2)), y=np.zeros(3), task="classification", num_classes=2), "integer"),
    (dict(x=np.zeros((3, 2)), y=np.zeros(3, np.float32), task="regression", num_classes=2), "num_classes"),
    (dict(x=np.zeros((3, 2)), y=np.zeros(3, np.float32), task="regression", x_scale=0.0), "x_scale"),
    (dict(x=np.array([["a"]] * 3), y=np.zeros(3, np.float32), task="regression"), "numeric"),
])
def test_validation(kwargs, match):
    with pytest.raises(DataError, match=match):
        ArrayDataset(**kwargs)


def test_split_is_stratified_disjoint_and_seeded():
    ds = make_classification(203)
    train, test = train_test_split(ds, 0.25, seed=1)
    assert len(test) == round(0.25 * 203) and len(train) + len(test) == 203
    expected = np.bincount(ds.y) * 0.25
    assert np.all(np.abs(np.bincount(test.y, minlength=3) - expected) < 1)
    rows = {tuple(r) for r in train.x.tolist()} | {tuple(r) for r in test.x.tolist()}
    assert len(rows) == 203
    again, _ = train_test_split(ds, 0.25, seed=1)
    other, _ = train_test_split(ds, 0.25, seed=2)
    assert np.array_equal(again.x, train.x) and not np.array_equal(other.x, train.x)


def test_regression_split():
    x = np.arange(50, dtype=np.float32)[:, None]
    ds = ArrayDataset(x=x, y=x[:, 0].copy(), task="regression")
    train, test = train_test_split(ds, 0.2, seed=0)
    assert len(test) == 10
    assert sorted(np.concatenate([train.y, test.y]).tolist()) == list(range(50))


@pytest.mark.parametrize("fraction, error", [(0.0, ConfigError), (1.0, ConfigError), (0.001, DataError)])
def test_split_rejects_bad_fractions(fraction, error):
    with pytest.raises(error, match="test_fraction"):
        train_test_split(make_classification(), fraction, seed=0)


def test_standardize_uses_train_statistics():
    ds = make_classification()
    x = ds.x.copy()
    x[:, 2] = 7.0  # a constant column must not become NaN
    train, test = train_test_split(ArrayDataset(x=x, y=ds.y, task="classification", num_classes=3), 0.3, seed=0)
    z_train, z_test = standardize(train, test)
    assert z_train.x.dtype == np.float32 and z_test.x.dtype == np.float32
    np.testing.assert_allclose(z_train.x.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(z_train.x.std(axis=0)[[0, 1, 3]], 1, atol=1e-4)
    assert np.all(z_train.x[:, 2] == 0) and np.all(np.isfinite(z_test.x))
    mean, std = train.x.mean(axis=0), train.x.std(axis=0)
    np.testing.assert_allclose(z_test.x[:, 0], (test.x[:, 0] - mean[0]) / std[0], rtol=1e-4)
