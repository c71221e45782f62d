"""`just eval` end to end on a tiny run: benchmark fixtures -> their LLaVA JSON -> a store written by the
pipeline's own code -> answers from the run's adapter and LLM -> result files, resume, refusals, tables.

The run is an untrained adapter saved the way the trainer saves one (with its `train_config.json`): what
is tested is the plumbing from store to result file, not the (meaningless) answers of random weights.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from evaluate.benchmarks import BENCHMARKS
from evaluate.cli import load_eval_config, main, run_eval
from evaluate.export import write_llava_json
from evaluate.features import EvalFeatures
from evaluate.results import ResultFiles
from stages.cache_spec import CacheSpec, array_shapes_for, image_spec_for, spec_summary
from stages.encoders import SDFeatureEncoder
from stages.extractor import amplify
from stages.preprocess import load_image, preprocess
from train.config import (DataConfig, GuidanceConfig, TrainConfig, VisionConfig, load_run_config,
                          save_run_config)
from train.loop import FINAL_DIR
from train.model import build_model

SD_ARRAY = "U-L1-R1-B0-Cross-Q@t50"
SPEC = CacheSpec(model="embedded:tiny-sd", resolution=128, features=("U-L1-R1-B0-Cross-Q",), timesteps=(50,),
                 grid=4, feature_dtype="float32")
BENCHES = ("mmvp", "coco")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only add contention on a 2-core machine
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def coco_without_java(monkeypatch):
    """COCO's scorer starts Java for METEOR (~13 s of CPU per call); test_benchmarks_b checks it against
    hand-computed metrics. Here, where only the plumbing around it is under test, it counts answers."""
    from evaluate.benchmarks.coco import CocoCaptions

    monkeypatch.setattr(CocoCaptions, "score", lambda self, items, predictions: {"images": len(predictions)})


@pytest.fixture(scope="module")
def env(tmp_path_factory, store_builder):
    """An eval root with two benchmarks' fixtures, their images in a store, and its extraction YAML."""
    root = tmp_path_factory.mktemp("eval")
    eval_root = root / "benchmarks"
    items = {}
    for name in BENCHES:
        BENCHMARKS[name].write_fixture(eval_root / name)
        items[name] = BENCHMARKS[name].load(eval_root / name)
    data = [str(write_llava_json(items[n], root / f"{n}.json")) for n in BENCHES]
    extract_yaml = root / "extract.yaml"
    extract_yaml.write_text(yaml.safe_dump({
        **spec_summary(SPEC), "data": data, "image_root": str(eval_root), "cache_root": str(root / "cache"),
        "shard_size": 8, "batch_size": 4, "device": "cpu", "compute_dtype": "float32", "write_webdataset": False}))
    store_builder(extract_yaml)
    return {"root": root, "eval_root": eval_root, "yaml": extract_yaml, "items": items}


def _run(env, name: str, **changes) -> Path:
    """A run directory as the trainer leaves it: train_config.json and final/adapter.safetensors."""
    config = TrainConfig(stage="sft", output_dir=str(env["root"] / name), max_length=256,
                         vision=VisionConfig(sd_array=SD_ARRAY),
                         data=DataConfig(extract_configs=(str(env["yaml"]),)),
                         guidance=GuidanceConfig(scale=4.0, prompt_source="question"))
    config = replace(config, **changes)
    save_run_config(config)
    torch.manual_seed(0)
    channels = array_shapes_for(SPEC)[SD_ARRAY][0][-1]
    build_model(config, feature_dims={SD_ARRAY: channels, "CLIP-L-2": 16}).save_pretrained(Path(config.output_dir) / FINAL_DIR,
                                                                         with_llm=False)
    return Path(config.output_dir)


def _eval_config(env, run: Path, *more: str):
    return load_eval_config([f"run={run}", f"eval_root={env['eval_root']}", f"benchmarks=[{','.join(BENCHES)}]",
                             "max_new_tokens=4", *more])


def test_eval_writes_results_then_is_a_no_op_and_resumes_from_its_log(env, capsys):
    run = _run(env, "guided")
    results = {r["benchmark"] + (f"-{r['sd_setting']}" if r["benchmark"] == "coco" else ""): r
               for r in run_eval(_eval_config(env, run), progress=False)}
    assert sorted(results) == ["coco-gt", "coco-mismatched", "coco-none", "mmvp"]
    mmvp = json.loads((run / "eval" / "mmvp.json").read_text())
    assert [p["id"] for p in mmvp["predictions"]] == [i.id for i in env["items"]["mmvp"]]
    assert {"accuracy", "pair_accuracy"} <= set(mmvp["metrics"]) and len(mmvp["store_fingerprints"]) == 1
    assert len(mmvp["run"]["checkpoint_hash"]) == 64 and mmvp["run"]["config"]["guidance"]["scale"] == 4.0
    sd_prompts = {r["sd_setting"]: [p["sd_prompt"] for p in r["predictions"]] for k, r in results.items() if "coco" in k}
    assert set(sd_prompts["none"]) == {""} and sd_prompts["gt"] != sd_prompts["mismatched"]

    before = (run / "eval" / "mmvp.json").stat().st_mtime_ns
    run_eval(_eval_config(env, run), progress=False)  # every result exists: nothing is evaluated again
    assert (run / "eval" / "mmvp.json").stat().st_mtime_ns == before
    assert "exists" in capsys.readouterr().out

    files = ResultFiles(run, "mmvp")  # interrupted after three answers, the fourth line torn by the kill
    lines = files.log.read_text().splitlines()
    files.log.write_text("\n".join(lines[:3]) + '\n{"id": "torn')
    files.result.unlink()
    resumed = run_eval(_eval_config(env, run, "benchmarks=[mmvp]"), progress=False)[0]
    assert [p["text"] for p in resumed["predictions"]] == [p["text"] for p in mmvp["predictions"]]
    assert len(files.answered()) == len(env["items"]["mmvp"])


