"""Every code block the docs mark runnable is run, in order, as a reader would (issue 32: docs that cannot rot).

A block is runnable when the line before its opening fence is ``<!-- run -->``. A page's runnable
blocks run one after another in one fresh folder, so a later block may use what an earlier one wrote
(a config, a run folder). The folder holds ``examples`` and ``.venv`` as links to the repository's, so
``.venv/bin/cohort ...`` works there as in a checkout. ``bash`` blocks run under ``bash -e -o
pipefail``; ``python`` blocks with the test's Python; ``toml`` blocks and others cannot be run and are
refused, so a mark never silently does nothing. A block fails the test when it exits non-zero; its
output is in the failure message. The MNIST files come from ``$COHORT_DATA_DIR``
(the shared folder), so nothing is downloaded.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
MARK = "<!-- run -->"
FENCE = re.compile(r"^(```+)\s*([\w+-]*)")


def runnable_blocks(text: str, page: str) -> list[tuple[str, str, int]]:
    """(language, code, line) of every block marked runnable in ``text``."""
    lines, blocks, i = text.splitlines(), [], 0
    while i < len(lines):
        if lines[i].strip() == MARK:
            j = i + 1
            fence = FENCE.match(lines[j].strip()) if j < len(lines) else None
            if fence is None:
                raise AssertionError(f"{page}:{i + 1}: {MARK} is not followed by a fenced code block")
            ticks, lang = fence.groups()
            end = next((k for k in range(j + 1, len(lines)) if lines[k].strip() == ticks), None)
            if end is None:
                raise AssertionError(f"{page}:{j + 1}: the marked block has no closing fence")
            indent = len(lines[j]) - len(lines[j].lstrip())
            blocks.append((lang, "\n".join(line[indent:] for line in lines[j + 1:end]), j + 1))
            i = end
        i += 1
    return blocks


PAGES = sorted(p for p in DOCS.rglob("*.md") if MARK in p.read_text(encoding="utf-8"))


def test_the_docs_mark_blocks_to_run():
    # the tutorials and the how-tos that the issue names carry runnable examples
    names = {p.relative_to(DOCS).as_posix() for p in PAGES}
    for page in ("tutorials/getting-started.md", "tutorials/hospitals.md", "tutorials/mnist.md", "howto/resume.md"):
        assert page in names, f"{page} marks no block {MARK}"


def test_a_mark_without_a_block_or_with_a_language_that_cannot_run_is_refused(tmp_path):
    with pytest.raises(AssertionError, match="not followed by a fenced code block"):
        runnable_blocks(f"text\n{MARK}\nmore text\n", "page.md")
    assert runnable_blocks(f"{MARK}\n```bash\necho hi\n```\n\n```bash\nnot marked\n```\n", "p.md") == [("bash", "echo hi", 2)]
    with pytest.raises(AssertionError, match="cannot be run"):
        run_block("toml", "rounds = 3", tmp_path, "p.md", 1)


def run_block(lang: str, code: str, cwd: Path, page: str, line: int) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "MPLBACKEND": "Agg"}
    if lang in ("bash", "sh", "console"):
        cmd = ["bash", "-e", "-o", "pipefail", "-c", code]
    elif lang in ("python", "py"):
        cmd = [sys.executable, "-c", code]
    else:
        raise AssertionError(f"{page}:{line}: a ```{lang} block cannot be run; mark only bash or python blocks")
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, (f"{page}:{line}: the {lang} block exited {out.returncode}\n--- block\n{code}\n"
                                 f"--- stdout\n{out.stdout[-3000:]}\n--- stderr\n{out.stderr[-3000:]}")


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(DOCS).as_posix() for p in PAGES])
def test_every_runnable_block_of_the_page_runs(page, tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("COHORT_DATA_DIR", str(data_dir))
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))  # the environment running the tests: .venv under make test
    blocks = runnable_blocks(page.read_text(encoding="utf-8"), page.relative_to(ROOT).as_posix())
    assert blocks
    for lang, code, line in blocks:
        run_block(lang, code, tmp_path, page.relative_to(ROOT).as_posix(), line)
