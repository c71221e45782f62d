"""lmms-eval's own CLI, evaluator and `mmvp` task (lmms_eval/tasks/mmvp: prompt, answer parsing, metrics) with
the `dfc_llava` model, offline, against `just eval` on the same dataset: the same prompts, the same answers,
and lmms-eval's scores equal to ours for the letters it reads.

The dataset is lmms-eval's `lmms-lab-eval/MMVP` built from the MMVP fixture (`write_lmms_parquet`), its photos
embedded as PNG, and laid out as the relative folder `lmms-lab-eval/MMVP` of the folder lmms-eval runs in:
`datasets.load_dataset` reads a local folder named like the Hub dataset before asking the Hub. A PNG decoded
and written again as PNG is the same bytes, so `just eval` (which names an embedded image by its bytes) and the
adapter (which writes the picture lmms-eval hands it as PNG) key each photo alike: the same store rows and noise.

lmms-eval runs in a subprocess with .venv/lmms (`./dev` installs requirements-lmms.lock there) first on the
path, as `just lmms-eval` runs it, and finds the model through this package's installed entry point.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from llava_eval.benchmarks import BENCHMARKS
from llava_eval.cli import extract_args, load_eval_config, run_eval
from llava_eval.results import EVAL_DIR
from llava_eval.run import Checkpoint, TrainedRun
from stages.cache_spec import array_shapes_for, spec_summary
from stages.locations import REPO
from tests.llava_eval.benchmark_layouts import LMMS_DATASETS, write_lmms_parquet
from tests.llava_eval.test_eval import SD_ARRAY, SPEC, _run
from train.resume import FINAL_DIR

LMMS_ENV = REPO / ".venv" / "lmms"
MODEL_NAME = "dfc_llava"  # llava_eval.lmms_adapter, which imports lmms_eval: not importable here


@pytest.fixture(scope="module")
def mmvp(tmp_path_factory, store_builder):
    """lmms-eval's MMVP dataset, under `cwd` for lmms-eval and under an eval root for `just eval`; a guided run
    whose store holds its images (as `just eval-export` asks), and `just eval`'s result."""
    root = tmp_path_factory.mktemp("lmms")
    fixture, pngs, eval_root = root / "fixture", root / "png", root / "eval"
    BENCHMARKS["mmvp"].write_fixture(fixture / "mmvp")
    items = BENCHMARKS["mmvp"].load(fixture / "mmvp")
    for item in items:
        (pngs / item.image).parent.mkdir(parents=True, exist_ok=True)
        Image.open(fixture / item.image).convert("RGB").save(pngs / item.image, format="PNG")
    for folder in (eval_root / "mmvp", root / "cwd" / LMMS_DATASETS["mmvp"][0]):
        write_lmms_parquet("mmvp", items, folder, image_root=pngs)
    extract_yaml = root / "extract.yaml"
    extract_yaml.write_text(yaml.safe_dump({
        **spec_summary(SPEC), "data": [str(root / "guided" / EVAL_DIR / "data" / "mmvp.json")],
        "image_root": str(eval_root), "cache_root": str(root / "cache"), "shard_size": 8, "batch_size": 4,
        "device": "cpu", "precision": "fp32", "write_webdataset": False}))
    run = _run({"root": root, "yaml": extract_yaml, "channels": array_shapes_for(SPEC)[SD_ARRAY][0][-1]}, "guided")
    _answering_llm(run)
    config = load_eval_config([f"run={run}", f"eval_root={eval_root}", "benchmarks=[mmvp]", "device=cpu"])
    extract_args(config)  # `just eval-export`: the images written and listed in the JSON the YAML names
    store_builder(extract_yaml)
    (result,) = run_eval(config, progress=False)
    return {"cwd": root / "cwd", "run": run, "cache_root": root / "cache", "result": result}


