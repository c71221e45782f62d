"""What a run reports: a tqdm bar over images (rate and ETA) fed by per-shard `ShardStats`, and the
final `Summary` (done, reused, skipped, failed, GB written, images/s, seconds per stage)."""
from __future__ import annotations

import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from pipeline.manifest import REFUSED_HINT
from pipeline.rows import ShardStats
from stages.store.layout import write_bytes_atomic
from stages.store.objects import ObjectPath

__all__ = ["Summary", "Progress", "ErrorLog"]


@dataclass
class Summary:
    """Counts in images. `skipped` = refused + missing (found up front); `failed` = could not be
    decoded in this run's shards."""

    store: Path
    errors_file: Path
    planned: int = 0
    reused: int = 0
    done: int = 0
    refused: int = 0
    missing: int = 0
    failed: int = 0
    failed_before: int = 0  # failures recorded by the shards reused (in the errors file too)
    refused_by_cause: dict[str, int] = field(default_factory=dict)  # `absolute path` -> keys refused for it
    shards: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    ray_start_s: float = 0.0
    extractor_batches: int = 0
    images_decoded: int = 0  # decoded by the CPU tasks (0 for shards whose stored latents are reused)
    images_encoded: int = 0  # through the VAE (or CLIP vision) in the actors
    stage_seconds: Counter[str] = field(default_factory=Counter)  # decode, vae/unet/clip, write: summed over shards
    completions: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, images) per shard
    shards_by_node: Counter[str] = field(default_factory=Counter)  # Ray node id -> shards its actors computed
    notes: list[str] = field(default_factory=list)
    interrupted: bool = False  # stopped by Ctrl-C: the counts are those of the shards completed

    @property
    def skipped(self) -> int:
        return self.refused + self.missing

    @property
    def images_per_s(self) -> float:
        return (self.done + self.failed) / self.seconds if self.seconds > 0 else 0.0

    def _refusals(self) -> list[str]:
        """`refused: 5 absolute path, 3 '..' in the path (...)`, when keys were refused."""
        if not self.refused_by_cause:
            return []
        counts = ", ".join(f"{n} {cause}" for cause, n in self.refused_by_cause.items())
        return [f"refused: {counts}; {REFUSED_HINT} (each key with its reason in the errors file)"]

    def render(self) -> str:
        if self.shards == 0 and self.notes:  # nothing ran (cache hit): say why, not a row of zeros
            lines = [*self.notes, f"store: {self.store}"]
            if self.skipped or self.failed_before:
                lines.append(f"{self.skipped} skipped ({self.refused} refused, {self.missing} missing), "
                             f"{self.failed_before} failed in earlier runs; errors (key, kind, reason per "
                             f"line): {self.errors_file}")
            return "\n".join(lines + self._refusals())
        lines = [f"extract: {self.done} images done, {self.reused} reused, {self.skipped} skipped "
                 f"({self.refused} refused, {self.missing} missing), {self.failed} failed; "
                 f"{self.shards} shards, {self.bytes_written / 1e9:.3f} GB written in {self.seconds:.1f} s "
                 f"({self.images_per_s:.2f} images/s; Ray start {self.ray_start_s:.1f} s)",
                 f"store: {self.store}"]
        if self.stage_seconds:
            lines.append("time, summed over shards: " + ", ".join(
                f"{stage} {s:.1f} s" + (" (CPU tasks, in parallel with the actors)" if stage == "decode" else "")
                for stage, s in self.stage_seconds.items()))
        if len(self.shards_by_node) > 1:
            lines.append("shards by Ray node: " + ", ".join(f"{node[:12]} {n}"
                                                            for node, n in self.shards_by_node.items()))
        if self.skipped or self.failed:
            lines.append(f"errors (key, kind, reason per line): {self.errors_file}")
        return "\n".join(lines + self._refusals() + self.notes)

    def as_dict(self) -> dict[str, Any]:
        return {"store": str(self.store), "errors_file": str(self.errors_file), "planned": self.planned,
                "reused": self.reused, "done": self.done, "refused": self.refused, "missing": self.missing,
                "failed": self.failed, "failed_before": self.failed_before,
                "refused_by_cause": dict(self.refused_by_cause), "shards": self.shards,
                "bytes_written": self.bytes_written,
                "seconds": self.seconds, "images_per_s": self.images_per_s, "ray_start_s": self.ray_start_s,
                "extractor_batches": self.extractor_batches, "images_decoded": self.images_decoded,
                "images_encoded": self.images_encoded, "stage_seconds": dict(self.stage_seconds),
                "shards_by_node": dict(self.shards_by_node),
                "interrupted": self.interrupted}


