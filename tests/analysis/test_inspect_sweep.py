"""`just inspect sweeps=[DIR]`: a `just sweep-report` folder (the `sweep_report` fixture, written by the sweep
report's own code) becomes a section of the HTML report — its tables with the report's rounding, its figures
embedded, a provenance line naming the sweep, its runs and the result files, and what each run whose folder is
at hand trained."""
import csv
import re

from analysis.cli import as_flags, build_parser, main
from analysis.report import write_report
from analysis.sweeps import sweep_sections


def rows(path):
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_a_sweep_report_is_a_section_with_its_rounded_numbers_figures_and_provenance(sweep_report, tmp_path):
    from train.config import TrainConfig, save_run_config

    save_run_config(TrainConfig(stage="sft", output_dir=str(tmp_path / "runs" / "t50")))  # the run of t50's results
    out = tmp_path / "inspect"
    page = write_report(out, sweep_sections([sweep_report], out), title="report").read_text()
    assert "<h2 id='s0'>Sweep tiny</h2>" in page
    provenance = re.search(r"<p>Sweep <code>tiny</code>, 3 runs: (.*?)</p>", page)[1]
    assert provenance.startswith("<code>t50</code>, <code>t200</code>, <code>clip</code>. Its 9 numbers are the "
                                 "evaluation results of 3 runs (6 result files of 3 checkpoints)")
    assert "<a href='sweep-tiny/results.csv'>results.csv</a>" in provenance
    cells = set(re.findall(r"<td>([^<]*)</td>", page))
    fig3 = rows(sweep_report / "fig3.csv")
    shown = {f"{float(row[column]):.1f}" for row in fig3 for column in ("MMVP (%)", "BLINK (%)")}
    assert len(shown) == 6 and shown <= cells  # percent to one decimal, as the sweep report rounds
    assert not cells & {row["MMVP (%)"] for row in fig3} - shown  # not the CSV's 4 decimals
    assert {row["checkpoint_sha256"][:12] for row in rows(sweep_report / "results.csv")} <= cells
    images = re.findall(r"<img src='([^']+)'", page)
    assert {"sweep-tiny/blink-mean_accuracy.png", "sweep-tiny/blink-counting.png", "sweep-tiny/loss-t50.png",
            "sweep-tiny/loss-t200.png", "sweep-tiny/loss-clip.png"} == set(images)
    assert all((out / src).stat().st_size > 1000 for src in images)  # copied beside index.html
    links = re.findall(r"<a href='([^'#]+)'", page)
    assert "sweep-tiny/fig3.csv" in links and all((out / link).is_file() for link in links)
    (header,) = re.findall(r"<dl class='prov'>(.*?)</dl>", page)  # what the one run whose folder is here trained
    assert f"<dt>run <code>{tmp_path / 'runs' / 't50'}</code></dt><dd>sft; LLM <code>embedded:tiny-llm</code>" in header
    assert "embedded:tiny-llm" in re.search(r"<div class='banner'>(.*?)</div>", page, re.S)[1]


def test_sweeps_are_an_override_default_none_and_a_folder_without_a_report_is_one_line(tmp_path, capsys):
    parser = build_parser()
    assert parser.parse_args(as_flags(["inspect"])).sweeps == []
    assert parser.parse_args(as_flags(["inspect", "sweeps=[a/report,b/report]"])).sweeps == ["a/report", "b/report"]
    assert main(["inspect", f"sweeps=[{tmp_path}]", f"out={tmp_path / 'out'}"]) == 2  # before any analysis runs
    assert capsys.readouterr().err.strip() == (f"analyze inspect: error: sweeps: {tmp_path} holds no sweep report "
                                               "(report.md and results.csv); `just sweep-report SWEEP` writes them "
                                               "to <sweep root>/report")
