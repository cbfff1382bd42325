"""The documentation site cannot rot: the generated reference pages are what the code says now, every
setting is documented by the comment on its line, the CLI page names every command and flag, and every
page of the navigation exists (and the site builds in strict mode, as `make docs` does in CI)."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def _generator():
    spec = importlib.util.spec_from_file_location("gen_reference", DOCS / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (dataclasses and inspect look modules up by name)
    spec.loader.exec_module(module)
    return module


gen = _generator()


# ------------------------------------------------------------------------------------------------ settings

def test_the_committed_settings_page_is_what_the_code_generates():
    committed = (DOCS / "reference" / "settings.md").read_text(encoding="utf-8")
    assert committed == gen.settings_markdown(), (
        "docs/reference/settings.md differs from the config dataclasses: run `make docs` (or "
        "`PYTHONPATH=src .venv/bin/python docs/gen_reference.py`) and commit the page")


def test_the_committed_cli_page_is_what_the_parsers_generate():
    committed = (DOCS / "reference" / "cli.md").read_text(encoding="utf-8")
    assert committed == gen.cli_markdown(), "docs/reference/cli.md differs from cohort.cli's parsers: run `make docs`"


def test_every_setting_has_a_comment():
    missing = []
    for s in gen.sections():
        missing += gen.section_rows(s["cls"], f"{s['name']}." if s["name"] else "", s["skip"])[1]
    assert missing == []


def test_the_page_covers_every_section_and_key():
    """Every section RunConfig reads, every registered section, and every field of each, by its full key."""
    import cohort.config  # noqa: F401  (registers the components' sections)
    from cohort.config import RunConfig
    from cohort.core.sections import SECTIONS

    page = (DOCS / "reference" / "settings.md").read_text(encoding="utf-8")
    tables = {f.name: f.default_factory for f in dataclasses.fields(RunConfig)
              if f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory)}
    tables.update({name: s.settings for name, s in SECTIONS.items()})
    assert {"data", "model", "client", "server", "evaluate", "simulation", "output", "privacy", "secagg", "compression",
            "network", "attack", "fedprox", "scaffold", "fedper", "ditto", "fedbuff", "fedasync"} <= set(tables)
    for name, cls in tables.items():
        assert f"## `[{name}]` {{#{name}}}" in page, name
        for f in dataclasses.fields(cls):
            assert f"`{name}.{f.name}`" in page, f"{name}.{f.name}"
    for f in dataclasses.fields(RunConfig):  # and the top-level keys
        if f.name != "sections" and f.name not in tables:
            assert f"`{f.name}`" in page, f.name


@dataclasses.dataclass(frozen=True)
class _Documented:
    epochs: int = 1  # passes over the data
    lr: float = 0.1  # local learning rate

    def __post_init__(self) -> None:
        from cohort.core.errors import check

        check(0 < self.lr <= 10, "demo.lr", self.lr, "a number in (0, 10]")


@dataclasses.dataclass(frozen=True)
class _OneUndocumented:
    epochs: int = 1  # passes over the data
    lr: float = 0.1
    mode: str = (
        "none"  # a comment on a field's later line counts
    )


def _section(cls, name="demo", chosen_by=None):
    return {"name": name, "cls": cls, "skip": (), "chosen_by": chosen_by}


def test_the_generator_reads_each_fields_comment():
    page = gen.settings_markdown([_section(_Documented)])
    assert "| <span id=\"demo.epochs\"></span>`demo.epochs` | integer | `1` | passes over the data |  |" in page
    assert "| <span id=\"demo.lr\"></span>`demo.lr` | number | `0.1` | local learning rate | a number in (0, 10\\] |" in page


def test_what_a_setting_accepts_is_its_checks_own_words():
    from cohort.client.settings import TrainSettings
    from cohort.config import DataConfig, ServerConfig

    assert gen.accepted_values(TrainSettings, "epochs", "client.epochs", int) == "an integer from 1 to 10000"
    assert gen.accepted_values(ServerConfig, "fraction", "server.fraction", float) == "0 < fraction <= 1"
    assert gen.accepted_values(DataConfig, "impute", "data.impute", str) == "one of none, mean, median, constant"
    assert gen.accepted_values(DataConfig, "standardize", "data.standardize", bool) == ""  # a switch: no probe


def test_a_setting_added_without_a_comment_fails_naming_its_key():
    """The test of the test: a field with no comment stops the generator, and names the key."""
    with pytest.raises(gen.UndocumentedSetting, match=r"demo\.lr") as caught:
        gen.settings_markdown([_section(_OneUndocumented)])
    assert caught.value.keys == ["demo.lr"]


def test_a_registered_section_without_comments_fails_and_a_documented_one_changes_the_page():
    """End to end through the real registry: a component's new section makes the committed page stale when its
    settings are commented, and stops the generator when one is not."""
    from cohort.core.sections import SECTIONS, register_section

    committed = (DOCS / "reference" / "settings.md").read_text(encoding="utf-8")
    try:
        register_section("zz_documented", _Documented, chosen_by="server.algorithm")
        page = gen.settings_markdown()
        assert page != committed and "`zz_documented.lr`" in page
        register_section("zz_undocumented", _OneUndocumented, chosen_by="server.policy")
        with pytest.raises(gen.UndocumentedSetting) as caught:
            gen.settings_markdown()
        assert caught.value.keys == ["zz_undocumented.lr"]
    finally:
        SECTIONS.pop("zz_documented", None)
        SECTIONS.pop("zz_undocumented", None)
    assert gen.settings_markdown() == committed


def test_the_generator_script_checks_and_fails_when_a_page_is_stale(tmp_path, monkeypatch):
    assert gen.main(["--check"]) == 0
    monkeypatch.setattr(gen, "SETTINGS_PAGE", tmp_path / "settings.md")
    (tmp_path / "settings.md").write_text("# Settings\n\nan old page\n")
    assert gen.main(["--check"]) == 1
    assert (tmp_path / "settings.md").read_text() == "# Settings\n\nan old page\n"  # --check writes nothing


def test_markdown_in_comments_is_shown_as_written():
    cell = gen._cell('a category "<missing>" | (1 + s) ** -a, under `cohort | server`')
    assert cell == 'a category "&lt;missing&gt;" \\| (1 + s) \\*\\* -a, under `cohort | server`'


# ------------------------------------------------------------------------------------------------------ CLI

def _walk(parser, prefix="cohort"):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{prefix} {name}", sub
                yield from _walk(sub, f"{prefix} {name}")


def test_the_cli_page_lists_every_command_and_flag():
    from cohort.cli import _parser

    page = (DOCS / "reference" / "cli.md").read_text(encoding="utf-8")
    found = 0
    for command, sub in _walk(_parser()):
        found += 1
        head = f"## {command} {{#{command.replace(' ', '-')}}}\n"
        assert head in page, command
        section = page.split(head, 1)[1].split("\n## ", 1)[0]
        for action in sub._actions:
            for flag in action.option_strings:
                if flag in ("-h", "--help"):
                    continue
                assert re.search(rf"(`|, ){re.escape(flag)}[ `,]", section), (command, flag)
            if not action.option_strings and action.dest not in ("help",) and action.help:
                assert action.help.split(";")[0].strip().replace("|", "\\|")[:30] in section, (command, action.dest)
    assert found >= 10  # run, server, client, certs, keys (new, allow, revoke, list), plot, view, report


# ---------------------------------------------------------------------------------------------------- site

def _nav_pages(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, list):
        for item in node:
            yield from _nav_pages(item)
    elif isinstance(node, dict):
        for value in node.values():
            yield from _nav_pages(value)


def test_every_page_in_the_nav_exists_and_every_page_is_in_the_nav():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    pages = list(_nav_pages(config["nav"]))
    assert len(pages) == len(set(pages))
    for page in pages:
        assert (DOCS / page).is_file(), page
    on_disk = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert on_disk == set(pages), "pages not in mkdocs.yml's nav: " + ", ".join(sorted(on_disk - set(pages)))
    sections = [next(iter(item)) for item in config["nav"] if isinstance(item, dict)]
    assert sections == ["Home", "Tutorials", "How-to guides", "Reference", "Explanation"]  # the Diátaxis split


def test_the_site_builds_in_strict_mode(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    for page in ("index.html", "reference/settings.html", "reference/cli.html", "reference/api.html",
                 "tutorials/getting-started.html"):
        assert (site / page).is_file(), page
    api = (site / "reference" / "api.html").read_text(encoding="utf-8")
    for module in ("cohort.app", "cohort.config", "cohort.algorithms", "cohort.client.context", "cohort.core.sections",
                   "cohort.core.records", "cohort.simulation"):
        assert f'id="{module}"' in api, module


def test_a_link_out_of_docs_must_name_a_file_of_the_repository(tmp_path):
    """docs/hooks.py: ``../examples/...`` links are checked against the repository and made plain text."""
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)

    class Page:
        class file:
            src_path = "from-flower.md"

    config = {"docs_dir": str(DOCS), "repo_url": None}
    ok = hooks.on_page_markdown("see [`examples/quickstart_pytorch/`](../examples/quickstart_pytorch/).", Page, config, None)
    assert ok == "see `examples/quickstart_pytorch/`."
    named = hooks.on_page_markdown("see [the app](../examples/quickstart_pytorch/app.py)", Page, config, None)
    assert named == "see the app (`examples/quickstart_pytorch/app.py`)"
    inside = "[settings](reference/settings.md) and [up](../docs/index.md)"
    assert hooks.on_page_markdown(inside, Page, config, None) == inside
    import logging

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    hooks.log.addHandler(handler)
    try:
        broken = "[gone](../examples/no_such_example/)"
        assert hooks.on_page_markdown(broken, Page, config, None) == broken
    finally:
        hooks.log.removeHandler(handler)
    assert records and "no_such_example" in records[0].getMessage()
