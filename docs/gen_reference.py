"""Writes the generated reference pages from the code: docs/reference/settings.md from the config
dataclasses and docs/reference/cli.md from the ``cohort`` command's parsers.

``make docs`` runs it before ``mkdocs build --strict``; the pages are committed too, and
tests/docs/test_docs_site.py checks that the committed settings page is what this script writes now,
so a setting added without regenerating the docs fails the tests. Every setting must carry a trailing
``# comment`` on its line in the dataclass: that comment is its documentation, and a setting without
one stops this script with an error naming the key.

    PYTHONPATH=src .venv/bin/python docs/gen_reference.py          # write both pages
    PYTHONPATH=src .venv/bin/python docs/gen_reference.py --check  # exit 1 when a page is out of date
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import math
import re
import sys
import textwrap
import tokenize
import types
import typing
import warnings
from pathlib import Path

DOCS = Path(__file__).resolve().parent
SETTINGS_PAGE = DOCS / "reference" / "settings.md"
CLI_PAGE = DOCS / "reference" / "cli.md"


class UndocumentedSetting(ValueError):
    """Settings without a ``# comment`` on their line: ``keys`` names them, e.g. ``["data.csv_delimiter"]``."""

    def __init__(self, keys: list[str]):
        self.keys = keys
        super().__init__(f"{len(keys)} setting(s) have no `# comment` on their line in the config dataclasses, and the "
                         f"comment is their documentation: {', '.join(keys)}. Add one, e.g. `name: int = 1  # what it does`")


# ----------------------------------------------------------------------------------------------- settings

def field_comments(cls: type) -> dict[str, str]:
    """The trailing ``# comment`` of each field declared in ``cls``'s body (read from its source), by field name.
    A field written over several lines keeps the comments of all of them, joined."""
    source = textwrap.dedent(inspect.getsource(cls))
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    (node,) = ast.parse(source).body
    out = {}
    for stmt in node.body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            lines = range(stmt.lineno, (stmt.end_lineno or stmt.lineno) + 1)
            text = " ".join(comments[n] for n in lines if n in comments)
            if text:
                out[stmt.target.id] = text
    return out


def toml_type(kind: typing.Any) -> str:
    """A field's type in the words of TOML: ``float | None`` is "number, or unset"."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (types.UnionType, typing.Union):
        names = [toml_type(a) for a in args if a is not type(None)]
        text = " or ".join(names)
        return f"{text}, or unset" if type(None) in args else text
    if origin is tuple:
        return f"list of {_plural(toml_type(args[0]))}" if args else "list"
    if origin is dict:
        inner = args[1] if args else typing.Any
        if inner is typing.Any:
            return "table"
        return f"table of {_plural(toml_type(inner))}"
    return {str: "string", int: "integer", float: "number", bool: "boolean", typing.Any: "any"}.get(
        kind, getattr(kind, "__name__", str(kind)))


def _plural(kind: str) -> str:
    """"string" -> "strings", "list of strings" -> "lists of strings"."""
    head, sep, rest = kind.partition(" ")
    return f"{head}s{sep}{rest}"


def toml_value(value: typing.Any) -> str:
    """A default as it is written in TOML (unset: None)."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '""' if value == "" else f'"{value}"'
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    return repr(value)


def default_of(f: dataclasses.Field) -> typing.Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def accepted_values(cls: type, name: str, key: str, kind: typing.Any) -> str:
    """What setting ``key`` accepts, in the words of the config's own check: ``cls`` is built with a value no
    check lets through (NaN for numbers, "?" for text) and the error's "expected ..." is the answer. Blank when
    no check refuses it alone (booleans, lists, tables, free text, or checks that depend on another setting)."""
    args = typing.get_args(kind) if typing.get_origin(kind) in (types.UnionType, typing.Union) else (kind,)
    if int in args or float in args:
        probe: typing.Any = math.nan
    elif str in args:
        probe = "?"
    else:
        return ""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cls(**{name: probe})
    except Exception as e:  # a check's error, or any other: only a message naming this key counts
        found = re.match(rf"{re.escape(key)} is .*?; expected (.*)$", str(e), flags=re.S)
        return " ".join(found[1].split()).rstrip(".") if found else ""
    return ""


