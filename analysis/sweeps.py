"""Sweeps in `just inspect`: each `just sweep-report` folder (`<sweep root>/report/`) copied beside the HTML
report and shown as a section: a provenance line (the sweep, its runs, the result files its numbers come
from, as `results.csv` lists them), then `report.md` itself — the tables as the sweep report rounds them
(percent to one decimal), the BLINK and loss figures. Only the files are read: `analysis` does not import
the sweep runner."""
from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path
from typing import Sequence

from analysis.provenance import Provenance
from analysis.report import Section
from analysis.training import run_model
from stages.config import ConfigError

__all__ = ["REPORT_FILE", "RESULTS_FILE", "sweep_sections"]

REPORT_FILE = "report.md"
RESULTS_FILE = "results.csv"  # every number: run, result, metric, value, checkpoint, hashes, result file
TITLE = "# Sweep "  # report.md's first line names the sweep
COPIED = ("*.md", "*.csv", "*.png", "*.pdf")
EVAL_DIR = "eval"  # a run's results are under <run>/eval/ (llava_eval.results.EVAL_DIR)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _checked(report: str | Path) -> Path:
    report = Path(report)
    if not (report / REPORT_FILE).is_file() or not (report / RESULTS_FILE).is_file():
        raise ConfigError(f"sweeps: {report} holds no sweep report ({REPORT_FILE} and {RESULTS_FILE}); "
                          "`just sweep-report SWEEP` writes them to <sweep root>/report")
    return report


def _provenance(name: str, report: Path) -> str:
    """One markdown line: the sweep, its runs (every table's and result's), where its numbers come from."""
    results = _rows(report / RESULTS_FILE)
    runs = dict.fromkeys(row["run"] for path in sorted(report.glob("*.csv")) for row in _rows(path) if "run" in row)
    numbers = (f"Its {len(results)} numbers are the evaluation results of {len({r['run'] for r in results})} runs "
               f"({len({r['result_file'] for r in results})} result files of "
               f"{len({r['checkpoint_sha256'] for r in results})} checkpoints), each listed in "
               f"[{RESULTS_FILE}]({RESULTS_FILE}) with its run, checkpoint sha256, eval data hash and result file."
               ) if results else "No run has evaluation results yet."
    return (f"Sweep `{name}`, {len(runs)} runs: {', '.join(f'`{r}`' for r in runs)}. {numbers} "
            f"Copied from `{report}` (written by `just sweep-report`).")


def _trained(report: Path) -> Provenance:
    """What each run of the sweep trained (`analysis.training.run_model`), for the runs whose folders are here:
    a result file lies under `<run>/eval/`."""
    results = [Path(row["result_file"]) for row in _rows(report / RESULTS_FILE)]
    runs = dict.fromkeys(next((p.parent for p in path.parents if p.name == EVAL_DIR), None) for path in results)
    return sum((run_model(run) for run in runs if run is not None and run.is_dir()), Provenance())


def sweep_sections(reports: Sequence[str | Path], out: Path) -> list[Section]:
    """One section per report folder, its files copied to `out/sweep-<name>/` (any earlier copy replaced);
    a folder without a sweep report is a `ConfigError`, raised before anything is copied."""
    checked = [_checked(report) for report in reports]
    sections: list[Section] = []
    for report in checked:
        text = (report / REPORT_FILE).read_text(encoding="utf-8")
        first, _, rest = text.partition("\n")
        named = first.startswith(TITLE)
        name = first[len(TITLE):].strip() if named else report.resolve().parent.name
        label = f"sweep-{re.sub(r'[^A-Za-z0-9._-]+', '_', name)}"
        folder, copies = out / label, 1
        while folder in {s.folder for s in sections}:  # two reports of one sweep name
            copies += 1
            folder = out / f"{label}-{copies}"
        if folder.resolve() != report.resolve():  # (an earlier inspect's copy given as the report: kept)
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            for pattern in COPIED:
                for path in report.glob(pattern):
                    shutil.copy2(path, folder / path.name)
        sections.append(Section(title=f"Sweep {name}", folder=folder, provenance=_trained(report),
                                reference="Fig. 3, Tables 2 and 5 from the sweep's runs (just sweep-report)",
                                markdown=f"{_provenance(name, report)}\n\n{rest if named else text}"))
    return sections
