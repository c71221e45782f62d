"""The static HTML report of `just inspect`: one `index.html` beside the PNGs and CSVs it shows (relative
links, no script, no server), so the folder can be opened, copied or zipped as it is."""
from __future__ import annotations

import csv
import html
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence
from urllib.parse import quote

__all__ = ["Section", "write_report"]

_STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1400px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ccc; }
h3 { font-size: 1.05em; margin-top: 1.4em; }
p.ref { color: #555; font-style: italic; margin-top: 0; }
div.figures { display: flex; flex-wrap: wrap; gap: 0.8em; align-items: flex-start; }
img { max-width: 100%; border: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.6em 0; }
td, th { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: right; } th { background: #f3f3f3; }
td:first-child, th:first-child { text-align: left; }
code { background: #f5f5f5; padding: 0 0.2em; }
"""


@dataclass(frozen=True)
class Section:
    title: str
    reference: str  # the paper's table/figure this reproduces
    folder: Path  # the analysis run folder, under the report folder
    images: Sequence[str] = ()  # PNG names inside `folder`
    tables: Sequence[str] = ()  # CSV names inside `folder`
    notes: Sequence[str] = field(default_factory=tuple)
    markdown: str = ""  # a document in `_markdown`'s subset, shown last, its links relative to `folder`


def _html_table(rows: Sequence[Sequence[str]]) -> str:
    """The first row as the header; cells already escaped."""
    head = "".join(f"<th>{c}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows[1:])
    return f"<table><tr>{head}</tr>{body}</table>"


def _table(path: Path, *, max_rows: int = 40) -> str:
    with path.open(newline="", encoding="utf-8") as fh:
        rows = [[html.escape(c) for c in row] for row in csv.reader(fh)]
    if not rows:
        return ""
    more = f"<p>({len(rows) - 1 - max_rows} more rows in <code>{html.escape(path.name)}</code>)</p>" \
        if len(rows) - 1 > max_rows else ""
    return _html_table(rows[:max_rows + 1]) + more


def _href(target: str, folder: str) -> str:
    """A link of a document in `folder` as the report's root sees it (absolute URLs unchanged)."""
    return target if "://" in target or target.startswith("/") else quote(f"{folder}/{target}")


_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")
_IMAGE_LINE = re.compile(rf"(?:{_IMAGE.pattern}\s*)+")
_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")


def _inline(text: str, folder: str) -> str:
    """One line escaped, with its `code` and [text](link)."""
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text, quote=False))
    return _LINK.sub(lambda m: f"<a href='{html.escape(_href(html.unescape(m[2]), folder))}'>{m[1]}</a>", text)


def _kind(line: str) -> str:
    if not line or line[0] in "#|":
        return line[:1]
    return "!" if _IMAGE_LINE.fullmatch(line) else "p"


def _markdown(text: str, folder: str) -> str:
    """The markdown `analysis.outputs` writes (`RunDir.text` documents with `markdown_table`s): `#` headings,
    pipe tables, lines of images (`![alt](file)`, shown as a section's figures) and paragraphs with `code`
    and [links](file)."""
    parts = []
    for kind, group in itertools.groupby((line.strip() for line in text.splitlines()), key=_kind):
        block = list(group)
        if kind == "#":
            for line in block:
                level = min(len(line) - len(line.lstrip("#")) + 1, 6)  # under the section's <h2>
                parts.append(f"<h{level}>{_inline(line.lstrip('#').strip(), folder)}</h{level}>")
        elif kind == "|":
            parts.append(_html_table([[_inline(c.strip(), folder) for c in row.strip("|").split("|")]
                                      for row in block if not re.fullmatch(r"[\s:|-]+", row)]))  # no separator
        elif kind == "!":
            parts.append("<div class='figures'>" + "".join(
                f"<img src='{html.escape(_href(m[2], folder))}' alt='{html.escape(m[1])}'>"
                for line in block for m in _IMAGE.finditer(line)) + "</div>")
        elif kind == "p":
            parts.append(f"<p>{_inline(' '.join(block), folder)}</p>")
    return "\n".join(parts)


def write_report(root: Path, sections: Sequence[Section], *, title: str, intro: Sequence[str] = ()) -> Path:
    """`root/index.html` linking every section's files by paths relative to `root`."""
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    parts += [f"<p>{html.escape(line)}</p>" for line in intro]
    parts.append("<ul>" + "".join(f"<li><a href='#s{i}'>{html.escape(s.title)}</a></li>"
                                  for i, s in enumerate(sections)) + "</ul>")
    for i, section in enumerate(sections):
        folder = section.folder.relative_to(root).as_posix()
        parts.append(f"<h2 id='s{i}'>{html.escape(section.title)}</h2>"
                     f"<p class='ref'>{html.escape(section.reference)} — files in <code>{html.escape(folder)}/</code>"
                     "</p>")
        parts += [f"<p>{html.escape(note)}</p>" for note in section.notes]
        parts += [_table(section.folder / name) for name in section.tables]
        images = [f"<img src='{html.escape(_href(name, folder))}' alt='{html.escape(name)}'>"
                  for name in section.images]
        if images:
            parts.append("<div class='figures'>" + "".join(images) + "</div>")
        if section.markdown:
            parts.append(_markdown(section.markdown, folder))
    parts.append("</body></html>")
    path = root / "index.html"
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return path
