"""Evaluation tables in `just inspect`: the CSV files `just eval-table` wrote for one `--out PREFIX`
(`PREFIX.csv`, and `PREFIX-<breakdown>.csv` beside it), copied beside the HTML report and shown with their
header rows and cells exactly as written — `analysis` recomputes no metric and imports no evaluation code.
The provenance names each run a table row names, with its LLM's weights (the run's `train_config.json`)."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

from analysis.provenance import Provenance
from analysis.report import Section, Table
from analysis.training import run_model
from stages.config import ConfigError

__all__ = ["DEFAULT_PREFIX", "table_files", "eval_section"]

DEFAULT_PREFIX = "runs/eval-table"  # `just eval-table`'s default --out
RUN_COLUMN = "run"  # the first column of every eval-table CSV: the run directory


def table_files(prefix: str | Path, *, required: bool) -> list[Path]:
    """`PREFIX.csv` then `PREFIX-*.csv` in name order; none is a `ConfigError` when `required`."""
    prefix = Path(prefix)
    found = [p for p in [prefix.with_name(f"{prefix.name}.csv"),
                         *sorted(prefix.parent.glob(f"{prefix.name}-*.csv"))] if p.is_file()]
    if required and not found:
        raise ConfigError(f"eval_table: no {prefix}.csv or {prefix}-*.csv; `just eval-table RUN ... --out {prefix}` "
                          "writes them")
    return found


def _runs(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as fh:
        return [row[RUN_COLUMN] for row in csv.DictReader(fh) if row.get(RUN_COLUMN)]


def eval_section(files: list[Path], out: Path, *, prefix: str | Path) -> Section:
    """The tables copied to `out/eval-tables/` (any earlier copy replaced), one after the other."""
    folder = out / "eval-tables"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for path in files:
        shutil.copy2(path, folder / path.name)
        markdown = path.with_suffix(".md")
        if markdown.is_file():
            shutil.copy2(markdown, folder / markdown.name)
    provenance = Provenance(
        (("tables", ", ".join(f"`{path}`" for path in files) + " as `just eval-table` wrote them"),) if files else ())
    for run in dict.fromkeys(r for path in files for r in _runs(path)):
        provenance += run_model(Path(run))
    notes = [] if files else [f"No evaluation table at `{prefix}.csv`: `just eval runs/sample-sft` then "
                              "`just eval-table runs/sample-sft` write one (`just inspect eval_table=PREFIX` for "
                              "another `--out`)."]
    return Section("Evaluation tables", "Tables 2 and 5 (and their breakdowns) as `just eval-table` wrote them",
                   folder, provenance=provenance, notes=notes,
                   tables=[Table(path.name, rounded=False) for path in files])