def test_unguided_run_evaluates_each_benchmark_once(env):
    run = _run(env, "unguided", guidance=GuidanceConfig(scale=0.0))
    results = run_eval(_eval_config(env, run, "benchmarks=[coco]"), progress=False)
    assert [r["sd_setting"] for r in results] == [None]
    assert (run / "eval" / "coco-none.json").is_file()


def test_question_guidance_at_eval_equals_recomputation_from_the_image(env):
    run = _run(env, "guided-features")
    features = EvalFeatures(load_run_config(run), device=torch.device("cpu"))
    items = env["items"]["mmvp"][:3]
    keys, prompts = [i.image for i in items], [i.prompt for i in items]
    got = features(keys, [*prompts[:2], ""])[SD_ARRAY].double()

    spec = replace(SPEC, prompt_sources=("question",))  # image -> latents -> paired uncond/cond pass
    encoder = SDFeatureEncoder.load(spec, device="cpu")
    images = np.stack([np.asarray(preprocess(load_image(env["eval_root"], k), image_spec_for(spec))) for k in keys])
    pair = encoder.features(encoder.latents(images), keys, prompts={"question": prompts},
                            array_ids=[SD_ARRAY, f"{SD_ARRAY}:question"])
    uncond, cond = pair[SD_ARRAY].double(), pair[f"{SD_ARRAY}:question"].double()
    expected = amplify(uncond, cond, 4.0)
    assert float((got[:2] - expected[:2]).norm() / expected[:2].norm()) < 1e-4
    assert float((got[2] - uncond[2]).norm() / uncond[2].norm()) < 1e-4  # an empty SD prompt keeps X_u
    assert float((expected[:2] - uncond[:2]).norm() / uncond[:2].norm()) > 1e-3  # guidance changed them


def _refusal(capsys, argv) -> str:
    """The one-line error of a refused `eval` (exit status 2)."""
    capsys.readouterr()  # drop what building the run printed
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("eval: error:"), err
    return err


def test_missing_benchmark_files_are_refused_naming_them(env, tmp_path, capsys):
    run = _run(env, "refusals")
    err = _refusal(capsys, ["eval", f"run={run}", f"eval_root={tmp_path}", "benchmarks=[mmvp]"])
    assert "Questions.csv" in err and len(err.splitlines()) == 1  # refused before any weights load


def test_images_not_cached_are_refused_with_the_extract_command(env, tmp_path, capsys):
    run = _run(env, "uncached")
    BENCHMARKS["gqa"].write_fixture(env["eval_root"] / "gqa")
    err = _refusal(capsys, ["eval", f"run={run}", f"eval_root={env['eval_root']}", "benchmarks=[gqa]"])
    assert f"just extract config={env['yaml']} data=[{run}/eval/data/gqa.json] image_root={env['eval_root']}" in err


def test_a_vision_mode_whose_arrays_the_store_lacks_is_refused(env, capsys):
    run = _run(env, "clip-mode", vision=VisionConfig(mode="clip"))
    err = _refusal(capsys, ["eval", f"run={run}", f"eval_root={env['eval_root']}", "benchmarks=[mmvp]"])
    assert "CLIP-L-2" in err and "in none of the stores" in err and err.count("\n") <= 1


def test_a_checkpoint_from_another_llm_is_refused(env, tmp_path, capsys):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from stages.embedded import resolve_model

    tiny = resolve_model("embedded:tiny-llm")  # the same architecture twice as wide
    wider = AutoConfig.from_pretrained(tiny)
    wider.hidden_size, wider.intermediate_size = 2 * wider.hidden_size, 2 * wider.intermediate_size
    AutoModelForCausalLM.from_config(wider).save_pretrained(tmp_path / "wider")
    AutoTokenizer.from_pretrained(tiny).save_pretrained(tmp_path / "wider")
    run = _run(env, "other-llm")
    config = json.loads((run / "train_config.json").read_text())
    (run / "train_config.json").write_text(json.dumps({**config, "model": str(tmp_path / "wider")}))
    err = _refusal(capsys, ["eval", f"run={run}", f"eval_root={env['eval_root']}", "benchmarks=[mmvp]"])
    assert "another LLM" in err.splitlines()[-1]


def test_eval_table_lays_out_the_papers_tables(tmp_path, capsys):
    def result(run: Path, name: str, metrics: dict) -> None:
        (run / "eval").mkdir(parents=True, exist_ok=True)
        (run / "eval" / f"{name}.json").write_text(json.dumps({"metrics": metrics}))

    a, b = tmp_path / "a", tmp_path / "b"
    result(a, "mmvp", {"pair_accuracy": 0.25, "accuracy": 0.5})
    result(a, "naturalbench", {"q_acc": 0.5, "i_acc": 0.25, "g_acc": 0.0, "acc": 0.6})
    result(a, "coco-gt", {"cider": 1.234, "bleu_4": 0.3})
    result(b, "gqa", {"accuracy": 0.625})
    out = tmp_path / "table"
    assert main(["table", str(a), str(b), "--out", str(out)]) == 0
    markdown = out.with_suffix(".md").read_text()
    assert f"| {a} | — | 25.0 | — | 50.0 | 25.0 | 0.0 | — |" in markdown
    assert f"| {b} | — | — | 62.5 | — | — | — | — |" in markdown
    assert f"| {a} | — | — | 1.23 | 0.3 | — | — |" in markdown
    rows = out.with_suffix(".csv").read_text().splitlines()
    assert rows[0].startswith("run,LLaVA-Bench,MMVP,GQA") and len(rows) == 3
