"""No algorithm, policy or backend name is tested outside its own module: the experiment, the recipe and
the config ask a component what it declares (Algorithm.needs, its groups, its client half; a policy's
kind, a backend's own keys; a registered section) instead of comparing names."""

import re
from pathlib import Path

import cohort
from cohort.algorithms import ALGORITHMS
from cohort.channel import BACKENDS
from cohort.server.kinds import POLICIES

SRC = Path(cohort.__file__).parent


def comparisons(text: str, names) -> list[str]:
    """Lines that compare something with one of ``names`` (==, !=, in a literal tuple or list)."""
    quoted = "|".join(re.escape(n) for n in names)
    pattern = re.compile(rf"""(==|!=)\s*["']({quoted})["']|["']({quoted})["']\s*(==|!=)|in\s*[(\[][^)\]]*["']({quoted})["']""")
    return [line.strip() for line in text.splitlines() if pattern.search(line) and not line.strip().startswith("#")]


def test_the_experiment_and_the_recipe_name_no_component():
    names = [*ALGORITHMS, *POLICIES, *BACKENDS]
    for path in ("experiment.py", "recipe.py", "config.py", "options.py", "app.py", "cli_run.py", "simulation.py"):
        found = comparisons((SRC / path).read_text(), names)
        assert not found, (path, found)


def test_the_check_would_see_one():
    assert comparisons('    if config.server.algorithm == "scaffold":', ["scaffold"])
    assert comparisons('    if x in ("fedper", "ditto"):', ["ditto"])
    assert not comparisons('    algorithm = ALGORITHMS[config.server.algorithm]', ["scaffold"])


def test_each_list_of_names_is_kept_once():
    from cohort import config, simulation

    assert config.BACKENDS is BACKENDS and simulation.BACKENDS is BACKENDS and config.POLICIES is POLICIES


def test_the_config_imports_no_components_section_and_lists_none():
    """RunConfig's fields are the framework's own sections; an algorithm's or a policy's comes from its registration."""
    from dataclasses import fields

    from cohort.config import RunConfig
    from cohort.core.sections import SECTIONS

    text = (SRC / "config.py").read_text()
    for name, section in SECTIONS.items():
        assert section.settings.__name__ not in text, name
        assert name not in {f.name for f in fields(RunConfig)}
    assert {"fedprox", "scaffold", "fedper", "ditto", "fedbuff", "fedasync"} <= set(SECTIONS)
