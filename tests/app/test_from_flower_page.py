"""docs/from-flower.md shows the quickstart's app as it is: its code block is examples/quickstart_pytorch/app.py
(which tests/integration/test_quickstart_app.py runs), and every setting and flag the page names exists."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = (ROOT / "docs" / "from-flower.md").read_text()


def test_the_pages_app_is_the_example_that_runs():
    blocks = re.findall(r"```python\n(.*?)```", PAGE, flags=re.S)
    assert blocks and blocks[0] == (ROOT / "examples" / "quickstart_pytorch" / "app.py").read_text()


def test_the_settings_the_page_names_exist():
    from cohort.config import RunConfig, load_config

    for key in ("evaluate.initial", "evaluate.threads", "simulation.threads", "server.fraction", "rounds"):
        node = RunConfig()
        for part in key.split("."):
            assert hasattr(node, part), key
            node = getattr(node, part)
    load_config(None, ["app.learning-rate=0.05", "evaluate.initial=true", "evaluate.threads=2"])


def test_the_flags_the_page_names_exist():
    from cohort.cli import _parser

    sub = next(a for a in _parser()._actions if a.dest == "command").choices
    for command, flags in re.findall(r"^cohort (\w+) (.*)$", PAGE, flags=re.M):
        known = {o for a in sub[command]._actions for o in a.option_strings}
        for flag in re.findall(r"(--[a-z-]+)", flags.split("#")[0]):
            assert flag in known, (command, flag)
