"""Comparison tables over runs' evaluation results, in the paper's units: Table 2 (LLaVA-Bench, MMVP, GQA,
NaturalBench Q/I/G, plus BLINK), Table 5 (COCO captions under the three SD prompt settings), and one table
per breakdown the benchmarks report (`BREAKDOWNS`: BLINK per subtask, NaturalBench per question type,
LLaVA-Bench per category).

Every header names its unit: accuracies in % (the scorers' fractions ×100), CIDEr and BLEU-4 ×100 (the
paper's convention; pycocoevalcap reports fractions), LLaVA-Bench's relative score in % (as its judge
summary computes it); an `n` column counts what a number is taken over (MMVP pairs, NaturalBench samples,
questions, images). MMVP has no breakdown: its Questions.csv has no visual-pattern column and no published
mapping assigns its questions to the paper's nine patterns (only MMVP-VLM, a separate 135-pair set, is
organised by pattern). A breakdown shows the categories some row has (all of them when none has any).

A row is one checkpoint of a run on one eval root: its label (`final`, `step-N`), the first 12 hex digits
of its weights' sha256, the eval root and `data`, a short hash of its results' benchmark data hashes (equal
for equal files of the same benchmarks). A result name evaluated under several identities there (other
files in the same eval root, other generation settings) spreads over as many rows, the newest first. A
markdown cell is `—` and a CSV cell empty where a row has no such value (not evaluated, or a metric that
needs a judge)."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

from llava_eval.benchmarks.blink import SUBTASKS
from llava_eval.benchmarks.llava_bench import CATEGORIES, REVIEW_CATEGORY
from llava_eval.benchmarks.naturalbench import SUFFIXES
from llava_eval.results import stored_results
from stages.store.fingerprint import Fingerprint

__all__ = ["Column", "Row", "Table", "TABLE2", "TABLE5", "BREAKDOWNS", "KEYS", "run_rows", "record_row",
           "column_value", "cell", "csv_cell", "comparison_tables", "write_tables"]

SHORT = 12  # hex digits of a hash shown
NONE = "—"  # a markdown cell without a value


class Column(NamedTuple):
    header: str  # with its unit
    results: tuple[str, ...]  # result names (`llava_eval.results.result_name`), the first holding a value is read
    path: tuple[str, ...]  # keys into that result's metrics
    scale: float = 100.0  # recorded value -> the header's unit (fractions ×100); 1: recorded in it (counts)


def _count(header: str, results: tuple[str, ...], *path: str) -> Column:
    return Column(header, results, path, scale=1)


_LLAVA_BENCH, _NATURALBENCH, _BLINK = ("llava-bench",), ("naturalbench",), ("blink",)
_SETTINGS = (("none", "no caption"), ("gt", "GT caption"), ("mismatched", "mismatched"))
_COCO = (*(f"coco-{setting}" for setting, _ in _SETTINGS), "coco")
_NATURALBENCH_ACCURACIES = (("Q-Acc", "q_acc"), ("I-Acc", "i_acc"), ("G-Acc", "g_acc"), ("Acc", "acc"))
_RELATIVE = "relative %"  # LLaVA-Bench: 100 × the model's mean rating / the reference answers' (by the judge)

TABLE2 = (
    Column(f"LLaVA-Bench ({_RELATIVE})", _LLAVA_BENCH, ("relative_score",), scale=1),  # `llava-bench-score --run`
    Column("MMVP (%)", ("mmvp",), ("pair_accuracy",)),
    Column("GQA (%)", ("gqa",), ("accuracy",)),
    *(Column(f"NaturalBench {name} (%)", _NATURALBENCH, (key,)) for name, key in _NATURALBENCH_ACCURACIES[:3]),
    Column("BLINK (%)", _BLINK, ("mean_accuracy",)),
    _count("LLaVA-Bench n (questions)", _LLAVA_BENCH, "questions"),
    _count("MMVP n (pairs)", ("mmvp",), "pairs"),
    _count("GQA n (questions)", ("gqa",), "questions"),
    _count("NaturalBench n (samples)", _NATURALBENCH, "samples"),
    _count("BLINK n (questions)", _BLINK, "questions"),
)
TABLE5 = (
    *(Column(f"{title} {metric} (×100)", (f"coco-{setting}", "coco"), (key,))
      for setting, title in _SETTINGS for metric, key in (("CIDEr", "cider"), ("BLEU-4", "bleu_4"))),
    _count("COCO n (images)", _COCO, "images"),
)


class Table(NamedTuple):
    name: str  # its CSV is PREFIX-<name>.csv
    title: str
    columns: tuple[Column, ...]


BREAKDOWNS = (
    Table("blink", "BLINK per subtask (accuracy in %)", (
        Column("mean (%)", _BLINK, ("mean_accuracy",)),
        *(Column(f"{subtask} (%)", _BLINK, ("per_subtask", subtask)) for subtask in SUBTASKS),
        _count("n (questions)", _BLINK, "questions"),
        *(_count(f"{subtask} n (questions)", _BLINK, "questions_per_subtask", subtask) for subtask in SUBTASKS))),
    Table("naturalbench", "NaturalBench overall and per question type (in %)", (
        *(Column(f"{name} (%)", _NATURALBENCH, (key,)) for name, key in _NATURALBENCH_ACCURACIES),
        _count("n (samples)", _NATURALBENCH, "samples"),
        *(column for kind in SUFFIXES for column in (
            *(Column(f"{kind} {name} (%)", _NATURALBENCH, ("per_type", kind, key))
              for name, key in _NATURALBENCH_ACCURACIES),
            _count(f"{kind} n (samples)", _NATURALBENCH, "per_type", kind, "samples"))))),
    Table("llava-bench", "LLaVA-Bench per category (relative score in %, from the judge's reviews)", (
        Column(f"all ({_RELATIVE})", _LLAVA_BENCH, ("relative_score",), scale=1),
        *(Column(f"{category} ({_RELATIVE})", _LLAVA_BENCH, ("judged", REVIEW_CATEGORY.format(category), "relative"),
                 scale=1) for category in CATEGORIES),
        _count("n (questions)", _LLAVA_BENCH, "questions"),
        *(_count(f"{category} n (questions)", _LLAVA_BENCH, "questions_per_category", category)
          for category in CATEGORIES))),
)
KEYS = ("run", "checkpoint", "weights", "eval root", "data")


class Row(NamedTuple):
    run: str
    checkpoint: str  # `final` or `step-N`
    weights: str  # the checkpoint's sha256, shortened
    eval_root: str  # where its benchmarks' files were read
    data: str  # hash of the row's `{result name: data hash}`, shortened
    metrics: Mapping[str, Mapping[str, Any]]  # result name -> its metrics


def run_rows(run_dir: Path) -> list[Row]:
    """The rows of a run's results (see the module doc); one row without values when it has none."""
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
    return rows or [Row(run=str(run_dir), checkpoint="", weights="", eval_root="", data="", metrics={})]


