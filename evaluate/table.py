"""Comparison tables over runs' evaluation results, laid out like the paper's Table 2 (LLaVA-Bench, MMVP,
GQA, NaturalBench Q/I/G, plus BLINK) and Table 5 (COCO captions under the three SD prompt settings).
A cell is `—` where a run has no such result (not evaluated, or a metric that needs a judge)."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

from evaluate.results import EVAL_DIR

__all__ = ["Column", "TABLE2", "TABLE5", "load_results", "comparison_tables"]


class Column(NamedTuple):
    header: str
    results: tuple[str, ...]  # result names (`evaluate.results.result_name`), the first present is read
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


def load_results(run_dir: Path) -> dict[str, Mapping[str, Any]]:
    """`{result name: metrics}` of a run's finished evaluations."""
    folder = Path(run_dir) / EVAL_DIR
    if not folder.is_dir():
        return {}
    return {path.stem: json.loads(path.read_text(encoding="utf-8"))["metrics"] for path in sorted(folder.glob("*.json"))}


def _cell(results: Mapping[str, Mapping[str, Any]], column: Column) -> str:
    for name in column.results:
        value = results.get(name, {}).get(column.metric)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return f"{100 * value:.1f}" if column.percent else f"{value:.3g}"
    return "—"


def _rows(runs: Sequence[Path], columns: Sequence[Column]) -> list[list[str]]:
    results = {run: load_results(run) for run in runs}
    return [[str(run), *(_cell(results[run], c) for c in columns)] for run in runs]


def _markdown(title: str, columns: Sequence[Column], rows: list[list[str]]) -> str:
    header = ["run", *(c.header for c in columns)]
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


def comparison_tables(runs: Sequence[Path]) -> tuple[str, str]:
    """(markdown with both tables, CSV with one row per run and every column)."""
    table2, table5 = _rows(runs, TABLE2), _rows(runs, TABLE5)
    markdown = (_markdown("Table 2 layout: benchmarks (accuracies in %)", TABLE2, table2) + "\n"
                + _markdown("Table 5 layout: COCO captions by SD prompt setting", TABLE5, table5))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["run", *(c.header for c in TABLE2 + TABLE5)])
    writer.writerows(a + b[1:] for a, b in zip(table2, table5))
    return markdown, buffer.getvalue()
