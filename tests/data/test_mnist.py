from __future__ import annotations

import gzip
import hashlib

import numpy as np
import pytest

from cohort.core.errors import DataError
from cohort.data import label_histogram, load_mnist, resolve_data_dir, shards
from cohort.data.mnist import FILES

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_shapes_dtypes_and_labels(mnist):
    train, test = mnist
    assert train.x.shape == (60_000, 1, 28, 28) and test.x.shape == (10_000, 1, 28, 28)
    assert train.x.dtype == np.uint8 and train.y.dtype == np.int64 and test.y.dtype == np.int64
    assert train.num_classes == 10 and train.task == "classification" and train.x_scale == pytest.approx(1 / 255)
    assert train.feature_shape == (1, 28, 28)
    assert train.y.min() == 0 and train.y.max() == 9
    assert np.bincount(train.y, minlength=10).tolist() == TRAIN_COUNTS
    assert np.bincount(test.y, minlength=10).tolist() == TEST_COUNTS
    assert sum(TRAIN_COUNTS) == 60_000 and train.y[0] == 5
    assert train.x.max() == 255 and train.x.min() == 0


def test_cached_and_read_only(mnist, data_dir):
    train, _ = mnist
    again, _ = load_mnist(data_dir, download=False)
    assert again is train
    for array in (train.x, train.y):
        assert not array.flags.writeable
        with pytest.raises(ValueError):
            array[0] = 1


def test_shards_on_real_labels_give_two_labels_to_most_clients(mnist):
    train, _ = mnist
    part = shards(train.y, num_clients=100, seed=0)
    labels_per_client = (label_histogram(train.y, part, 10) > 0).sum(axis=1)
    assert np.all(part.sizes() == 600)
    assert np.sum(labels_per_client == 2) >= 70
    assert np.sum(labels_per_client <= 2) >= 90


def test_resolve_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("COHORT_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "given") == tmp_path / "given"
    assert resolve_data_dir(None) == tmp_path / "env"
    monkeypatch.delenv("COHORT_DATA_DIR")
    assert resolve_data_dir() == (resolve_data_dir("~/.cache/cohort/data"))
    assert str(resolve_data_dir()).endswith(".cache/cohort/data") and "~" not in str(resolve_data_dir())


def test_download_falls_back_to_a_working_mirror(data_dir, tmp_path, mnist):
    good = (data_dir / "mnist").resolve().as_uri() + "/"
    train, test = load_mnist(tmp_path, mirrors=("http://127.0.0.1:9/", good), timeout_s=5)
    assert sorted(p.name for p in (tmp_path / "mnist").iterdir()) == sorted(FILES)
    assert np.array_equal(train.y, mnist[0].y) and np.array_equal(test.x, mnist[1].x)


def _write_bad_files(folder):
    folder.mkdir(parents=True)
    for name in FILES:
        with gzip.open(folder / name, "wb") as f:
            f.write(b"not mnist " + name.encode())


def test_tampered_mirror_leaves_nothing_behind(tmp_path):
    _write_bad_files(tmp_path / "mirror")
    target = tmp_path / "target"
    with pytest.raises(DataError, match="md5") as info:
        load_mnist(target, mirrors=((tmp_path / "mirror").as_uri() + "/",))
    assert "checksum" in str(info.value)
    assert list((target / "mnist").iterdir()) == []


def test_unreachable_mirror_explains_what_to_do(tmp_path):
    with pytest.raises(DataError) as info:
        load_mnist(tmp_path, mirrors=("http://127.0.0.1:9/",), timeout_s=5)
    message = str(info.value)
    assert str(tmp_path / "mnist") in message
    assert all(name in message for name in FILES)
    assert "http://127.0.0.1:9/" in message and "COHORT_DATA_DIR" in message and "--data-dir" in message


def test_no_download_with_empty_folder(tmp_path):
    with pytest.raises(DataError, match="download=False") as info:
        load_mnist(tmp_path, download=False, mirrors=("http://127.0.0.1:9/",))
    assert str(tmp_path / "mnist") in str(info.value)
    assert not (tmp_path / "mnist").exists()


def test_checksum_mismatch_on_existing_file_names_file_and_md5s(tmp_path):
    _write_bad_files(tmp_path / "mnist")
    name = "train-images-idx3-ubyte.gz"
    actual = hashlib.md5(b"not mnist " + name.encode()).hexdigest()
    with pytest.raises(DataError) as info:
        load_mnist(tmp_path, download=False)
    message = str(info.value)
    assert name in message and FILES[name] in message and actual in message
