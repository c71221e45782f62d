"""`just sweep` and `just sweep-report` end to end on the smallest real sweep: one store, two runs sharing one
pretraining (SFT with and without question guidance) and a third run made to fail by a bad override, every
stage a subprocess of its public command. Then: a second invocation starts nothing; the report's numbers are
the result files'; a sweep interrupted mid-training and rerun ends with the uninterrupted sweep's weights.

To stay within seconds per stage, the store the sweep reads already holds the training and benchmark images
(the session store copied, the benchmark images added in this process by the pipeline's own code): the
sweep finds its extractions done, as its second invocation does."""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from llava_sweep.report import main as report_main
from llava_sweep.runner import LOGS_DIR, SUMMARY_FILE
from llava_sweep.runner import main as runner_main
from llava_sweep.spec import load_sweep
from stages.locations import REPO
from train.metrics import METRICS_FILE

RUNS = ("s0", "s4")  # the axis labels of guidance_scale 0 and 4


def _sweep_file(folder: Path, store, cache_root: Path) -> Path:
    """The sweep: the sample configs on the session store's data subsets, sized to seconds per stage."""
    train = ["per_device_batch_size=2", "max_length=256", "tensorboard=false", "data.num_workers=0"]
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump({
        "name": "tiny", "root": str(folder / "root"), "stages": ["pretrain", "sft", "eval"],
        "base": {
            "extract": {"sd": str(store.extract_yaml)},
            "pretrain": "configs/train/sample-pretrain.yaml", "sft": "configs/train/sample-sft.yaml",
            "eval": "configs/eval/sample.yaml",
            "overrides": {"extract": ["runner=sequential", f"cache_root={cache_root}"],
                          "pretrain": [*train, "max_steps=2", f"data.data_path={store.pretrain_json}"],
                          "sft": [*train, "max_steps=3", "save_every=1", f"data.data_path={store.sft_json}"],
                          "eval": ["benchmarks=[blink]", "max_new_tokens=4", "batch_size=5"]}},
        "axes": {"guidance_scale": [0, 4]},
        "runs": [{"name": "bad", "guidance_scale": 2, "overrides": {"pretrain": ["lr=-1"]}}]}))
    return path


def _start(*args: str) -> subprocess.Popen:
    """`python -m llava_sweep.cli sweep ...` in its own session (a terminal's foreground group), from the
    repository root as `just` runs it, without the rendezvous variables in-process training tests set."""
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE",
                                                            "LOCAL_RANK")}
    return subprocess.Popen([sys.executable, "-m", "llava_sweep.cli", "sweep", *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            env={**env, "OMP_NUM_THREADS": "1"})


def _sweep(*args: str) -> tuple[int, str, str]:
    proc = _start(*args)
    try:
        out, err = proc.communicate(timeout=400)
    finally:
        proc.kill()
    return proc.returncode, out, err


def _logs(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in (root / LOGS_DIR).rglob("*.log")}


def _result(root: Path, run: str) -> dict:
    (path,) = (root / "sft" / run / "eval" / "blink").glob("*/result.json")
    return json.loads(path.read_text())


def _fill_store(sweep: Path, store, cache_root: Path, build) -> None:
    """The sweep's store with the training images (the session store, copied) and BLINK's images (added)."""
    from llava_eval.benchmarks import BENCHMARKS
    from llava_eval.embedded import ensure_eval_root
    from llava_eval.export import write_llava_json

    shutil.copytree(store.path, cache_root / store.path.name)
    (job,) = load_sweep(sweep).extractions.values()
    eval_root = ensure_eval_root()
    blink = write_llava_json(BENCHMARKS["blink"].load(eval_root / "blink"), cache_root.parent / "blink.json")
    images = cache_root.parent / "blink-extract.yaml"
    images.write_text(yaml.safe_dump({**job.values, "data": [str(blink)], "image_root": str(eval_root)}))
    assert build(images) == cache_root / store.path.name


@pytest.fixture(scope="module")
def swept(train_store, store_builder, tmp_path_factory):
    """The sweep run once: (sweep file, its root, exit status, stdout, stderr)."""
    folder = tmp_path_factory.mktemp("sweep")
    sweep = _sweep_file(folder, train_store, folder / "cache")
    _fill_store(sweep, train_store, folder / "cache", store_builder)
    return (sweep, folder / "root", *_sweep(str(sweep)))


def test_a_failing_run_leaves_the_others_finished_and_the_summary_names_it(swept):
    sweep, root, code, out, err = swept
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
        record = _result(root, run)
        numbers = {r["metric"]: float(r["value"]) for r in rows if r["run"] == run}
        assert numbers == {"mean_accuracy": record["metrics"]["mean_accuracy"], "questions": 5, "unanswered":
                           record["metrics"]["unanswered"], **{f"per_subtask.{k}": v for k, v in
                                                               record["metrics"]["per_subtask"].items()}}
        assert {(r["checkpoint_sha256"], r["data_sha256"], r["result_key"]) for r in rows if r["run"] == run} == {
            (record["identity"]["checkpoint"], record["identity"]["data"], record["key"])}
    with (report / "table2.csv").open() as fh:
        table = {row["run"]: row for row in csv.DictReader(fh)}
    assert table["bad"]["BLINK"] == "" and table["bad"]["weights"] == ""  # never trained: empty cells
    for run in RUNS:
        record = _result(root, run)
        assert float(table[run]["BLINK"]) == record["metrics"]["mean_accuracy"]
        assert table[run]["weights"] == record["identity"]["checkpoint"][:12] and table[run]["MMVP"] == ""
    markdown = (report / "report.md").read_text()
    assert "## Table 2 layout" in markdown and "Fig. 3" not in markdown  # the sweep varies guidance only
    assert {p.name for p in report.glob("*.png")} >= {"blink-mean_accuracy.png", "loss-s0.png", "loss-s4.png"}


def test_an_interrupted_sweep_resumes_to_the_uninterrupted_weights(swept, tmp_path):
    sweep, root, *_ = swept
    uninterrupted = tmp_path / "s4"
    # s4's SFT trains again; not its evaluation: equal weights give equal results (keyed by the weights' hash)
    shutil.move(root / "sft" / "s4", uninterrupted)
    args = [str(sweep), "stages=[pretrain,sft]", "--only", "s4"]
    proc = _start(*args)
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
    code, out, err = _sweep(*args)
    assert code == 0, out + err
    assert "pretrain/base: already done" in out and "sft/s4: started" in out
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [1, 2, 3]  # resumed
    assert "train sft: resuming from" in (root / LOGS_DIR / "sft" / "s4.log").read_text()
    for part in ("adapter.safetensors", "llm/model.safetensors"):
        assert (root / "sft/s4/final" / part).read_bytes() == (uninterrupted / "final" / part).read_bytes()
