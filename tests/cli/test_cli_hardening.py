"""CLI defects found by a hostile but fair new user: names as paths, odd config files, --version."""

import pytest

from cohort.cli import main
from cohort.config import load_config
from cohort.core.errors import ConfigError


@pytest.mark.parametrize("name", ["a/../../x", "../up", "/abs", ".hidden", "a\\b", "", "x" * 101])
def test_a_run_name_must_be_a_plain_folder_name(name, tmp_path, capsys):
    code = main(["run", "--out", str(tmp_path / "runs"), "--set", f"name={name!r}".replace("'", '"')])
    err = capsys.readouterr().err
    assert code == 2 and "name is" in err and "plain folder name" in err
    assert not any(tmp_path.glob("**/metrics.jsonl"))  # nothing written anywhere


def test_a_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "bom.toml"
    path.write_bytes("\ufeffrounds = 3\n".encode("utf-8"))
    assert load_config(path).rounds == 3


def test_a_folder_given_as_config_is_called_a_folder(tmp_path):
    with pytest.raises(ConfigError, match="is a folder"):
        load_config(tmp_path)


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.startswith("cohort 0.")


def test_a_csv_run_is_not_announced_as_the_demo(tmp_path, capsys):
    csv = tmp_path / "d.csv"
    csv.write_text("a,b,y\n" + "\n".join(f"{i},{i % 3},{i % 2}" for i in range(40)) + "\n")
    code = main(["run", "--quiet", "--out", str(tmp_path), "--set", "data.dataset=csv", "--set", f"data.csv_path={str(csv)!r}".replace("'", '"'),
                 "--set", "data.csv_target=y", "--set", "rounds=1", "--set", "data.partition=iid"])
    out = capsys.readouterr().out
    assert code == 0 and "with your --set overrides" in out and "hospitals, breast cancer" not in out


def test_a_test_fraction_that_leaves_too_few_examples_is_named(tmp_path, capsys):
    code = main(["run", "--out", str(tmp_path), "--set", "data.test_fraction=0.99"])
    err = capsys.readouterr().err
    assert code == 2 and "data.test_fraction = 0.99" in err and "data.num_clients is 10" in err