def _json_line(row: Mapping[str, str]) -> str:
    """One row as a JSON line, non-ASCII as is; a key that is not valid Unicode (a lone surrogate, escaped
    in the LLaVA JSON: refused by the manifest) stays escaped, so that the file is UTF-8."""
    line = json.dumps(dict(row), ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        line = json.dumps(dict(row))
    return line + "\n"


class ErrorLog:
    """`<store>/errors-<data hash>.jsonl` (one per data set, see `driver.errors_file_name`): one
    `{"key", "kind", "reason"}` object per line; rewritten at the start of a run of that data set
    (up-front problems + failures recorded by its complete shards), appended per shard.

    A listing for people: the completion records hold every failure. So writing it never fails a run
    (a full disk): the first `OSError` is kept in `error`, the file removed, and nothing more is written."""

    def __init__(self, path: Path | ObjectPath) -> None:
        self.path = path
        self.error: str | None = None
        self._text = ""

    def _give_up(self, exc: OSError) -> None:
        self.error = f"{self.path} could not be written ({exc.strerror or exc}); the completion records list the failures"
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass

    def reset(self, rows: list[Mapping[str, str]]) -> None:
        """Rewrite the file with `rows` (left alone when it holds them already: a cache hit writes nothing)."""
        self._text = "".join(_json_line(r) for r in rows)
        try:
            if self.path.is_file() and self.path.read_text(encoding="utf-8") == self._text:
                return
            write_bytes_atomic(self.path, self._text.encode("utf-8"))
        except OSError as exc:
            self._give_up(exc)

    def append_failed(self, failed: Mapping[str, str]) -> None:
        if not failed or self.error is not None:
            return
        self._text += "".join(_json_line({"key": key, "kind": "failed", "reason": reason})
                              for key, reason in sorted(failed.items()))
        try:  # rewritten whole: objects cannot be appended to
            write_bytes_atomic(self.path, self._text.encode("utf-8"))
        except OSError as exc:
            self._give_up(exc)


class Progress:
    """Consumes stats rows from the workers, updating the bar, the summary and the error log."""

    def __init__(self, summary: Summary, log: ErrorLog, *, total: int, enabled: bool = True) -> None:
        from tqdm import tqdm

        self.summary, self.log = summary, log
        self.start = time.perf_counter()
        self.bar = tqdm(total=total, unit="img", desc="extract", disable=not enabled, file=sys.stderr,
                        dynamic_ncols=True, smoothing=0.1)

    def update(self, stats: ShardStats) -> None:
        self.summary.shards += 1
        self.summary.failed += len(stats.failed)
        self.summary.done += stats.n_images - len(stats.failed)
        self.summary.bytes_written += stats.bytes
        self.summary.extractor_batches += stats.batches
        self.summary.images_decoded += stats.decoded
        self.summary.images_encoded += stats.encoded
        self.summary.stage_seconds.update(stats.seconds)
        if stats.node:
            self.summary.shards_by_node[stats.node] += 1
        self.summary.completions.append((time.perf_counter() - self.start, stats.n_images))
        self.log.append_failed(stats.failed)
        self.bar.update(stats.n_images)
        self.bar.set_postfix(shards=self.summary.shards, failed=self.summary.failed, refresh=False)

    def close(self) -> None:
        self.bar.close()
        self.summary.seconds = time.perf_counter() - self.start
