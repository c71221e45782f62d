"""Shared benchmark helpers: timing, result files, markdown tables."""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

__all__ = ["RESULTS", "best_seconds", "best_seconds_interleaved", "write_results", "markdown_table"]

RESULTS = Path(__file__).resolve().parent / "results"


def best_seconds(fn: Callable[[], Any], *, repeats: int = 3, warmup: int = 1) -> float:
    """Minimum wall time of `fn` over `repeats` runs (the least noisy statistic on a shared machine)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def best_seconds_interleaved(fns: dict[str, Callable[[], Any]], *, repeats: int = 5) -> dict[str, float]:
    """Minimum wall time of each function, run in turn, so that all of them see the same machine load
    (ratios between them are then meaningful on a noisy shared machine)."""
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: min(values) for name, values in times.items()}


def write_results(name: str, payload: dict[str, Any], *, root: Path = RESULTS) -> Path:
    """`root/<name>.json`, the machine's description first."""
    root.mkdir(parents=True, exist_ok=True)
    payload = {"machine": {"platform": platform.platform(), "torch": torch.__version__,
                           "threads": torch.get_num_threads()}, **payload}
    path = root / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
