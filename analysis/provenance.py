"""What a report section's numbers come from, shown above it: the model of each feature source, whether its
weights are an embedded tiny model with seeded random weights (`stages.embedded.embedded_model`, the one test
of that), the store it read (fingerprint, path, rows read and computed) and the benchmark data. A report with
any embedded model says so in a banner at its top (`analysis.report`)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from analysis.fixtures import BENCHMARKS, EMBEDDED
from stages.embedded import embedded_model

__all__ = ["RANDOM_WEIGHTS", "Provenance", "weights", "model_line", "run_provenance"]

RANDOM_WEIGHTS = "tiny, random weights"  # the badge of an embedded model


@dataclass(frozen=True)
class Provenance:
    """Lines of `(label, value)` (plain text; `code` in backquotes) and the embedded models among them."""

    lines: tuple[tuple[str, str], ...] = ()
    embedded: tuple[str, ...] = ()  # models with tiny random weights, as `embedded:<name>`

    def __add__(self, other: "Provenance") -> "Provenance":
        return Provenance(self.lines + other.lines, tuple(dict.fromkeys(self.embedded + other.embedded)))


def weights(model: str) -> Provenance:
    """The model's provenance line: its name, and whether it is an embedded tiny random model."""
    embedded = embedded_model(model)
    return Provenance((("model", model_line(model, embedded)),), (embedded,) if embedded else ())


def model_line(model: str, embedded: str | None) -> str:
    """`model` (an embedded one by its embedded name), marked as tiny and random or as pretrained."""
    return f"`{embedded}` ({RANDOM_WEIGHTS})" if embedded else f"`{model}` (pretrained weights)"


def _source_line(source: Mapping[str, Any]) -> str:
    where = f"store `{source['fingerprint'][:16]}` at `{source['store']}`" if source["store"] else \
        f"no store (fingerprint `{source['fingerprint'][:16]}`)"
    return (f"{model_line(source['model'], source['embedded'])}; {where}; {source['rows_read']} rows read, "
            f"{source['rows_computed']} computed")


def run_provenance(folder: Path) -> Provenance:
    """The provenance of an analysis run folder, from the `config.json` that `RunDir.record` wrote: each
    feature source (model, store, rows), each other model (the ITM CLIP baseline) and the benchmark data."""
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    lines, embedded = [], []
    for name, source in config["sources"].items():
        lines.append((f"{name} features", _source_line(source)))
        embedded += [source["embedded"]] if source["embedded"] else []
    for name, model in config.get("models", {}).items():
        lines.append((name, model_line(model["model"], model["embedded"])))
        embedded += [model["embedded"]] if model["embedded"] else []
    for name in BENCHMARKS:
        root = config["arguments"].get(name.replace("-", "_"))  # `--<benchmark> DIR`
        if root is not None:
            lines.append((name, "the embedded tiny fixture (a handful of groups from the bundled photos)"
                          if root == EMBEDDED else f"`{root}`"))
    return Provenance(tuple(lines), tuple(dict.fromkeys(embedded)))