def section_rows(cls: type, prefix: str, skip: typing.Collection[str] = ()) -> tuple[list[dict], list[str]]:
    """One row per setting of the dataclass ``cls`` (its nested sections are left out), and the keys without
    a comment."""
    comments = {}
    for klass in reversed(cls.__mro__):  # a field declared in a base class has its comment there
        if dataclasses.is_dataclass(klass) and klass is not object:
            comments.update(field_comments(klass))
    hints = typing.get_type_hints(cls)
    rows, missing = [], []
    for f in dataclasses.fields(cls):
        if f.name in skip or dataclasses.is_dataclass(hints[f.name]):
            continue
        key = f"{prefix}{f.name}"
        if f.name not in comments:
            missing.append(key)
        default = default_of(f)
        rows.append({"key": key, "name": f.name, "type": toml_type(hints[f.name]),
                     "default": "required" if default is dataclasses.MISSING else toml_value(default),
                     "accepts": accepted_values(cls, f.name, key, hints[f.name]), "comment": comments.get(f.name, "")})
    return rows, missing


def sections() -> list[dict]:
    """Every section of the config in the order of the page: the top-level keys, RunConfig's sections, then the
    sections that components register (cohort.core.sections)."""
    from cohort.config import RunConfig  # (importing cohort.config registers the components' sections)
    from cohort.core.sections import SECTIONS

    out = [{"name": "", "cls": RunConfig, "skip": ("sections",), "chosen_by": None}]
    hints = typing.get_type_hints(RunConfig)
    for f in dataclasses.fields(RunConfig):
        if dataclasses.is_dataclass(hints[f.name]):
            out.append({"name": f.name, "cls": hints[f.name], "skip": (), "chosen_by": None})
    for name, section in SECTIONS.items():
        out.append({"name": name, "cls": section.settings, "skip": (), "chosen_by": section.chosen_by})
    return out


def _cell(text: str) -> str:
    """Source text (a comment, a help string) for a table cell, shown as written: outside its `code spans`,
    the characters Markdown or HTML would read (``<missing>``, ``**``, ``|``) are escaped."""
    parts = re.split(r"(`+[^`]*`+)", text)
    for i in range(0, len(parts), 2):  # the even parts are outside code spans
        s = parts[i].replace("\\", "\\\\").replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        for c in "*_[]|":
            s = s.replace(c, "\\" + c)
        parts[i] = s
    return "".join(parts)


def _code(text: str) -> str:
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def _summary(cls: type) -> str:
    """The first paragraph of ``cls``'s own docstring, without the section's name it usually begins with."""
    doc = cls.__dict__.get("__doc__") or ""
    if not doc or doc.startswith(f"{cls.__name__}("):  # dataclass' generated signature
        return ""
    text = " ".join(inspect.cleandoc(doc).split("\n\n")[0].split())
    if text.startswith("``["):
        text = text.split("``", 2)[2].lstrip(":").strip()
    return text[:1].upper() + text[1:]


def settings_markdown(all_sections: list[dict] | None = None) -> str:
    """The settings page; raises UndocumentedSetting naming every setting without a comment."""
    all_sections = sections() if all_sections is None else all_sections
    lines = [
        "# Settings",
        "",
        "<!-- Generated by docs/gen_reference.py from the config dataclasses: do not edit; run `make docs`. -->",
        "",
        "Every setting of a run's TOML config, with its type, its default, what it does and the values it",
        "accepts (in the words of the check that refuses others; blank where no check refuses a value by",
        "itself, as for switches, lists and settings checked against another one). A config file sets",
        "any of them, section by section; `cohort run CONFIG.toml --set section.key=value` overrides one on the",
        "command line (`--set rounds=5`, `--set server.fraction=0.1`). A setting left out keeps its default, and",
        "an unknown key is an error that suggests the closest one.",
        "",
        "This page is generated from the dataclasses in `cohort.config`, `cohort.options`,",
        "`cohort.client.settings` and the components' own sections (`cohort.core.sections`): each description",
        "is the comment on that setting's line in the source.",
        "",
    ]
    toc = ["| section | settings | about |", "| --- | --- | --- |"]
    body, missing = [], []
    for s in all_sections:
        rows, lacking = section_rows(s["cls"], f"{s['name']}." if s["name"] else "", s["skip"])
        missing += lacking
        title = f"`[{s['name']}]`" if s["name"] else "Top level"
        anchor = s["name"] or "top-level"
        summary = _summary(s["cls"])
        if s["chosen_by"]:
            where = (f"In effect when `{s['chosen_by']} = \"{s['name']}\"`: the settings of the component that "
                     f"registers it (`{s['cls'].__module__}.{s['cls'].__qualname__}`).")
        else:
            where = f"Read into `{s['cls'].__module__}.{s['cls'].__qualname__}`."
        toc.append(f"| [{title}](#{anchor}) | {len(rows)} | {_cell(summary)} |")
        body += [f"## {title} {{#{anchor}}}", ""]
        if summary:
            body += [_cell(summary), ""]
        body += [where, ""]
        if not rows:
            body += ["No settings of its own.", ""]
            continue
        body += ["| key | type | default | description | accepts |", "| --- | --- | --- | --- | --- |"]
        for r in rows:
            body.append(f"| <span id=\"{r['key']}\"></span>`{r['key']}` | {r['type']} | {_code(r['default'])} "
                        f"| {_cell(r['comment'])} | {_cell(r['accepts'])} |")
        body.append("")
    if missing:
        raise UndocumentedSetting(missing)
    return "\n".join(lines + toc + [""] + body).rstrip("\n") + "\n"


