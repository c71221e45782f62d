"""`just sweep-report SWEEP [key=value ...]`: the paper's tables and figures from a sweep's results, under
`<root>/report/`: `report.md` (every table, links to the figures), the Fig. 3 table (the benchmarks of
Fig. 3, one row per run with its axis values as columns: metric × feature × timestep) when features or
timesteps vary, the Table 2 layout when vision modes or guidance vary (or Fig. 3 has no place), the Table 5
layout when any run has COCO results (`llava_eval.table`'s columns, cells and rows), each as markdown and
CSV; `results.csv`, every number of every result with its run, checkpoint hash, data hash and result file;
`blink-<subtask>.png`, BLINK accuracy across timesteps with each CLIP run as a dashed line; and
`loss-<run>.png`, the losses of each run's training stages (their `metrics.jsonl`).

A run's results are those of its checkpoint now, found by their identity (`llava_sweep.state.eval_results`,
what the sweep's eval stage writes): older results of a retrained run are not mixed in. Tables name each
row's run, checkpoint label, weights hash, eval root and data hash as `just eval-table` does; CSV cells hold the
numbers in their headers' units, as `just eval-table`'s (accuracies in %), and are empty where a run has no value.
"""
from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

from llava_eval.table import KEYS, TABLE2, TABLE5, Column, Row, cell, csv_cell, record_row
from llava_sweep.load import load_sweep
from llava_sweep.spec import AXES, TRAIN_STAGES, Sweep, SweepRun
from llava_sweep.state import eval_results
from stages.config import ConfigError
from stages.errors import INTERRUPTED, UserError, print_user_error

if TYPE_CHECKING:
    from train.config import TrainConfig

__all__ = ["REPORT_DIR", "RunResults", "collect", "write_report", "main"]

PROG = "sweep-report"
REPORT_DIR = "report"
FIG3 = tuple(c for c in TABLE2 if "gqa" not in c.results)  # Fig. 3: LLaVA-Bench, MMVP, NaturalBench, BLINK
CLIP_MODE = "clip"


@dataclass(frozen=True)
class RunResults:
    run: SweepRun
    config: TrainConfig | None  # what its last training stage recorded; None: not trained yet
    results: Mapping[str, tuple[Path, Mapping[str, Any]]]  # result name -> (result file, record)
    losses: Mapping[str, list[float]]  # training stage -> its losses by step (its metrics.jsonl)

    @property
    def row(self) -> Row | None:
        return record_row(self.run.name, {n: r for n, (_, r) in self.results.items()}) if self.results else None

    @property
    def timestep(self) -> int | None:
        """The timestep of its SD array; None for a CLIP run or one not trained yet."""
        if self.config is None or self.config.vision.mode == CLIP_MODE:
            return None
        return int(self.config.vision.sd_array.rpartition("@t")[2])


def _losses(metrics: Path) -> list[float]:
    """Step 1, 2, … in order: the trainer logs each step once, also across a resume."""
    if not metrics.is_file():
        return []
    return [float(json.loads(line)["loss"]) for line in metrics.read_text().splitlines() if line.strip()]


def collect(sweep: Sweep) -> list[RunResults]:
    """Each run's recorded training config, the results of its current checkpoint and its losses."""
    from train.config import RUN_CONFIG_FILE, load_run_config
    from train.metrics import METRICS_FILE

    out = []
    for run in sweep.runs:
        stages = [sweep.stages[name] for name in run.stages]
        trained = [s for s in stages if s.kind in TRAIN_STAGES]
        last = trained[-1].output_dir
        config = load_run_config(last) if (last / RUN_CONFIG_FILE).is_file() else None
        results: dict[str, tuple[Path, Mapping[str, Any]]] = {}
        for stage in (s for s in stages if s.kind == "eval"):
            try:
                files = eval_results(stage.overrides)
            except UserError:  # not trained (or its stores gone): no results to report
                files = []
            results.update({f.dir.parent.name: (f.result, f.read()) for f in files if f.done()})
        out.append(RunResults(run=run, config=config, results=results,
                              losses={s.name: _losses(s.output_dir / METRICS_FILE) for s in trained}))
    return out


def _varying(runs: Sequence[RunResults]) -> list[str]:
    """The axes whose values differ between runs (those any run sets when none differs)."""
    settings = [r.run.settings for r in runs]
    varying = [a for a in AXES if len({json.dumps(s.get(a), default=str) for s in settings}) > 1]
    return varying or [a for a in AXES if any(a in s for s in settings)]


def _table(runs: Sequence[RunResults], axes: Sequence[str], columns: Sequence[Column]
           ) -> tuple[list[str], list[list[str]], list[list[str]]]:
    """(header, markdown cells, CSV cells) with one row per run."""
    header = [KEYS[0], *axes, *KEYS[1:], *(c.header for c in columns)]
    markdown, csv_rows = [], []
    for result in runs:
        row, settings = result.row, result.run.settings
        keys = list(row[1:len(KEYS)]) if row else [""] * (len(KEYS) - 1)
        shown = [str(settings[a]) if a in settings else "" for a in axes]
        markdown.append([result.run.name, *(v or "—" for v in shown), *(k or "—" for k in keys),
                         *(cell(row.metrics, c) if row else "—" for c in columns)])
        csv_rows.append([result.run.name, *shown, *keys, *(csv_cell(row.metrics, c) if row else "" for c in columns)])
    return header, markdown, csv_rows


