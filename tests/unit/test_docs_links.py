"""Relative links in README.md and docs/*.md lead somewhere: to a file that exists and, with #anchor, to a
heading of it (no I/O beyond reading files). Also: the README's map links every page under docs/."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

from support import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def prose(text: str) -> list[str]:
    """The lines outside fenced code blocks, with inline code removed."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text lowercased, without punctuation but - and _, spaces as -."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text
    text = text.replace("`", "").replace("*", "").strip().lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return kept.replace(" ", "-")


def anchors(text: str) -> set[str]:
    found: set[str] = set()
    for line in prose(text):
        heading = re.match(r"#{1,6} (.+?)\s*#*\s*$", line)
        if heading:
            base = slug(heading.group(1))
            name, n = base, 0
            while name in found:  # GitHub numbers repeated headings: x, x-1, x-2
                n += 1
                name = f"{base}-{n}"
            found.add(name)
    return found


def broken_links(page: Path, text: str | None = None) -> list[str]:
    """The links of `page` (its text, or `text` as if it were there) that lead nowhere."""
    problems = []
    text = page.read_text(encoding="utf-8") if text is None else text
    for line in prose(text):
        for target in LINK.findall(re.sub(r"`[^`]*`", "", line)):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                continue
            path_part, _, anchor = target.partition("#")
            if not path_part:
                if anchor not in anchors(text):
                    problems.append(f"{target}: no such heading on this page")
                continue
            resolved = (page.parent / path_part).resolve()
            if not resolved.exists():
                problems.append(f"{target}: no such file")
            elif (
                anchor
                and resolved.suffix == ".md"
                and anchor not in anchors(resolved.read_text(encoding="utf-8"))
            ):
                problems.append(f"{target}: no heading #{anchor} in {resolved.name}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    assert broken_links(page) == []


def test_the_readme_map_links_every_page_of_the_docs() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    docs_map = readme.split("\n## Documentation\n", 1)[1].split("\n## ", 1)[0]
    linked = {Path(target.partition("#")[0]).name for target in LINK.findall(docs_map)}
    missing = [page.name for page in sorted((ROOT / "docs").glob("*.md")) if page.name not in linked]
    assert missing == [], "README's map of the docs does not link these pages"


def test_slugs_follow_github() -> None:
    assert slug("`mabrouter serve`") == "mabrouter-serve"
    assert slug("Tracing: the standard `OTEL_*` variables") == "tracing-the-standard-otel_-variables"
    assert slug('What "acknowledged" means, and how the spool makes it true') == (
        "what-acknowledged-means-and-how-the-spool-makes-it-true"
    )
    assert slug("8. Archive: stop serving it, keep everything") == "8-archive-stop-serving-it-keep-everything"


def test_a_broken_link_is_caught() -> None:
    text = (
        "[ok](metrics.md#calls-and-decisions) [gone](missing.md) [moved](metrics.md#old-section)\n"
        "[up](../README.md#performance) [self](#nowhere)\n"
        "```\n[in code](nowhere.md)\n```\n"
    )
    problems = broken_links(ROOT / "docs" / "a-page-being-written.md", text)
    assert [problem.split(": ")[0] for problem in problems] == [
        "missing.md",
        "metrics.md#old-section",
        "#nowhere",
    ]