def _answering_llm(run: Path) -> None:
    """Give `run` an LLM of its own (`final/llm/`) whose answers depend on the image and the prompt: the embedded
    LLM's weights, every matrix tripled (as they are, it answers every prompt alike)."""
    model = TrainedRun.load(Checkpoint.locate(run), device=torch.device("cpu")).model
    with torch.no_grad():
        for parameter in model.llm.parameters():
            if parameter.dim() == 2:
                parameter.mul_(3)
    model.save_pretrained(run / FINAL_DIR, with_llm=True)


# lmms-eval's evaluator on its own mmvp task: `lmms-eval --tasks mmvp` less the CLI, whose task index parses
# lmms-eval's 3,000 task YAML files (~10 s); the model comes from lmms-eval's registry (the entry point)
EVALUATE = """
import json, sys
from pathlib import Path
import lmms_eval
from lmms_eval.evaluator import simple_evaluate
from lmms_eval.tasks import TaskManager

tasks = TaskManager(include_path=str(Path(lmms_eval.__file__).parent / "tasks" / "mmvp"), include_defaults=False)
out = simple_evaluate(model=sys.argv[1], model_args=sys.argv[2], tasks=["mmvp"], task_manager=tasks, batch_size=3,
                      device="cpu", log_samples=True)
samples = [{"input": s["arguments"][0], "text": s["filtered_resps"][0], "index": s["mmvp_accuracy"]["index"],
            "letter": s["mmvp_accuracy"]["pred_letter"]} for s in out["samples"]["mmvp"]]
print(json.dumps({"scores": out["results"]["mmvp"], "samples": samples}))
"""


def _lmms_eval(model_args: str, *, cwd: Path) -> dict:
    """lmms-eval (.venv/lmms first on the path, as `just lmms-eval` puts it) on lmms-eval's mmvp task, offline."""
    assert (LMMS_ENV / "lmms_eval").is_dir(), f"lmms-eval is not installed in {LMMS_ENV}: run ./dev (it installs " \
                                              "requirements-lmms.lock there)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(LMMS_ENV), str(REPO), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(cwd / "hf")}
    done = subprocess.run([sys.executable, "-c", EVALUATE, MODEL_NAME, model_args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_the_model_is_an_installed_entry_point_lmms_eval_loads():
    (entry,) = [e for e in entry_points(group="lmms_eval.models") if e.name == MODEL_NAME] or [None]
    assert entry is not None, f"no {MODEL_NAME} in the entry points group lmms_eval.models: run ./dev (pip " \
                              "install -e . records pyproject.toml's entry points)"
    assert entry.value == "llava_eval.lmms_adapter:MANIFEST"


def test_lmms_eval_mmvp_gives_just_evals_answers_and_scores(mmvp):
    got = _lmms_eval(f"run={mmvp['run']},cache_root={mmvp['cache_root']}", cwd=mmvp["cwd"])
    ours = {p["id"]: p for p in mmvp["result"]["predictions"]}
    theirs = {str(s["index"] + 1): s for s in got["samples"]}
    assert set(theirs) == set(ours) and len(ours) == 8
    assert all(ours[str(n)]["text"] != ours[str(n + 1)]["text"] for n in range(1, 9, 2))  # a pair: two photos
    for index, sample in theirs.items():
        assert sample["input"] == ours[index]["prompt"]  # lmms-eval's MMVP prompt is ours
        assert sample["text"] == ours[index]["text"]
    # lmms-eval reads a letter more loosely than `extract_choice` (an a or b before a space counts even at the end
    # of a word: `telescopeb g` is B), so on random text the letters can differ; scored with lmms-eval's letters,
    # our answer key (with its corrections) and pairs give lmms-eval's numbers
    right = {index: sample["letter"] == ours[index]["answer"] for index, sample in theirs.items()}
    assert got["scores"]["mmvp_accuracy,none"] == sum(right.values()) / 8
    pairs = [right[str(n)] and right[str(n + 1)] for n in range(1, 9, 2)]
    assert got["scores"]["mmvp_pair_accuracy,none"] == sum(pairs) / 4