def _flat(metrics: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    for key, value in metrics.items():
        if isinstance(value, Mapping):
            yield from _flat(value, f"{prefix}{key}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield f"{prefix}{key}", value


RESULTS_HEADER = ["run", "result", "metric", "value", "checkpoint", "checkpoint_sha256", "data_sha256", "eval_root",
                  "result_key", "result_file"]


def _result_rows(runs: Sequence[RunResults]) -> list[list[str]]:
    """Every number of every result, with what it is keyed by (`llava_eval.identity`) and where it is."""
    return [[r.run.name, name, metric, repr(value), record["checkpoint"]["label"], record["identity"]["checkpoint"],
             record["identity"]["data"], record["eval_root"], record["key"], str(path)]
            for r in runs for name, (path, record) in r.results.items() for metric, value in _flat(record["metrics"])]


def _blink_value(metrics: Mapping[str, Any], subtask: str) -> float:
    """A BLINK accuracy in percent (`mean_accuracy` or a subtask's), NaN where the result has none."""
    found = metrics.get(subtask) if subtask == "mean_accuracy" else metrics.get("per_subtask", {}).get(subtask)
    return float("nan") if found is None else 100 * found


def _blink_figures(runs: Sequence[RunResults]) -> dict[str, Any]:
    """`{subtask: figure}`: accuracy over timesteps, one line per SD series (its settings but the timestep),
    each CLIP run a dashed level."""
    from analysis.plots import line_plot

    scored = [(r, r.results["blink"][1]["metrics"]) for r in runs if "blink" in r.results]
    sd = [(r, m) for r, m in scored if r.timestep is not None]
    clip = [(r, m) for r, m in scored if r.timestep is None]
    steps = sorted({r.timestep for r, _ in sd})
    figures = {}
    for subtask in ["mean_accuracy", *sorted({t for _, m in scored for t in m.get("per_subtask", {})})]:
        series: dict[str, list[float]] = {}
        for r, metrics in sd:
            label = "_".join(AXES[a].name(v) for a, v in r.run.settings.items() if a in AXES and a != "timestep")
            points = series.setdefault(label or "SD", [float("nan")] * len(steps))
            points[steps.index(r.timestep)] = _blink_value(metrics, subtask)
        figures[subtask] = line_plot(steps, series, xlabel="timestep", ylabel="accuracy (%)", title=f"BLINK {subtask}",
                                     levels={r.run.name: _blink_value(m, subtask) for r, m in clip})
    return figures


def _loss_figure(result: RunResults) -> Any:
    from analysis.plots import line_plot

    longest = max(len(losses) for losses in result.losses.values())
    series = {name: losses + [float("nan")] * (longest - len(losses)) for name, losses in result.losses.items()
              if losses}
    return line_plot(list(range(1, longest + 1)), series, xlabel="step", ylabel="loss",
                     title=f"{result.run.name}: training loss")


def _file_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def write_report(sweep: Sweep, runs: Sequence[RunResults]) -> Path:
    """Write the report's files under `<root>/report/`; returns `report.md`."""
    from analysis.outputs import RunDir, markdown_table

    out = RunDir(sweep.root, REPORT_DIR)
    axes = _varying(runs)
    tables = []
    if {"feature", "timestep"} & set(axes):
        tables.append(("fig3", "Fig. 3: benchmarks per feature and timestep (accuracies in %)", FIG3))
    if {"encoder", "mode", "guidance_scale", "prompt_source", "prompt_dropout"} & set(axes) or not tables:
        tables.append(("table2", "Table 2 layout: benchmarks (accuracies in %)", TABLE2))
    if any(name.startswith("coco") for r in runs for name in r.results):
        tables.append(("table5", "Table 5 layout: COCO captions by SD prompt setting", TABLE5))
    text = [f"# Sweep {sweep.name}", "", f"From `{sweep.path}` (runs under `{sweep.root}`). Each row names its run, "
            "the checkpoint's label, the first 12 hex digits of its weights' sha256 and of the hash of the eval data "
            "its numbers come from; `results.csv` lists every number with the full hashes and its result file.", ""]
    for name, title, columns in tables:
        header, markdown, csv_rows = _table(runs, axes, columns)
        out.csv(f"{name}.csv", header, csv_rows)
        text += [f"## {title}", "", markdown_table(header, markdown), f"([{name}.csv]({name}.csv))", ""]
    out.csv("results.csv", RESULTS_HEADER, _result_rows(runs))
    figures = _blink_figures(runs) if any("blink" in r.results for r in runs) else {}
    if figures:
        text += ["## BLINK across timesteps (CLIP runs dashed)", "",
                 "Each point is a `blink` result in `results.csv` (its run, checkpoint and data hashes).", ""]
        for subtask, figure in figures.items():
            path = out.figure(f"blink-{_file_name(subtask)}.png", figure)
            text.append(f"![BLINK {subtask}]({path.name})")
        text.append("")
    trained = [r for r in runs if any(r.losses.values())]
    if trained:
        text += ["## Training losses", ""]
        text += [f"![{r.run.name}]({out.figure(f'loss-{_file_name(r.run.name)}.png', _loss_figure(r)).name})"
                 for r in trained]
    return out.text("report.md", "\n".join(text) + "\n")


def main(argv: Sequence[str]) -> int:
    if not argv or argv[0].startswith("-"):
        return print_user_error(PROG, ConfigError("name the sweep file: `just sweep-report configs/sweeps/X.yaml`"))
    try:
        sweep = load_sweep(argv[0], argv[1:])
        runs = collect(sweep)
        path = write_report(sweep, runs)
    except UserError as exc:
        return print_user_error(PROG, exc)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; run the same command to write the report", file=sys.stderr)
        return INTERRUPTED
    evaluated = sum(bool(r.results) for r in runs)
    print(f"{PROG}: {evaluated} of {len(runs)} runs have results; wrote {path} and the tables and figures beside it")
    if evaluated < len(runs):
        print(f"{PROG}: runs without results appear with empty cells (`just sweep {sweep.path}` finishes them)",
              file=sys.stderr)
    return 0
