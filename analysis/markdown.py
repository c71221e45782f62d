"""The markdown subset of the documents the report shows (`RunDir.text` documents with `markdown_table`s, a
sweep's `report.md`) as HTML: `#` headings, pipe tables, lines of images and paragraphs with `code` and
[links](file). Links are relative to the document's folder; `href` makes them relative to the report."""
from __future__ import annotations

import html
import itertools
import re
from typing import Callable, Sequence
from urllib.parse import quote

__all__ = ["href", "inline", "html_table", "markdown"]

_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")
_IMAGE_LINE = re.compile(rf"(?:{_IMAGE.pattern}\s*)+")
_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")


def href(target: str, folder: str) -> str:
    """A link of a document in `folder` as the report's root sees it (absolute URLs unchanged)."""
    if "://" in target or target.startswith("/"):
        return target
    return quote(f"{folder}/{target}" if folder else target)


def inline(text: str, folder: str) -> str:
    """One line escaped, with its `code` and [text](link)."""
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text, quote=False))
    return _LINK.sub(lambda m: f"<a href='{html.escape(href(html.unescape(m[2]), folder))}'>{m[1]}</a>", text)


def html_table(rows: Sequence[Sequence[str]], *, caption: str = "") -> str:
    """The first row as the header; cells already escaped; in a box that scrolls sideways when too wide."""
    head = "".join(f"<th>{c}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows[1:])
    title = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<div class='table'><table>{title}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def _kind(line: str) -> str:
    if not line or line[0] in "#|":
        return line[:1]
    return "!" if _IMAGE_LINE.fullmatch(line) else "p"


def markdown(text: str, folder: str, *, image: Callable[[str], str]) -> str:
    """`text` as HTML; `image(target)` gives the HTML of each image, shown in a row of figures."""
    parts = []
    for kind, group in itertools.groupby((line.strip() for line in text.splitlines()), key=_kind):
        block = list(group)
        if kind == "#":
            for line in block:
                level = min(len(line) - len(line.lstrip("#")) + 1, 6)  # under the section's <h2>
                parts.append(f"<h{level}>{inline(line.lstrip('#').strip(), folder)}</h{level}>")
        elif kind == "|":
            parts.append(html_table([[inline(c.strip(), folder) for c in row.strip("|").split("|")]
                                     for row in block if not re.fullmatch(r"[\s:|-]+", row)]))  # no separator
        elif kind == "!":
            parts.append("<div class='figures'>" + "".join(
                image(m[2]) for line in block for m in _IMAGE.finditer(line)) + "</div>")
        elif kind == "p":
            parts.append(f"<p>{inline(' '.join(block), folder)}</p>")
    return "\n".join(parts)