# ------------------------------------------------------------------------------------------------------ CLI

def _subparsers(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, help, parser) of each subcommand of ``parser``, in the order they were added."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                out.append((name, helps.get(name, ""), sub))
    return out


def commands(parser: argparse.ArgumentParser | None = None, prefix: str = "cohort") -> list[dict]:
    """Every command of the ``cohort`` parser, depth first: its name, help, usage and arguments."""
    if parser is None:
        from cohort.cli import _parser

        parser = _parser()
    out = []
    for name, help_text, sub in _subparsers(parser):
        full = f"{prefix} {name}"
        sub.prog = full
        formatter = argparse.HelpFormatter(full, width=100, max_help_position=40)
        formatter.add_usage(sub.usage, sub._actions, sub._mutually_exclusive_groups, prefix="")
        args = []
        for a in sub._actions:
            if isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            default = a.default
            unset = default is None or default is False or default == [] or default == argparse.SUPPRESS
            shown = ("" if unset or isinstance(a, argparse._VersionAction)
                     else default if isinstance(default, str) else repr(default))
            args.append({"flags": list(a.option_strings), "dest": a.dest,
                         "metavar": a.metavar if isinstance(a.metavar, str) else None,
                         "positional": not a.option_strings, "nargs": a.nargs,
                         "default": shown, "help": (a.help or "") % {"default": a.default, "prog": full}
                         if a.help and "%(" in a.help else (a.help or "")})
        out.append({"name": full, "help": help_text, "description": sub.description or "",
                    "usage": formatter.format_help().strip(), "arguments": args})
        out += commands(sub, full)
    return out


def cli_markdown(all_commands: list[dict] | None = None) -> str:
    all_commands = commands() if all_commands is None else all_commands
    lines = [
        "# Command line",
        "",
        "<!-- Generated by docs/gen_reference.py from cohort.cli's parsers: do not edit; run `make docs`. -->",
        "",
        "The `cohort` command (`.venv/bin/cohort` after `make install`). `cohort --version` prints the",
        "version; `cohort COMMAND --help` prints what this page says about COMMAND.",
        "",
        "| command | what it does |",
        "| --- | --- |",
    ]
    for c in all_commands:
        lines.append(f"| [`{c['name']}`](#{c['name'].replace(' ', '-')}) | {_cell(c['help'])} |")
    lines.append("")
    for c in all_commands:
        lines += [f"## {c['name']} {{#{c['name'].replace(' ', '-')}}}", ""]
        if c["help"]:
            lines += [_cell(c["help"][0].upper() + c["help"][1:] + ("" if c["help"].endswith(".") else ".")), ""]
        if c["description"] and c["description"] != c["help"]:
            lines += [_cell(c["description"]), ""]
        lines += ["```text", c["usage"], "```", ""]
        if c["arguments"]:
            lines += ["| argument | default | description |", "| --- | --- | --- |"]
            for a in c["arguments"]:
                if a["positional"]:
                    name = a["metavar"] or a["dest"]
                    name += " ..." if a["nargs"] in ("+", "*") else ""
                    name = f"[{name}]" if a["nargs"] in ("?", "*") else name
                else:
                    name = ", ".join(a["flags"]) + (f" {a['metavar']}" if a["metavar"] else
                                                    "" if a["nargs"] == 0 else f" {a['dest'].upper()}")
                default = _code(a["default"]) if a["default"] else ""
                lines.append(f"| {_code(name)} | {default} | {_cell(a['help'])} |")
            lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


# ----------------------------------------------------------------------------------------------------- main

def pages() -> dict[Path, str]:
    return {SETTINGS_PAGE: settings_markdown(), CLI_PAGE: cli_markdown()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when a page differs from the code")
    args = parser.parse_args(argv)
    try:
        wanted = pages()
    except UndocumentedSetting as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    stale = []
    for path, text in wanted.items():
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    for path in stale:
        shown = path.relative_to(DOCS.parent) if path.is_relative_to(DOCS.parent) else path
        print(f"{'out of date' if args.check else 'wrote'}: {shown}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