def record_row(run: str, records: Mapping[str, Mapping[str, Any]]) -> Row:
    """The row of one checkpoint's results: `{result name: result record}`, non-empty."""
    first = next(iter(records.values()))
    return Row(run=run, checkpoint=first["checkpoint"]["label"], weights=first["identity"]["checkpoint"][:SHORT],
               eval_root=", ".join(sorted({str(r.get("eval_root", "")) for r in records.values()})),
               data=Fingerprint.from_fields({n: r["identity"]["data"] for n, r in records.items()}).full[:SHORT],
               metrics={n: r["metrics"] for n, r in records.items()})


def column_value(metrics: Mapping[str, Mapping[str, Any]], column: Column) -> float | None:
    """The column's metric in the first of its results that has it, in the column's unit; None where none has."""
    for name in column.results:
        value: Any = metrics.get(name, {})
        for key in column.path:
            value = value.get(key) if isinstance(value, Mapping) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value if column.scale == 1 else value * column.scale
    return None


def cell(metrics: Mapping[str, Mapping[str, Any]], column: Column) -> str:
    """The column's value as markdown shows it: a count as is, a number to one decimal, `—` where there is none."""
    value = column_value(metrics, column)
    if value is None:
        return NONE
    return str(value) if isinstance(value, int) else f"{value:.1f}"


def csv_cell(metrics: Mapping[str, Mapping[str, Any]], column: Column) -> str:
    """The column's value in a CSV file: to 4 decimals (no float noise from the scaling), empty where there is none."""
    value = column_value(metrics, column)
    return "" if value is None else repr(value if isinstance(value, int) else round(value, 4))


def _present(rows: Sequence[Row], columns: Sequence[Column]) -> tuple[Column, ...]:
    """The columns some row has a value for; all of them when none has any."""
    return tuple(c for c in columns if any(column_value(r.metrics, c) is not None for r in rows)) or tuple(columns)


def _markdown(title: str, rows: Sequence[Row], columns: Sequence[Column]) -> str:
    header = [*KEYS, *(c.header for c in columns)]
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join([*(key or NONE for key in row[:len(KEYS)]), *(cell(row.metrics, c) for c in columns)])
              + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _csv(rows: Sequence[Row], columns: Sequence[Column]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*KEYS, *(c.header for c in columns)])
    writer.writerows([*row[:len(KEYS)], *(csv_cell(row.metrics, c) for c in columns)] for row in rows)
    return buffer.getvalue()


def comparison_tables(runs: Sequence[Path]) -> tuple[str, dict[str, str]]:
    """(markdown with every table, `{file suffix: CSV}`): `""` holds Table 2 and Table 5 side by side,
    `-<name>` each breakdown; one row per run, checkpoint and eval data, every row in every table."""
    rows = [row for run in runs for row in run_rows(run)]
    breakdowns = [table._replace(columns=_present(rows, table.columns)) for table in BREAKDOWNS]
    markdown = "\n".join([_markdown("Table 2 layout: benchmarks", rows, TABLE2),
                          _markdown("Table 5 layout: COCO captions by SD prompt setting", rows, TABLE5),
                          *(_markdown(table.title, rows, table.columns) for table in breakdowns)])
    markdown += ("\nMMVP has no per-category table: its Questions.csv names no visual pattern per question, and no "
                 "published index ranges assign its questions to the paper's nine patterns.\n")
    return markdown, {"": _csv(rows, TABLE2 + TABLE5),
                      **{f"-{table.name}": _csv(rows, table.columns) for table in breakdowns}}


def write_tables(runs: Sequence[Path], prefix: str | Path) -> tuple[str, list[Path]]:
    """`comparison_tables(runs)` written as PREFIX.md, PREFIX.csv and PREFIX-<breakdown>.csv; returns the
    markdown and the files written."""
    markdown, tables = comparison_tables(runs)
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    files = [prefix.with_name(f"{prefix.name}.md"), *(prefix.with_name(f"{prefix.name}{s}.csv") for s in tables)]
    for path, text in zip(files, [markdown, *tables.values()]):
        path.write_text(text, encoding="utf-8")
    return markdown, files
