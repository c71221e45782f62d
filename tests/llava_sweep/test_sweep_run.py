"""`just sweep` and `just sweep-report` end to end on the smallest real sweep (`swept`, conftest.py): one store,
two runs sharing one pretraining (SFT with and without question guidance) and a third run made to fail by a
bad override, every stage a subprocess of its public command. Then: a second invocation starts nothing; the
report's numbers are the result files'; a sweep interrupted mid-training and rerun ends with the
uninterrupted sweep's weights."""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import time
from pathlib import Path

from llava_sweep.report import main as report_main
from llava_sweep.runner import LOGS_DIR, SUMMARY_FILE
from llava_sweep.runner import main as runner_main
from tests.llava_sweep.conftest import RUNS, blink_result, run_sweep, start_sweep
from train.metrics import METRICS_FILE


def _logs(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in (root / LOGS_DIR).rglob("*.log")}


def test_a_failing_run_leaves_the_others_finished_and_the_summary_names_it(swept):
    sweep, root, code, out, err, _ = swept
    assert code == 1, out + err
    summary = json.loads((root / SUMMARY_FILE).read_text())
    runs = summary["runs"]
    assert {name: run["status"] for name, run in runs.items()} == {"s0": "done", "s4": "done", "bad": "failed"}
    bad = runs["bad"]
    assert bad["cause"] == "pretrain/bad" and bad["reason"].startswith("exit 2: train pretrain: error: lr must be > 0")
    assert Path(bad["log"]) == root / LOGS_DIR / "pretrain" / "bad.log" and Path(bad["log"]).is_file()
    assert f"  failed   bad: pretrain/bad {bad['reason']}\n           log: {bad['log']}" in out
    stages = summary["stages"]
    assert {s: stages[s]["status"] for s in ("sft/bad", "eval/bad")} == {"sft/bad": "skipped", "eval/bad": "skipped"}
    assert stages["sft/bad"]["reason"] == "after failed pretrain/bad"
    assert stages["extract/sd-0"]["status"] == "done"  # the store holds every image (see the module doc)
    assert {stages[s]["status"] for s in ("pretrain/base", "sft/s0", "sft/s4", "eval/s0", "eval/s4")} == {"ran"}
    assert "pretrain/base: started" in out and "pretrain/s0" not in out  # one pretraining for both runs
    assert "Traceback" not in err


def test_a_second_invocation_starts_nothing(swept, capsys):
    sweep, root, *_ = swept
    before = _logs(root)
    assert runner_main([str(sweep), "runs=[]", "--no-progress"]) == 0  # the finished runs alone, in this process
    summary = json.loads((root / SUMMARY_FILE).read_text())
    assert {s["status"] for s in summary["stages"].values()} == {"done"} and len(summary["stages"]) == 6
    assert _logs(root) == before  # no command was started: none appended to its log
    assert capsys.readouterr().out.startswith("sweep tiny: 2 runs done, 0 failed, 0 skipped")


def test_the_report_holds_the_result_files_numbers(swept):
    sweep, root, *_ = swept
    assert report_main([str(sweep)]) == 0
    report = root / "report"
    with (report / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    for run in RUNS:
        record = blink_result(root, run)
        numbers = {r["metric"]: float(r["value"]) for r in rows if r["run"] == run}
        assert numbers == {"mean_accuracy": record["metrics"]["mean_accuracy"], "questions": 5, "unanswered":
                           record["metrics"]["unanswered"], **{f"per_subtask.{k}": v for k, v in
                                                               record["metrics"]["per_subtask"].items()},
                           "questions_per_subtask.Counting": 3, "questions_per_subtask.Visual_Similarity": 2}
        assert {(r["checkpoint_sha256"], r["data_sha256"], r["result_key"]) for r in rows if r["run"] == run} == {
            (record["identity"]["checkpoint"], record["identity"]["data"], record["key"])}
    with (report / "table2.csv").open() as fh:
        table = {row["run"]: row for row in csv.DictReader(fh)}
    assert table["bad"]["BLINK (%)"] == "" and table["bad"]["weights"] == ""  # never trained: empty cells
    for run in RUNS:
        record = blink_result(root, run)
        assert float(table[run]["BLINK (%)"]) == round(100 * record["metrics"]["mean_accuracy"], 4)
        assert table[run]["BLINK n (questions)"] == "5" and table[run]["eval root"] == record["eval_root"]
        assert table[run]["weights"] == record["identity"]["checkpoint"][:12] and table[run]["MMVP (%)"] == ""
    markdown = (report / "report.md").read_text()
    assert "## Table 2 layout" in markdown and "Fig. 3" not in markdown  # the sweep varies guidance only
    assert {p.name for p in report.glob("*.png")} >= {"blink-mean_accuracy.png", "loss-s0.png", "loss-s4.png"}


def test_an_interrupted_sweep_resumes_to_the_uninterrupted_weights(swept, tmp_path):
    sweep, root, *_ = swept
    uninterrupted = tmp_path / "s4"
    # s4's SFT trains again; not its evaluation: equal weights give equal results (keyed by the weights' hash)
    shutil.move(root / "sft" / "s4", uninterrupted)
    args = [str(sweep), "stages=[pretrain,sft]", "--only", "s4"]
    proc = start_sweep(*args)
    try:
        metrics, deadline = root / "sft" / "s4" / METRICS_FILE, time.time() + 240
        while proc.poll() is None and time.time() < deadline and not (
                metrics.is_file() and metrics.read_text().count("\n") >= 1):
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the runner and the trainer
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("sweep: interrupted; run the same")
    code, out, err = run_sweep(*args)
    assert code == 0, out + err
    assert "pretrain/base: already done" in out and "sft/s4: started" in out
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [1, 2, 3]  # resumed
    assert "train sft: resuming from" in (root / LOGS_DIR / "sft" / "s4.log").read_text()
    for part in ("adapter.safetensors", "llm/model.safetensors"):
        assert (root / "sft/s4/final" / part).read_bytes() == (uninterrupted / "final" / part).read_bytes()
