"""Components bring their own settings sections (cohort.core.sections): the config reads, checks and
hands them over without naming any component, and a user's algorithm registers the same way."""

from dataclasses import dataclass

import pytest

from cohort.algorithms import ALGORITHMS, fedavg, register_algorithm
from cohort.config import load_config
from cohort.core.errors import ConfigError
from cohort.core.sections import SECTIONS, register_section


@dataclass(frozen=True)
class LookaheadSettings:
    """``[lookahead]``"""

    steps: int = 5

    def __post_init__(self):
        if not 1 <= self.steps <= 100:
            raise ConfigError(f"lookahead.steps is {self.steps!r}; expected an integer from 1 to 100")


@pytest.fixture
def lookahead():
    seen = {}

    def factory(steps=5, **server):
        seen.update(steps=steps, **server)
        return fedavg(server.get("server_lr", 1.0))

    register_algorithm("lookahead", factory, LookaheadSettings)
    yield seen
    del ALGORITHMS["lookahead"], SECTIONS["lookahead"]


def test_a_users_algorithm_gets_its_own_section(lookahead, tmp_path):
    from cohort.recipe import make_algorithm

    path = tmp_path / "c.toml"
    path.write_text("[server]\nalgorithm = 'lookahead'\nlr = 0.5\n[lookahead]\nsteps = 7\n")
    config = load_config(path)
    assert config.lookahead == LookaheadSettings(7) == config.chosen("server.algorithm")
    make_algorithm(config)
    assert lookahead == {"steps": 7, "server_lr": 0.5, "server_momentum": 0.0, "weighted": True}
    assert "[lookahead]\nsteps = 7" in config.to_toml()  # the resolved config keeps it, so --resume reads it back
    assert load_config(None, ["server.algorithm=lookahead", "lookahead.steps=7"]).lookahead.steps == 7
    assert load_config(_written(tmp_path, config.to_toml())) == config


def _written(tmp_path, text):
    path = tmp_path / "resolved.toml"
    path.write_text(text)
    return path


def test_a_sections_own_check_names_its_key(lookahead):
    with pytest.raises(ConfigError, match=r"lookahead\.steps is 0; expected an integer from 1 to 100"):
        load_config(None, ["lookahead.steps=0"])
    with pytest.raises(ConfigError, match=r"unknown config key 'lookahead\.step'; did you mean 'lookahead\.steps'"):
        load_config(None, ["lookahead.step=3"])


def test_an_unregistered_section_is_refused_with_the_nearest_registered_one():
    with pytest.raises(ConfigError, match=r"unknown config key 'fedprx'; did you mean 'fedprox'\?"):
        load_config(None, ["fedprx.mu=0.1"])
    assert "lookahead" not in SECTIONS  # the fixture's registration was removed


def test_a_section_is_registered_once():
    with pytest.raises(ValueError, match=r"section \[fedprox\] is registered already"):
        register_section("fedprox", LookaheadSettings, chosen_by="server.algorithm")


def test_declared_abilities_replace_name_checks():
    with pytest.raises(ConfigError, match=r"server.over_selection is 0.3; expected 0 with server.policy = 'fedbuff' "
                                          r"\(over-selection is for policies that sample each round's clients: sync\)"):
        load_config(None, ["server.policy=fedbuff", "server.over_selection=0.3"])
    with pytest.raises(ConfigError, match=r"simulation.ray_address is 'auto'; expected set only with simulation.backend = 'ray'"):
        load_config(None, ["simulation.ray_address=auto"])
    assert load_config(None, ["server.policy=fedasync", "fedasync.alpha=0.3"]).chosen("server.policy").alpha == 0.3
    assert load_config(None, []).chosen("server.policy") is None  # sync has no section


APP_MODULE = '''
from dataclasses import dataclass

from cohort import App
from cohort.algorithms import fedavg, register_algorithm


@dataclass(frozen=True)
class BoostSettings:
    boost: float = 1.0


def boosted(boost=1.0, server_lr=1.0, server_momentum=0.0, weighted=True):
    return fedavg(server_lr * boost, server_momentum, weighted)


register_algorithm("boosted", boosted, BoostSettings)
app = App(config={"server": {"algorithm": "boosted"}, "boosted": {"boost": 0.5}, "rounds": 2})
'''


def test_an_apps_module_registers_its_algorithm_before_the_config_is_read(tmp_path, monkeypatch):
    import sys
    import tomllib

    from cohort.cli import main

    (tmp_path / "boosted_app.py").write_text(APP_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert main(["run", "--app", "boosted_app:app", "--out", str(tmp_path / "runs"), "--no-progress", "--quiet",
                     "--set", "boosted.boost=0.25"]) == 0
        (folder,) = (tmp_path / "runs").iterdir()
        resolved = tomllib.loads((folder / "config.toml").read_text())
        assert resolved["server"]["algorithm"] == "boosted" and resolved["boosted"] == {"boost": 0.25}
        assert len((folder / "metrics.jsonl").read_text().splitlines()) == 2
    finally:
        ALGORITHMS.pop("boosted", None)
        SECTIONS.pop("boosted", None)
        sys.modules.pop("boosted_app", None)
