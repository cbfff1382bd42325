"""Values that cannot train are refused before training, naming the key and what is accepted; and the
update bound is on by default, and says so when a run turns it off."""

import pytest

from cohort.config import load_config
from cohort.core.errors import ConfigError
from cohort.recipe import bound_mode, make_algorithm, protections


@pytest.mark.parametrize("setting, key", [
    ("client.lr=1e308", "client.lr"),
    ("server.lr=1e308", "server.lr"),
    ("privacy.noise_multiplier=1e308", "privacy.noise_multiplier"),
    ("privacy.clip=1e300", "privacy.clip"),
    ("client.ldp_noise_multiplier=1e308", "client.ldp_noise_multiplier"),
    ("secagg.clip_range=1e300", "secagg.clip_range"),
    ("server.norm_bound='off'", "server.norm_bound"),
    ("server.norm_bound=-1", "server.norm_bound"),
    ("server.norm_bound_multiplier=0.5", "server.norm_bound_multiplier"),
])
def test_overflowing_values_are_refused_with_what_is_accepted(setting, key):
    extra = ["privacy.mode=central"] if setting.startswith("privacy") else []
    extra += ["secagg.mode=secagg"] if setting.startswith("secagg") else []
    with pytest.raises(ConfigError) as e:
        load_config(None, [setting, *extra])
    text = str(e.value)
    assert text.startswith(key) and "expected" in text


def test_the_bound_is_on_by_default_and_says_how_it_is_loosened():
    config = load_config(None)
    assert config.server.norm_bound == "auto" and bound_mode(config) == "auto"
    assert make_algorithm(config).bounded
    assert "updates bounded at 4× the recent median norm" in protections(config)
    off = load_config(None, ["server.norm_bound=0"])
    assert not make_algorithm(off).bounded and "NOT bounded" in protections(off)
    fixed = load_config(None, ["server.norm_bound=2.5"])
    assert bound_mode(fixed) == "fixed" and "norm 2.5" in protections(fixed)


@pytest.mark.parametrize("sets, mode, says", [
    (["privacy.mode=central", "privacy.clip=0.3"], "dp", "clipped at norm 0.3 (central DP)"),
    (["secagg.mode=secagg", "secagg.clip_range=0.5"], "secagg", "clipped by each client to ±0.5"),
])
def test_where_the_server_cannot_bound_the_run_names_what_bounds_instead(sets, mode, says):
    config = load_config(None, sets)
    assert bound_mode(config) == mode and says in protections(config)
    assert not make_algorithm(config).bounded  # the DP clip, or the clients' own clip, is the bound
