"""No algorithm, policy or backend name is tested outside its own module: the experiment and the recipe
ask a component what it declares (Algorithm.needs, its groups, its client half; the policy builders'
table) instead of comparing names."""

import re
from pathlib import Path

import cohort
from cohort.algorithms import ALGORITHMS
from cohort.channel import BACKENDS
from cohort.server.policies import POLICIES

SRC = Path(cohort.__file__).parent


def comparisons(text: str, names) -> list[str]:
    """Lines that compare something with one of ``names`` (==, !=, in a literal tuple or list)."""
    quoted = "|".join(re.escape(n) for n in names)
    pattern = re.compile(rf"""(==|!=)\s*["']({quoted})["']|["']({quoted})["']\s*(==|!=)|in\s*[(\[][^)\]]*["']({quoted})["']""")
    return [line.strip() for line in text.splitlines() if pattern.search(line) and not line.strip().startswith("#")]


def test_the_experiment_and_the_recipe_name_no_component():
    names = [*ALGORITHMS, *POLICIES, *BACKENDS]
    for path in ("experiment.py", "recipe.py", "app.py", "cli_run.py"):
        found = comparisons((SRC / path).read_text(), names)
        assert not found, (path, found)


def test_the_check_would_see_one():
    assert comparisons('    if config.server.algorithm == "scaffold":', ["scaffold"])
    assert comparisons('    if x in ("fedper", "ditto"):', ["ditto"])
    assert not comparisons('    algorithm = ALGORITHMS[config.server.algorithm]', ["scaffold"])


def test_each_list_of_names_is_kept_once():
    from cohort import config, simulation

    assert config.BACKENDS is BACKENDS and simulation.BACKENDS is BACKENDS and config.POLICIES is POLICIES
    from cohort.recipe import ASYNC_POLICIES

    assert set(ASYNC_POLICIES) == set(POLICIES)
