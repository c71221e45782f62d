"""The static HTML report of `just inspect`: one `index.html` beside the figures and tables it shows (relative
links, no script, no server), so the folder can be opened, copied or zipped as it is.

Each section opens with its provenance (models, whether their weights are tiny and random, stores, data);
a report with any tiny random model says so in a banner at its top. Figures are shown at their screen size
(the PNG's recorded dpi against `analysis.plots.SCREEN_DPI`, never wider than the page) with links to their
PDF; tables are rounded for reading (`Table.rounded`), the CSV beside them keeping every digit."""
from __future__ import annotations

import csv
import html
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from analysis.markdown import href, html_table, inline, markdown
from analysis.plots import SCREEN_DPI
from analysis.provenance import RANDOM_WEIGHTS, Provenance

__all__ = ["Section", "Table", "write_report"]

_STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; padding: 1.5em 2em 4em; max-width: 1180px;
       color: #222; }
h1 { font-size: 1.7em; margin-bottom: 0.3em; } h2 { font-size: 1.3em; margin-top: 2.2em;
  border-bottom: 1px solid #ccc; padding-bottom: 0.2em; } h3 { font-size: 1.08em; margin-top: 1.5em; }
p.ref { color: #555; font-style: italic; margin-top: 0; }
div.banner { background: #fff3cd; border: 1px solid #e0b000; border-radius: 4px; padding: 0.7em 1em;
             margin: 1em 0; }
span.badge { background: #e0b000; color: #000; border-radius: 3px; padding: 0 0.35em; font-size: 0.85em;
             white-space: nowrap; }
dl.prov { display: grid; grid-template-columns: max-content 1fr; gap: 0.15em 1em; margin: 0.6em 0 1em;
          font-size: 0.9em; background: #f7f7f7; padding: 0.5em 0.8em; border-radius: 4px; }
dl.prov dt { font-weight: 600; } dl.prov dd { margin: 0; overflow-wrap: anywhere; }
div.figures { display: flex; flex-wrap: wrap; gap: 1.2em; align-items: flex-start; }
figure { margin: 0.4em 0; max-width: 100%; } figcaption { font-size: 0.85em; color: #555; }
img { max-width: 100%; height: auto; }
div.table { max-width: 100%; overflow-x: auto; margin: 0.8em 0; }
table { border-collapse: collapse; font-size: 0.82em; font-variant-numeric: tabular-nums; }
caption { text-align: left; color: #555; font-size: 0.95em; padding-bottom: 0.3em; }
td, th { border: 1px solid #ccc; padding: 0.2em 0.45em; text-align: right; } th { background: #f0f0f0; }
td:first-child, th:first-child { text-align: left; }
p.files { font-size: 0.85em; color: #555; overflow-wrap: anywhere; }
code { background: #f3f3f3; padding: 0 0.2em; overflow-wrap: anywhere; }
"""


@dataclass(frozen=True)
class Table:
    name: str  # a CSV inside the section's folder; its first row is the header
    caption: str = ""
    rounded: bool = True  # decimal cells rounded for reading (`_rounded`); False: every cell as written
    decimals: int | None = None  # decimals of every decimal cell (1 for percentages); None: per column


@dataclass(frozen=True)
class Section:
    title: str
    reference: str  # the paper's table/figure this reproduces
    folder: Path  # the section's files, under the report folder
    provenance: Provenance = Provenance()
    images: Sequence[str] = ()  # PNG names inside `folder` (a PDF of the same name is linked when present)
    tables: Sequence[Table] = ()
    notes: Sequence[str] = field(default_factory=tuple)
    markdown: str = ""  # a document in `analysis.markdown`'s subset, shown last, its links relative to `folder`


_NUMBER = re.compile(r"-?\d+(\.\d+)?(e[-+]?\d+)?")


def _rounded(rows: list[list[str]], decimals: int | None) -> list[list[str]]:
    """The number cells of each column holding a decimal (a number with a point; columns of integers or hashes
    are left alone), or of every column when `decimals` is given (a table of percentages), to `decimals`, else
    to 3 significant digits of the column's largest magnitude: a column shares one number of decimals."""
    out = [list(row) for row in rows]
    for column in range(max(map(len, rows), default=0)):
        found = [(row, _NUMBER.fullmatch(row[column])) for row in out[1:] if column < len(row)]
        cells = [row for row, number in found if number and math.isfinite(float(row[column]))]
        if decimals is None and not any(number and number[1] for _, number in found):
            continue
        largest = max((abs(float(row[column])) for row in cells), default=0.0)
        places = decimals if decimals is not None else \
            min(max(2 - math.floor(math.log10(largest)), 0), 6) if largest else 0
        for row in cells:
            row[column] = f"{float(row[column]):.{places}f}"
    return out


def _table(folder: Path, table: Table, *, max_rows: int = 40) -> str:
    path = folder / table.name
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return ""
    rows = _rounded(rows, table.decimals) if table.rounded else rows
    more = f"<p>({len(rows) - 1 - max_rows} more rows in <code>{html.escape(path.name)}</code>)</p>" \
        if len(rows) - 1 > max_rows else ""
    caption = f"{table.caption} ({path.name})" if table.caption else path.name
    return html_table([[html.escape(c) for c in row] for row in rows[:max_rows + 1]], caption=caption) + more


def _figure(folder: Path, name: str, relative: str) -> str:
    """`<figure>` of the PNG `folder/name` at its screen size, with a link to its PDF when there is one (a
    target that is no file here, e.g. a URL, as a plain image)."""
    from PIL import Image

    if not (folder / name).is_file():
        return f"<img src='{html.escape(href(name, relative))}' alt='{html.escape(name)}'>"
    with Image.open(folder / name) as image:
        width, dpi = image.width, image.info.get("dpi", (SCREEN_DPI,))[0]
    shown = round(width * SCREEN_DPI / dpi)
    pdf = Path(name).with_suffix(".pdf").name
    links = f" · <a href='{html.escape(href(pdf, relative))}'>PDF</a>" if (folder / pdf).is_file() else ""
    return (f"<figure><img src='{html.escape(href(name, relative))}' alt='{html.escape(name)}' width='{shown}'>"
            f"<figcaption>{html.escape(name)}{links}</figcaption></figure>")


_BADGE = f"<span class='badge'>{RANDOM_WEIGHTS}</span>"


def _provenance(provenance: Provenance) -> str:
    """The lines as a definition list, each `(tiny, random weights)` of `provenance.model_line` as a badge."""
    if not provenance.lines:
        return ""
    items = "".join(f"<dt>{inline(label, '')}</dt><dd>{inline(value, '').replace(f'({RANDOM_WEIGHTS})', _BADGE)}</dd>"
                    for label, value in provenance.lines)
    return f"<dl class='prov'>{items}</dl>"


def _banner(sections: Sequence[Section]) -> str:
    embedded = list(dict.fromkeys(m for s in sections for m in s.provenance.embedded))
    if not embedded:
        return ""
    names = ", ".join(f"<code>{html.escape(m)}</code>" for m in embedded)
    return (f"<div class='banner'><strong>Tiny models with random weights.</strong> This report was made with "
            f"{names}: the project's embedded defaults, the real architectures at a tiny size with seeded random "
            "weights, run on tiny fixtures. Every figure and number below shows that each step runs end to end; "
            f"none of them says anything about what real models do. Sections that use them are marked {_BADGE}.</div>")


def _files(section: Section, relative: str) -> str:
    names = sorted(p.name for p in section.folder.iterdir() if p.is_file())
    links = " · ".join(f"<a href='{html.escape(href(n, relative))}'>{html.escape(n)}</a>" for n in names)
    return f"<p class='files'>Files in <code>{html.escape(relative)}/</code>: {links}</p>" if names else ""


def _section(index: int, section: Section, root: Path) -> list[str]:
    relative = section.folder.relative_to(root).as_posix()
    parts = [f"<h2 id='s{index}'>{html.escape(section.title)}</h2>",
             f"<p class='ref'>{inline(section.reference, relative)}</p>", _provenance(section.provenance)]
    parts += [f"<p>{inline(note, relative)}</p>" for note in section.notes]
    parts += [_table(section.folder, table) for table in section.tables]
    if section.images:
        parts.append("<div class='figures'>" + "".join(_figure(section.folder, name, relative)
                                                       for name in section.images) + "</div>")
    if section.markdown:
        parts.append(markdown(section.markdown, relative,
                              image=lambda target: _figure(section.folder, target, relative)))
    if section.folder.is_dir():
        parts.append(_files(section, relative))
    return parts


def write_report(root: Path, sections: Sequence[Section], *, title: str, intro: Sequence[str] = ()) -> Path:
    """`root/index.html` linking every section's files by paths relative to `root`."""
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
             "<meta name='viewport' content='width=device-width, initial-scale=1'>",
             f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>", _banner(sections)]
    parts += [f"<p>{inline(line, '')}</p>" for line in intro]
    parts.append("<ul>" + "".join(f"<li><a href='#s{i}'>{html.escape(s.title)}</a></li>"
                                  for i, s in enumerate(sections)) + "</ul>")
    for i, section in enumerate(sections):
        parts += _section(i, section, root)
    parts.append("</body></html>")
    path = root / "index.html"
    path.write_text("\n".join(p for p in parts if p) + "\n", encoding="utf-8")
    return path

