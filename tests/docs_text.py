"""Reading the README and docs/ as tests need them: fenced blocks, sections, links, repository paths."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", flags=re.DOTALL | re.MULTILINE)
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6} (.+?)\s*$", flags=re.MULTILINE)
# A repository path in a command or in `code`: generated folders (certs/, the self-managed overlay's certs/) are
# made by the commands themselves, and `tests/test_<module>.py` is a pattern, not a file.
_REPO_PATH = re.compile(r"(?<![\w/.-])((?:tests|bench|manifests|webhook|docs)/[\w./<>-]*[\w/])")
_GENERATED = ("manifests/overlays/self-managed/certs",)


def doc(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def code_blocks(text: str, language: str = "") -> list[str]:
    """The fenced blocks of `text` in `language` ("" for blocks without one)."""
    return [body for lang, body in _FENCE.findall(text) if lang == language]


def block_with(text: str, marker: str, language: str = "") -> str:
    """The first fenced block in `language` that contains `marker`."""
    return next(body for body in code_blocks(text, language) if marker in body)


def section(text: str, heading: str) -> str:
    """From the heading line (`## Uninstall`) to the next heading of the same or a higher level."""
    level = len(heading) - len(heading.lstrip("#"))
    # Comment lines inside fenced blocks ("# 1. Stop adding gates") are not headings: blank the blocks out,
    # keeping every offset.
    prose = _FENCE.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)
    start = prose.index(heading + "\n")
    following = re.compile(rf"^#{{1,{level}}} ", flags=re.MULTILINE)
    end = following.search(prose, start + len(heading))
    return text[start:end.start() if end else len(text)]


def without_code(text: str) -> str:
    return _FENCE.sub("", text)


def table_rows(text: str) -> list[list[str]]:
    """Every row of every Markdown table, as its cells, header rows included and separator rows left out."""
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not re.fullmatch(r"[|\s:-]+", line):
            cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
            rows.append([cell.strip() for cell in cells])
    return rows


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {anchor(h) for h in _HEADING.findall(without_code(path.read_text(encoding="utf-8")))}


def broken_links(path: Path) -> list[str]:
    """Relative links of a Markdown file whose file, or whose #anchor in that file, does not exist."""
    broken = []
    for target in _LINK.findall(without_code(path.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        file_part, _, fragment = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        missing_file = not linked.is_relative_to(ROOT) or not linked.exists()
        if missing_file or (fragment and linked.suffix == ".md" and fragment not in anchors(linked)):
            broken.append(target)
    return broken


def paths_in_code(text: str) -> list[str]:
    """Repository paths named in commands and `code` spans, without patterns and generated folders."""
    spans = [*(body for _, body in _FENCE.findall(text)), *re.findall(r"`([^`\n]+)`", without_code(text))]
    found = {p.rstrip("/") for span in spans for p in _REPO_PATH.findall(span) if "<" not in p}
    return sorted(p for p in found if not p.startswith(_GENERATED))
