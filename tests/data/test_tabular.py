from __future__ import annotations

import numpy as np
import pytest

from cohort.core.errors import ConfigError, DataError
from cohort.data import load_breast_cancer, load_csv, load_diabetes


def test_bundled_sklearn_datasets():
    cancer = load_breast_cancer()
    assert cancer.x.shape == (569, 30) and cancer.x.dtype == np.float32
    assert cancer.task == "classification" and cancer.num_classes == 2 and set(cancer.y.tolist()) == {0, 1}
    diabetes = load_diabetes()
    assert diabetes.x.shape == (442, 10) and diabetes.x.dtype == np.float32
    assert diabetes.task == "regression" and diabetes.y.dtype == np.float32 and diabetes.num_classes == 0


def write(tmp_path, text, name="table.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_classification_with_string_labels(tmp_path):
    path = write(tmp_path, "a,species,b\n1,virginica,2.5\n3,setosa,4\n\n5,versicolor,-6e1\n7,setosa,8\n")
    ds = load_csv(path, "species")
    assert ds.x.dtype == np.float32 and ds.x.tolist() == [[1, 2.5], [3, 4], [5, -60], [7, 8]]
    assert ds.y.tolist() == [2, 0, 1, 0] and ds.num_classes == 3 and ds.name == "table"


def test_numeric_labels_sort_as_numbers(tmp_path):
    path = write(tmp_path, "x;label\n0;10\n1;9\n2;10\n3;2\n")
    ds = load_csv(path, "label", delimiter=";")
    assert ds.y.tolist() == [2, 1, 2, 0]


def test_regression(tmp_path):
    ds = load_csv(write(tmp_path, "x1,x2,price\n1,2,3.5\n4,5,6.25\n"), "price", task="regression")
    assert ds.task == "regression" and ds.y.dtype == np.float32 and ds.y.tolist() == [3.5, 6.25]


@pytest.mark.parametrize("text, target, match", [
    ("a,b,y\n1,2,0\n3,oops,1\n", "y", "line 3, column 'b': value 'oops'"),
    ("a,b,y\n1,,0\n3,4,1\n", "y", "line 2, column 'b'"),
    ("a,y\n1,0\n2,1,5\n", "y", "line 3: 3 fields"),
    ("a,y\n1,0\n", "label", "target column 'label' not in the header"),
    ("", "y", "empty"),
    ("a,y\n", "y", "no data rows"),
    ("a,y\n1,0\n2,0\n", "y", "at least 2"),
    ("a,a,y\n1,2,0\n", "y", "duplicate"),
])
def test_bad_files(tmp_path, text, target, match):
    with pytest.raises(DataError, match=match):
        load_csv(write(tmp_path, text), target)


def test_missing_file_and_bad_task(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "absent.csv")):
        load_csv(tmp_path / "absent.csv", "y")
    with pytest.raises(ConfigError, match="task"):
        load_csv(tmp_path / "absent.csv", "y", task="ranking")
