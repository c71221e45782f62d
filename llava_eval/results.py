"""Where an evaluation's outputs live and how an interrupted one resumes.

Each result has its own folder, named by its identity (`llava_eval.identity.ResultIdentity`):
`<run>/eval/<name>/<key>/`, where `<name>` is the benchmark, or `<benchmark>-<setting>` for a benchmark
with several SD prompt settings (COCO's leakage study: `coco-none`, `coco-gt`, …), and `<key>` the first
16 hex digits of the identity's sha256. The folder holds `predictions.jsonl`, whose first line records
the identity and which grows by one line per answered item (flushed per batch, so an interrupted
evaluation resumes from it), `result.json`, written once at the end with the identity, every prediction
and the metrics, and the benchmark's own output files. A log or result recording another identity is
refused, never resumed or relabelled.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from llava_eval.identity import ResultIdentity
from stages.errors import UserError
from stages.store.fingerprint import Fingerprint
from stages.store.layout import write_json_atomic

if TYPE_CHECKING:
    from llava_eval.benchmarks import Benchmark

__all__ = ["EVAL_DIR", "RESULT_FILE", "ResultMissing", "ResultConflict", "result_name", "ResultFiles",
           "StoredResult", "stored_results", "update_metrics"]

EVAL_DIR = "eval"
RESULT_FILE = "result.json"
LOG_FILE = "predictions.jsonl"


class ResultMissing(UserError, FileNotFoundError):
    """An evaluation result that should exist but does not (the message says which to run)."""


class ResultConflict(UserError, ValueError):
    """A result folder holding a file that records another identity than the one the folder is named by."""


def result_name(benchmark: "Benchmark", setting: str) -> str:
    """The benchmark's name, suffixed with the setting when it has several (`coco-gt`)."""
    return benchmark.name if len(benchmark.sd_settings) == 1 else f"{benchmark.name}-{setting}"


class ResultFiles:
    """The predictions log, the result file and the outputs of one result identity of a run."""

    def __init__(self, run_dir: Path, name: str, identity: ResultIdentity) -> None:
        self.identity = identity
        self.dir = Path(run_dir) / EVAL_DIR / name / identity.fingerprint.short
        self.result = self.dir / RESULT_FILE
        self.log = self.dir / LOG_FILE

    def _check(self, recorded: Any, path: Path) -> None:
        if not isinstance(recorded, Mapping) or Fingerprint.from_fields(recorded) != self.identity.fingerprint:
            raise ResultConflict(f"{path} records another result identity than the one its folder is named by "
                                 f"(copied by hand?): delete {self.dir}, or evaluate again with force=true")

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def done(self) -> bool:
        """Whether this identity's result file is written."""
        if not self.result.is_file():
            return False
        self._check(self.read().get("identity"), self.result)
        return True

    def answered(self) -> dict[str, str]:
        """Predictions logged so far by item id (a torn last line, from a kill mid-write, is dropped)."""
        if not self.log.is_file():
            return {}
        header, *lines = self.log.read_text(encoding="utf-8").splitlines()
        self._check(json.loads(header).get("identity"), self.log)  # the header is written whole (atomically)
        done = {}
        for line in lines:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            done[entry["id"]] = entry["text"]
        return done

    def append(self, predictions: Iterable[tuple[str, str]]) -> None:
        if not self.log.is_file():
            write_json_atomic(self.log, {"identity": self.identity.fields})  # one line, the log's header
        with self.log.open("a+b") as fh:
            if fh.tell() and (fh.seek(-1, os.SEEK_END), fh.read(1))[1] != b"\n":
                fh.write(b"\n")  # end the header, or a torn line so it stays one unreadable line of its own
            for item_id, text in predictions:
                fh.write((json.dumps({"id": item_id, "text": text}, ensure_ascii=False) + "\n").encode())
            fh.flush()
            os.fsync(fh.fileno())

    def write(self, result: Mapping[str, Any]) -> dict[str, Any]:
        """Write `result` with the identity and its key added; returns what was written."""
        record = {**result, "identity": self.identity.fields, "key": self.identity.fingerprint.full}
        write_json_atomic(self.result, record)
        return record

    def read(self) -> dict[str, Any]:
        return json.loads(self.result.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class StoredResult:
    """A result file found under a run, with the result name of its folder."""

    name: str
    path: Path
    record: Mapping[str, Any]


def stored_results(run_dir: Path) -> list[StoredResult]:
    """Every result written under `run_dir`, newest first."""
    paths = sorted((Path(run_dir) / EVAL_DIR).glob(f"*/*/{RESULT_FILE}"), key=lambda p: -p.stat().st_mtime_ns)
    return [StoredResult(name=path.parent.parent.name, path=path,
                         record=json.loads(path.read_text(encoding="utf-8"))) for path in paths]


def update_metrics(result_file: Path, extra: Mapping[str, Any]) -> None:
    """Merge `extra` into the metrics of a written result (e.g. a judge's scores, computed elsewhere)."""
    if not Path(result_file).is_file():
        raise ResultMissing(f"{result_file} does not exist: evaluate the run on this benchmark first")
    result = json.loads(Path(result_file).read_text(encoding="utf-8"))
    write_json_atomic(Path(result_file), {**result, "metrics": {**result["metrics"], **extra}})
