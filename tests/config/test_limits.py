"""Infinite or absurd numbers are refused where they would break a run later."""

import pytest

from cohort.cli import main
from cohort.config import load_config
from cohort.core.errors import ConfigError, DataError
from cohort.data import load_csv


@pytest.mark.parametrize("item, key", [("server.lr=inf", "server.lr"), ("client.lr=inf", "client.lr"),
                                       ("server.round_timeout_s=inf", "server.round_timeout_s"),
                                       ("server.round_timeout_s=1e300", "server.round_timeout_s"),
                                       ("data.alpha=inf", "data.alpha"), ("client.weight_decay=nan", "client.weight_decay")])
def test_non_finite_settings_are_config_errors(item, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [item])


def test_an_output_dir_that_is_a_file_is_a_clear_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["run", "--out", str(blocker), "--quiet", "--set", "rounds=1"]) == 2
    err = capsys.readouterr().err
    assert "output.dir" in err and "Traceback" not in err


def test_csv_with_an_infinite_value_is_a_data_error(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b,label\n1,2,x\n3,inf,y\n")
    with pytest.raises(DataError, match=r"line 3.*'b'.*infinite"):
        load_csv(path, "label")
