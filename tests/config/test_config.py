"""Configs: TOML files and ``--set`` overrides into frozen dataclasses, and every check that must fail
before any training starts (in ``load_config`` or in ``experiment.build``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cohort.config import RunConfig, ServerConfig, from_dict, load_config
from cohort.core.errors import ConfigError, DataError
from cohort.experiment import build, run

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.toml"))


def write(tmp_path: Path, text: str, name: str = "run.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- loading and round trips -------------------------------------------------------------------


def test_demo_is_the_hospitals_logistic_regression():
    c = load_config()
    assert (c.name, c.data.dataset, c.data.num_clients, c.data.partition) == ("hospitals-demo", "breast_cancer", 10, "dirichlet")
    assert c.model.name == "logistic_regression"
    assert c.data.holdout_fraction > 0 and c.evaluate.federated_fraction > 0  # federated evaluation is consistent


def test_an_empty_file_gives_the_defaults(tmp_path):
    assert load_config(write(tmp_path, "")) == RunConfig() == from_dict({})


def test_examples_exist():
    assert len(EXAMPLES) >= 4


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_loads_and_round_trips(path, tmp_path):
    config = load_config(path)
    assert config.name != RunConfig().name  # each example names its run
    assert load_config(write(tmp_path, config.to_toml())) == config


def test_resolved_config_round_trips_with_overrides_and_an_optional_target(tmp_path):
    config = load_config(None, ["evaluate.target=0.95", "server.lr=2", "output.dir='/some/where'", "name=x y"])
    assert config.evaluate.target == 0.95
    text = config.to_toml()
    assert "target = 0.95" in text
    back = load_config(write(tmp_path, text))
    assert back == config
    assert isinstance(back.server.lr, float)


def test_unset_target_is_left_out_of_the_toml():
    config = load_config()
    assert config.evaluate.target is None
    assert "\ntarget =" not in config.to_toml()
    assert "target" not in config.to_dict()["evaluate"]


def test_integers_are_accepted_for_float_settings():
    config = from_dict({"server": {"lr": 2, "fraction": 1}})
    assert config.server.lr == 2.0 and type(config.server.lr) is float
    assert type(config.server.fraction) is float


# --- --set overrides ----------------------------------------------------------------------------


def test_overrides_parse_toml_values_and_bare_words():
    c = load_config(None, [
        "rounds=5",                     # integer
        "server.fraction=0.5",          # float
        "evaluate.centralized=false",   # boolean
        "name='my run'",                # quoted string
        'output.dir="/tmp/x y"',        # double-quoted string
        "data.partition=shards",        # bare word: a string
        "model.name = mlp ",            # spaces around key and value
    ])
    assert c.rounds == 5 and c.server.fraction == 0.5 and c.evaluate.centralized is False
    assert c.name == "my run" and c.output.dir == "/tmp/x y"
    assert c.data.partition == "shards" and c.model.name == "mlp"
    assert c.data.num_clients == 10  # the rest of the demo's [data] is kept


def test_later_override_wins_and_overrides_beat_the_file(tmp_path):
    path = write(tmp_path, "rounds = 7\n[server]\nfraction = 0.2\n")
    c = load_config(path, ["rounds=3", "rounds=4"])
    assert c.rounds == 4 and c.server.fraction == 0.2


def test_override_creates_a_section_the_file_does_not_have(tmp_path):
    c = load_config(write(tmp_path, "rounds = 2\n"), ["simulation.threads=2", "client.lr=0.5"])
    assert c.simulation.threads == 2 and c.client.lr == 0.5


def test_override_of_a_bare_word_that_is_not_a_number_is_a_type_error():
    with pytest.raises(ConfigError, match=r"rounds is '5 rounds'; expected an integer"):
        load_config(None, ["rounds=5 rounds"])


@pytest.mark.parametrize("item", ["rounds", "=3", " =3", ""])
def test_malformed_override_says_what_is_expected(item):
    with pytest.raises(ConfigError, match=r"expected key=value") as e:
        load_config(None, [item])
    assert repr(item) in str(e.value)


def test_override_below_a_value_is_an_error():
    with pytest.raises(ConfigError, match=r"'data.alpha.x=3'.*'alpha' is a value, not a section"):
        load_config(None, ["data.alpha.x=3"])


# --- unknown keys and wrong types ---------------------------------------------------------------


@pytest.mark.parametrize("item, key, suggestion", [
    ("roundz=3", "'roundz'", "'rounds'"),
    ("server.fractoin=0.5", "'server.fractoin'", "'server.fraction'"),
    ("data.num_client=3", "'data.num_client'", "'data.num_clients'"),
    ("evaluate.targt=0.9", "'evaluate.targt'", "'evaluate.target'"),
])
def test_unknown_key_suggests_the_close_one(item, key, suggestion):
    with pytest.raises(ConfigError) as e:
        load_config(None, [item])
    msg = str(e.value)
    assert f"unknown config key {key}" in msg
    assert f"did you mean {suggestion}?" in msg


def test_unknown_key_in_a_file_lists_the_known_keys_of_its_section(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "[server]\nzzz = 1\n"))
    msg = str(e.value)
    assert "unknown config key 'server.zzz'" in msg and "did you mean" not in msg
    assert "Known keys in [server]:" in msg
    assert all(f.name in msg for f in ServerConfig.__dataclass_fields__.values())


def test_unknown_section_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'sever'; did you mean 'server'\?"):
        load_config(write(tmp_path, "[sever]\nfraction = 0.1\n"))


@pytest.mark.parametrize("item, message", [
    ("rounds='abc'", "rounds is 'abc'; expected an integer"),
    ("rounds=3.5", "rounds is 3.5; expected an integer"),
    ("rounds=true", "rounds is True; expected an integer"),
    ("rounds=[1, 2]", "rounds is [1, 2]; expected an integer"),
    ("server.fraction='0.5'", "server.fraction is '0.5'; expected a number"),
    ("server.fraction=true", "server.fraction is True; expected a number"),
    ("evaluate.centralized=1", "evaluate.centralized is 1; expected true/false"),
    ("name=3", "name is 3; expected a string"),
    ("evaluate.target='high'", "evaluate.target is 'high'; expected a number"),
    ("data=3", "data is 3; expected a table of settings"),
])
def test_wrong_type_names_key_value_and_expected_type(item, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [item])
    assert str(e.value) == message


# --- values out of range ------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "0.0", "-0.1", "1.5", "1.0000001"])
def test_server_fraction_outside_0_1_is_rejected(value):
    with pytest.raises(ConfigError, match=r"server\.fraction is .*; expected 0 < fraction <= 1"):
        load_config(None, [f"server.fraction={value}"])


@pytest.mark.parametrize("value", ["1", "1.0", "0.05"])
def test_server_fraction_inside_0_1_is_accepted(value):
    assert load_config(None, [f"server.fraction={value}"]).server.fraction == float(value)


@pytest.mark.parametrize("item, key", [
    ("evaluate.federated_fraction=1.5", "evaluate.federated_fraction"),
    ("data.holdout_fraction=1.0", "data.holdout_fraction"),
    ("data.test_fraction=0", "data.test_fraction"),
    ("data.alpha=0", "data.alpha"),
    ("data.num_clients=0", "data.num_clients"),
    ("rounds=0", "rounds"),
    ("seed=-1", "seed"),
    ("client.epochs=0", "client.epochs"),
    ("client.lr=0", "client.lr"),
    ("server.momentum=1", "server.momentum"),
    ("evaluate.every=0", "evaluate.every"),
    ("evaluate.target=nan", "evaluate.target"),
    ("data.dataset=imagenet", "data.dataset"),
    ("data.partition=random", "data.partition"),
    ("server.algorithm=fedadam", "server.algorithm"),
    ("simulation.backend=dask", "simulation.backend"),
    ("client.optimizer=rmsprop", "client.optimizer"),
])
def test_out_of_range_value_names_the_key_and_what_is_expected(item, key):
    with pytest.raises(ConfigError) as e:
        load_config(None, [item])
    msg = str(e.value)
    assert msg.startswith(f"{key} is ") and "; expected " in msg


def test_csv_dataset_needs_its_path_and_target():
    with pytest.raises(ConfigError, match=r"data\.csv_target is ''; expected the target column when data\.dataset = 'csv'"):
        load_config(None, ["data.dataset=csv"])
    with pytest.raises(ConfigError, match=r"data\.csv_path is ''; expected set when data\.dataset = 'csv', unless data\.client_files"):
        load_config(None, ["data.dataset=csv", "data.csv_target=y"])


# --- files that cannot be read ------------------------------------------------------------------


def test_missing_config_file(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=r"does not exist") as e:
        load_config(missing)
    assert str(missing) in str(e.value)


def test_folder_given_as_config_file(tmp_path):
    with pytest.raises(ConfigError, match=r"is a folder; give the path of a TOML file"):
        load_config(tmp_path)


def test_invalid_toml_names_the_file(tmp_path):
    path = write(tmp_path, "rounds = \n")
    with pytest.raises(ConfigError, match=r"is not valid TOML") as e:
        load_config(path)
    assert str(path) in str(e.value)


def test_non_utf8_file_is_a_config_error(tmp_path):
    path = tmp_path / "binary.toml"
    path.write_bytes(b"\xff\xfe\x00rounds = 1")
    with pytest.raises(ConfigError, match=r"cannot be read as UTF-8") as e:
        load_config(path)
    assert str(path) in str(e.value)


# --- checks made by build(), before any training --------------------------------------------------


@pytest.fixture
def empty_dir(tmp_path) -> Path:
    d = tmp_path / "empty-data"
    d.mkdir()
    return d


BUILD_ERRORS = {
    "more clients than examples": (["data.num_clients=1000", "data.partition=iid"], ConfigError,
                                   ["data.num_clients is 1000", "only 455 examples", "at most 455"]),
    "mnist_cnn on tabular data": (["model.name=mnist_cnn"], ConfigError,
                                  ["model.name is 'mnist_cnn'", "data.dataset = 'breast_cancer'", "(30,)", "images"]),
    "cnn on tabular data": (["model.name=cnn"], ConfigError,
                            ["model.name is 'cnn'", "data.dataset = 'breast_cancer'", "(30,)"]),
    "classifier on regression data": (["data.dataset=diabetes", "data.partition=iid"], ConfigError,
                                      ["model.name = 'logistic_regression'", "regression", "'linear_regression'"]),
    "regression model on class labels": (["model.name=linear_regression"], ConfigError,
                                         ["model.name = 'linear_regression'", "'logistic_regression'"]),
    "dirichlet on regression data": (["data.dataset=diabetes", "model.name=linear_regression"], ConfigError,
                                     ["data.partition = 'dirichlet'", "regression", "'iid' or 'quantity'"]),
    "shards on regression data": (["data.dataset=diabetes", "model.name=linear_regression", "data.partition=shards"],
                                  ConfigError, ["data.partition = 'shards'", "regression"]),
    "federated evaluation without holdout": (["data.holdout_fraction=0"], ConfigError,
                                             ["evaluate.federated_fraction", "data.holdout_fraction > 0"]),
    "target metric not reported": (["evaluate.target=0.9", "evaluate.target_metric=r2"], ConfigError,
                                   ["evaluate.target_metric is 'r2'", "does not report", "accuracy"]),
    "target on accuracy with no evaluation": (
        ["evaluate.target=0.9", "evaluate.centralized=false", "evaluate.federated_fraction=0"], ConfigError,
        ["evaluate.target_metric is 'accuracy'", "expected one of train_loss"]),
    "more successful clients than sampled": (["server.fraction=0.5", "server.min_successful_clients=6"], ConfigError,
                                             ["server.min_successful_clients", "is 6", "only 5 of 10", "server.fraction"]),
    "dirichlet that cannot give every client data": (["data.num_clients=400"], DataError, ["dirichlet", "num_clients=400"]),
}


@pytest.mark.parametrize("case", BUILD_ERRORS, ids=str)
def test_build_rejects_what_cannot_work_before_training(case, tmp_path):
    overrides, error, parts = BUILD_ERRORS[case]
    out = tmp_path / "runs"
    config = load_config(None, [*overrides, f"output.dir='{out}'"])
    with pytest.raises(error) as e:
        build(config)
    for part in parts:
        assert part in str(e.value)
    with pytest.raises(error):  # run() builds first: no run folder, no round
        run(config)
    assert not out.exists()


def test_missing_mnist_folder_is_a_data_error_before_any_run_folder(empty_dir, tmp_path):
    out = tmp_path / "runs"
    config = load_config(None, ["data.dataset=mnist", f"data.dir='{empty_dir}'", "data.download=false",
                                "model.name=mnist_2nn", f"output.dir='{out}'"])
    with pytest.raises(DataError) as e:
        run(config)
    msg = str(e.value)
    assert str(empty_dir / "mnist") in msg and "train-images-idx3-ubyte.gz" in msg and "download=False" in msg
    assert not out.exists()
    assert list(empty_dir.iterdir()) == []  # nothing downloaded or created


@pytest.mark.parametrize("overrides", [
    ["model.name=mlp"],  # an MLP fits tabular data
    ["data.dataset=diabetes", "model.name=linear_regression", "data.partition=quantity",
     "evaluate.target_metric=r2", "evaluate.target=0.4"],
    ["evaluate.target=0.2", "evaluate.target_metric=federated_loss"],
])
def test_build_accepts_consistent_configs(overrides):
    exp = build(load_config(None, overrides))
    assert exp.num_clients == 10
    held = exp.holdout.sizes().sum() if exp.holdout is not None else 0
    assert exp.partition.sizes().sum() + held == len(exp.train)  # every training example belongs to one client
