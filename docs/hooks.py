"""MkDocs hook (mkdocs.yml: ``hooks``): links from a page to a file of the repository outside docs/.

The pages link to the examples and tests they show (``[`examples/quickstart_pytorch/`](../examples/quickstart_pytorch/)``),
which read well on GitHub but are not part of the site. Here such a link must name a file or folder that
exists in the repository, else the strict build fails with a warning naming the page and the link; on the
site it becomes the repository's page of that file when ``repo_url`` is set in mkdocs.yml, and otherwise
plain text naming the path (the link's text, and the path when the text does not say it)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

log = logging.getLogger("mkdocs.plugins.cohort")
LINK = re.compile(r"(?<!!)\[(?P<text>[^\]]+)\]\((?P<target>\.\./[^)\s#]*)(?P<anchor>#[^)\s]*)?\)")


def on_page_markdown(markdown: str, page, config, files) -> str:
    docs = Path(config["docs_dir"]).resolve()
    root = docs.parent
    here = (docs / page.file.src_path).parent
    repo_url = (config.get("repo_url") or "").rstrip("/")

    def outside(match: re.Match) -> str:
        target = (here / match["target"]).resolve()
        if target.is_relative_to(docs):  # a page of the site: MkDocs checks those itself
            return match[0]
        if not target.is_relative_to(root) or not target.exists():
            log.warning("Doc file '%s' links to '%s', which is not a file of the repository", page.file.src_path,
                        match["target"])
            return match[0]
        path = target.relative_to(root).as_posix() + ("/" if target.is_dir() else "")
        if repo_url:
            kind = "tree" if target.is_dir() else "blob"
            return f"[{match['text']}]({repo_url}/{kind}/main/{path}{match['anchor'] or ''})"
        text = match["text"]
        return text if path.rstrip("/") in text else f"{text} (`{path}`)"

    return LINK.sub(outside, markdown)
