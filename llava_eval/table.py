"""Comparison tables over runs' evaluation results, laid out like the paper's Table 2 (LLaVA-Bench, MMVP,
GQA, NaturalBench Q/I/G, plus BLINK) and Table 5 (COCO captions under the three SD prompt settings).

A row is one checkpoint of a run on one eval root: its label (`final`, `step-N`), the first 12 hex digits
of its weights' sha256, and `data`, a short hash of its results' benchmark data hashes (equal for equal
files of the same benchmarks). A result name evaluated under several identities there (other files in
the same eval root, other generation settings) spreads over as many rows, the newest first. A cell is `—`
where a row has no such result (not evaluated, or a metric that needs a judge)."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

from llava_eval.results import stored_results
from stages.store.fingerprint import Fingerprint

__all__ = ["Column", "Row", "TABLE2", "TABLE5", "KEYS", "run_rows", "record_row", "column_value", "cell",
           "comparison_tables"]

SHORT = 12  # hex digits of a hash shown


class Column(NamedTuple):
    header: str
    results: tuple[str, ...]  # result names (`llava_eval.results.result_name`), the first present is read
    metric: str  # key in that result's metrics
    percent: bool = True  # a fraction shown ×100


TABLE2 = (
    Column("LLaVA-Bench", ("llava-bench",), "relative_score", percent=False),  # `llava-bench-score --run`
    Column("MMVP", ("mmvp",), "pair_accuracy"),
    Column("GQA", ("gqa",), "accuracy"),
    Column("NaturalBench Q-Acc", ("naturalbench",), "q_acc"),
    Column("NaturalBench I-Acc", ("naturalbench",), "i_acc"),
    Column("NaturalBench G-Acc", ("naturalbench",), "g_acc"),
    Column("BLINK", ("blink",), "mean_accuracy"),
)
TABLE5 = tuple(
    Column(f"{title} {metric}", (f"coco-{setting}", "coco"), key, percent=False)
    for setting, title in (("none", "no caption"), ("gt", "GT caption"), ("mismatched", "mismatched"))
    for metric, key in (("CIDEr", "cider"), ("BLEU-4", "bleu_4"))
)
KEYS = ("run", "checkpoint", "weights", "data")


class Row(NamedTuple):
    run: str
    checkpoint: str  # `final` or `step-N`
    weights: str  # the checkpoint's sha256, shortened
    data: str  # hash of the row's `{result name: data hash}`, shortened
    metrics: Mapping[str, Mapping[str, Any]]  # result name -> its metrics


def run_rows(run_dir: Path) -> list[Row]:
    """The rows of a run's results (see the module doc); one row of `—` when it has none."""
    groups: dict[tuple[str, str, str], list[dict[str, Mapping[str, Any]]]] = {}
    for result in stored_results(run_dir):  # newest first
        record = result.record
        group = groups.setdefault((record["checkpoint"]["label"], record["identity"]["checkpoint"],
                                   record["eval_root"]), [])
        row = next((row for row in group if result.name not in row), None)
        if row is None:
            group.append(row := {})
        row[result.name] = record
    rows = [record_row(str(run_dir), row) for _, group in sorted(groups.items()) for row in group]
    return rows or [Row(run=str(run_dir), checkpoint="—", weights="—", data="—", metrics={})]


def record_row(run: str, records: Mapping[str, Mapping[str, Any]]) -> Row:
    """The row of one checkpoint's results on one eval root: `{result name: result record}`, non-empty."""
    first = next(iter(records.values()))
    return Row(run=run, checkpoint=first["checkpoint"]["label"], weights=first["identity"]["checkpoint"][:SHORT],
               data=Fingerprint.from_fields({n: r["identity"]["data"] for n, r in records.items()}).full[:SHORT],
               metrics={n: r["metrics"] for n, r in records.items()})


def column_value(metrics: Mapping[str, Mapping[str, Any]], column: Column) -> float | None:
    """The column's metric in the first of its results that has it, as recorded; None where none has."""
    for name in column.results:
        value = metrics.get(name, {}).get(column.metric)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
    return None


def cell(metrics: Mapping[str, Mapping[str, Any]], column: Column) -> str:
    """The column's value as the tables show it (a fraction ×100 to one decimal), `—` where there is none."""
    value = column_value(metrics, column)
    if value is None:
        return "—"
    return f"{100 * value:.1f}" if column.percent else f"{value:.3g}"


def _cells(rows: Sequence[Row], columns: Sequence[Column]) -> list[list[str]]:
    return [[*row[:len(KEYS)], *(cell(row.metrics, c) for c in columns)] for row in rows]


def _markdown(title: str, columns: Sequence[Column], cells: list[list[str]]) -> str:
    header = [*KEYS, *(c.header for c in columns)]
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells]) + "\n"


def comparison_tables(runs: Sequence[Path]) -> tuple[str, str]:
    """(markdown with both tables, CSV with one row per run, checkpoint and data, and every column)."""
    rows = [row for run in runs for row in run_rows(run)]
    table2, table5 = _cells(rows, TABLE2), _cells(rows, TABLE5)
    markdown = (_markdown("Table 2 layout: benchmarks (accuracies in %)", TABLE2, table2) + "\n"
                + _markdown("Table 5 layout: COCO captions by SD prompt setting", TABLE5, table5))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([*KEYS, *(c.header for c in TABLE2 + TABLE5)])
    writer.writerows(a + b[len(KEYS):] for a, b in zip(table2, table5))
    return markdown, buffer.getvalue()
