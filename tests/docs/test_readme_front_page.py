"""The README is a front page, not the manual: at most 150 lines, opening with the two commands people and CI
rely on, every relative link in it pointing at a file of the repository, and every section the old 920-line
README had still present as a heading of some page under docs/ (issue 32)."""

from __future__ import annotations

import re
import string
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
README = ROOT / "README.md"

# `grep -n "^## \|^### " README.md` before the README became a front page: its second- and third-level headings.
OLD_README_HEADINGS = [
    "Running experiments",
    "Data",
    "What a run writes",
    "Algorithms and round policies",
    "Frameworks: PyTorch, Keras 3, scikit-learn",
    "Every update is bounded (on by default)",
    "Robust aggregation and attacks",
    "Differential privacy",
    "Secure aggregation",
    "Deploy",
    "Apps: one Python module, simulated and deployed",
    "The Python API",
    "How it is built",
    "Performance",
    "Measured",
    "Not yet here",
]

# An old heading that a page carries under another title: old heading -> the page's heading. (None today: every
# section kept its title; add a line here when one is retitled.)
RETITLED: dict[str, str] = {}

HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
LINK = re.compile(r"(?<!\\)!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _normal(text: str) -> str:
    text = re.sub(r"\{[^}]*\}\s*$", "", text)  # an attribute list such as {#anchor}
    text = text.translate(str.maketrans("", "", string.punctuation + "`*_"))
    return " ".join(text.lower().split())


def _slug(heading: str) -> str:
    """The anchor MkDocs (Python-Markdown's toc) gives a heading."""
    text = re.sub(r"[^\w\s-]", "", heading.lower()).strip()
    return re.sub(r"[-\s]+", "-", text)


def _headings(markdown: str) -> list[str]:
    found, fence = [], None
    for line in markdown.splitlines():
        stripped = line.lstrip()
        if stripped.startswith(("```", "~~~")):
            marker = stripped[:3]
            fence = None if fence == marker else (fence or marker)
            continue
        if fence is None and (match := HEADING.match(line)):
            found.append(match[2])
    return found


def _first_fence(markdown: str) -> list[str]:
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("```"))
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("```"))
    return lines[start + 1:end]


def test_the_readme_is_a_front_page_of_at_most_150_lines():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; move the detail to a page under docs/"


def test_the_readme_opens_with_the_title_and_the_two_commands():
    text = README.read_text(encoding="utf-8")
    assert text.splitlines()[0] == "# cohort"
    block = _first_fence(text)
    commands = [line.split("#", 1)[0].strip() for line in block]
    assert commands[:2] == ["make run", "make test"], block
    # and nothing but the title and a blank line comes before that block
    before = text.split("```", 1)[0]
    assert before.strip() == "# cohort"


def test_every_relative_link_in_the_readme_names_a_file_of_the_repository():
    text = README.read_text(encoding="utf-8")
    targets = [t for t in LINK.findall(text) if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.I)]  # not http:, mailto:
    assert targets, "the front page links to its pages"
    broken = []
    for target in targets:
        path, _, anchor = target.partition("#")
        if not path:  # an anchor on the README itself
            assert _normal(anchor.replace("-", " ")) in {_normal(h) for h in _headings(text)}, target
            continue
        resolved = (ROOT / path).resolve()
        if not resolved.is_relative_to(ROOT) or not resolved.exists():
            broken.append(target)
            continue
        if anchor and resolved.suffix == ".md":
            slugs = {_slug(h) for h in _headings(resolved.read_text(encoding="utf-8"))}
            if anchor not in slugs:
                broken.append(target)
    assert broken == [], "README.md links to what does not exist: " + ", ".join(broken)


def test_the_readme_links_to_every_how_to_and_explanation_page_it_replaced():
    text = README.read_text(encoding="utf-8")
    for page in ("docs/howto/run-experiments.md", "docs/howto/algorithms.md", "docs/howto/frameworks.md",
                 "docs/howto/privacy-and-robustness.md", "docs/howto/deploy.md", "docs/howto/apps.md",
                 "docs/howto/python-api.md", "docs/explanation/how-it-is-built.md",
                 "docs/explanation/performance.md", "docs/explanation/not-yet.md"):
        assert f"]({page}" in text, page


def test_every_section_of_the_old_readme_is_a_heading_of_some_page_under_docs():
    on_pages = {}
    for page in sorted(DOCS.rglob("*.md")):
        for heading in _headings(page.read_text(encoding="utf-8")):
            on_pages.setdefault(_normal(heading), page.relative_to(DOCS).as_posix())
    missing = [old for old in OLD_README_HEADINGS if _normal(RETITLED.get(old, old)) not in on_pages]
    assert missing == [], "sections of the old README with no page under docs/: " + ", ".join(missing)


def test_the_comparison_ignores_case_and_punctuation():
    assert _normal("Frameworks: PyTorch, Keras 3, scikit-learn") == _normal("frameworks pytorch keras 3 scikitlearn")
    assert _normal("Every update is bounded (on by default)") == "every update is bounded on by default"
    assert _headings("# a\n```bash\n# not a heading\n```\n## b {#b}\n") == ["a", "b {#b}"]
    assert _normal("b {#b}") == "b"
    assert _slug("Every update is bounded (on by default)") == "every-update-is-bounded-on-by-default"
