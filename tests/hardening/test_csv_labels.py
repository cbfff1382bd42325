"""load_csv refuses missing class labels (NaN, inf, empty) as it refuses missing features."""

from __future__ import annotations

import re

import pytest

from cohort.core.errors import ConfigError, DataError
from cohort.data import load_csv


def write(tmp_path, text, name="table.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("label, reason", [
    ("nan", r"label 'nan' is a missing value \(NaN\)"),
    ("NaN", r"label 'NaN' is a missing value \(NaN\)"),
    (" nan ", r"label ' nan ' is a missing value \(NaN\)"),
    ("inf", r"label 'inf' is infinite"),
    ("-Infinity", r"label '-Infinity' is infinite"),
    ("1e400", r"label '1e400' is infinite"),
    ("", "the label is empty"),
])
def test_a_missing_numeric_label_is_refused_naming_line_and_column(tmp_path, label, reason):
    path = write(tmp_path, f"a,y\n1,0\n2,1\n3,{label}\n4,1\n")
    with pytest.raises(DataError, match=rf"line 4, column 'y': {reason}"):
        load_csv(path, "y")


def test_a_nan_label_among_string_labels_is_refused_too(tmp_path):
    path = write(tmp_path, "a,species\n1,setosa\n\n2,nan\n3,virginica\n")
    with pytest.raises(DataError, match=r"table\.csv, line 4, column 'species': label 'nan' is a missing value"):
        load_csv(path, "species")


def test_label_and_feature_messages_name_the_same_line(tmp_path):
    feature = write(tmp_path, "a,y\n1,0\nnan,1\n", "f.csv")
    label = write(tmp_path, "a,y\n1,0\n2,nan\n", "l.csv")
    with pytest.raises(DataError, match=r"line 3, column 'a': value 'nan' is a missing value \(NaN\)"):
        load_csv(feature, "y")
    with pytest.raises(DataError, match=r"line 3, column 'y': label 'nan' is a missing value \(NaN\)"):
        load_csv(label, "y")


def test_a_nan_regression_target_is_refused(tmp_path):
    with pytest.raises(DataError, match=r"line 3, column 'price': value 'nan' is a missing value"):
        load_csv(write(tmp_path, "x,price\n1,2.5\n2,nan\n"), "price", task="regression")


def test_finite_labels_still_work(tmp_path):
    ds = load_csv(write(tmp_path, "a,y\n1,1e3\n2,-1\n3,nancy\n"), "y")  # 'nancy' is a word, not NaN
    assert ds.num_classes == 3
    ds = load_csv(write(tmp_path, "a,y\n1,2\n2,-1.5\n3,2.0\n", "n.csv"), "y")
    assert ds.num_classes == 2 and ds.y.tolist() == [1, 0, 1]


@pytest.mark.parametrize("delimiter", ["", ",,", "\n", '"'])
def test_a_delimiter_that_is_not_one_plain_character_is_a_config_error(tmp_path, delimiter):
    with pytest.raises(ConfigError, match=re.escape(f"delimiter={delimiter!r}; expected one character")):
        load_csv(write(tmp_path, "a,y\n1,0\n2,1\n"), "y", delimiter=delimiter)
