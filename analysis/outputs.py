"""A run's output folder, `runs/analysis/<name>/`: numbers as CSV/JSON, figures as PNG, and beside them the
run's config (arguments, options, where every array came from) and the fingerprint of each store read."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from stages.embedded import embedded_model

__all__ = ["DEFAULT_OUT", "RunDir", "markdown_table"]

DEFAULT_OUT = Path("runs") / "analysis"


class RunDir:
    """Files of one analysis run; `written` lists them in writing order (the report links them)."""

    def __init__(self, root: str | Path, name: str) -> None:
        self.path = Path(root) / name
        self.path.mkdir(parents=True, exist_ok=True)
        self.written: list[Path] = []

    def _target(self, name: str) -> Path:
        path = self.path / name
        self.written.append(path)
        return path

    def json(self, name: str, value: Any) -> Path:
        path = self._target(name)
        path.write_text(json.dumps(value, indent=2, sort_keys=False, default=_json_value) + "\n", encoding="utf-8")
        return path

    def csv(self, name: str, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
        path = self._target(name)
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows([_cell(v) for v in row] for row in rows)
        return path

    def text(self, name: str, text: str) -> Path:
        path = self._target(name)
        path.write_text(text, encoding="utf-8")
        return path

    def figure(self, name: str, figure: Any) -> Path:
        """Save a matplotlib figure as `name` (a PNG at the figure's own dpi, which it records, for the page and
        slides) and beside it as PDF (for a paper), and close it; returns the PNG's path."""
        import matplotlib.pyplot as plt

        path = self._target(name)
        figure.savefig(path, dpi="figure", bbox_inches="tight")
        figure.savefig(self._target(str(Path(name).with_suffix(".pdf"))), bbox_inches="tight")
        plt.close(figure)
        return path

    def record(self, *, command: str, arguments: Mapping[str, Any], sources: Mapping[str, Any],
               models: Mapping[str, str] | None = None) -> None:
        """`config.json` (command, arguments, each source's provenance, each other model by role, with
        `embedded` naming it when it is an embedded tiny random model) and `fingerprint.json` (the full
        fingerprint fields of every store a source reads or would read, by source name)."""
        self.json("config.json", {"command": command, "arguments": dict(arguments),
                                  "sources": {name: source.describe() for name, source in sources.items()},
                                  "models": {role: {"model": model, "embedded": embedded_model(model)}
                                             for role, model in (models or {}).items()}})
        self.json("fingerprint.json", {name: {"fingerprint": source.fingerprint.full,
                                              "fields": source.fingerprint.fields}
                                       for name, source in sources.items()})


def _json_value(value: Any) -> Any:
    """Paths as their text, numpy numbers and arrays as JSON numbers and lists; anything else is refused (a
    Python repr in a result file is text no reader can use)."""
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):  # numpy scalars and arrays, torch tensors
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON: convert it before writing ({value!r:.80})")


def _cell(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) and math.isfinite(value) else value


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(f"{c:.1f}" if isinstance(c, float) else str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
