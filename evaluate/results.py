"""Where an evaluation's outputs live and how an interrupted one resumes.

`<run>/eval/<name>.predictions.jsonl` grows by one line per answered item (flushed per batch, so an
interrupted evaluation resumes from it); `<run>/eval/<name>.json` is written once at the end with every
prediction, the metrics, the run's config, the checkpoint's content hash and the stores' fingerprints.
Its presence makes a re-run a no-op unless forced. `<name>` is the benchmark, or `<benchmark>-<setting>`
for a benchmark with several SD prompt settings (COCO's leakage study: `coco-none`, `coco-gt`, …).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from stages.errors import UserError

if TYPE_CHECKING:
    from evaluate.benchmarks import Benchmark
from stages.store.layout import write_json_atomic

__all__ = ["EVAL_DIR", "ResultMissing", "result_name", "ResultFiles"]

EVAL_DIR = "eval"


class ResultMissing(UserError, FileNotFoundError):
    """An evaluation result that should exist but does not (the message says which to run)."""


def result_name(benchmark: "Benchmark", setting: str) -> str:
    """The benchmark's name, suffixed with the setting when it has several (`coco-gt`)."""
    return benchmark.name if len(benchmark.sd_settings) == 1 else f"{benchmark.name}-{setting}"


class ResultFiles:
    """The predictions log and the result file of one (run, benchmark, setting)."""

    def __init__(self, run_dir: Path, name: str) -> None:
        self.dir = Path(run_dir) / EVAL_DIR
        self.result = self.dir / f"{name}.json"
        self.log = self.dir / f"{name}.predictions.jsonl"

    def clear(self) -> None:
        for path in (self.result, self.log):
            path.unlink(missing_ok=True)

    def answered(self) -> dict[str, str]:
        """Predictions logged so far by item id (a torn last line, from a kill mid-write, is dropped)."""
        if not self.log.is_file():
            return {}
        done = {}
        for line in self.log.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            done[entry["id"]] = entry["text"]
        return done

    def append(self, predictions: Iterable[tuple[str, str]]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        with self.log.open("a+b") as fh:
            if fh.tell() and (fh.seek(-1, os.SEEK_END), fh.read(1))[1] != b"\n":
                fh.write(b"\n")  # end a torn line so it stays one unreadable line of its own
            for item_id, text in predictions:
                fh.write((json.dumps({"id": item_id, "text": text}, ensure_ascii=False) + "\n").encode())
            fh.flush()
            os.fsync(fh.fileno())

    def write(self, result: Mapping[str, Any]) -> None:
        write_json_atomic(self.result, dict(result))

    def read(self) -> dict[str, Any]:
        return json.loads(self.result.read_text(encoding="utf-8"))

    def update_metrics(self, extra: Mapping[str, Any]) -> None:
        """Merge `extra` into the metrics of the written result (e.g. a judge's scores, computed elsewhere)."""
        if not self.result.is_file():
            raise ResultMissing(f"{self.result} does not exist: evaluate the run on this benchmark first")
        result = self.read()
        result["metrics"] = {**result["metrics"], **extra}
        self.write(result)
