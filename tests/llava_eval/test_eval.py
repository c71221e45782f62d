"""`just eval` end to end on a tiny run: benchmark fixtures -> their LLaVA JSON -> a store written by the
pipeline's own code -> answers from the run's adapter and LLM -> result files keyed by their identity,
resume, refusals, tables.

The run is an untrained adapter saved the way the trainer saves one (with its `train_config.json`): what
is tested is the plumbing from store to result file, not the (meaningless) answers of random weights.
"""
from __future__ import annotations

import csv
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from llava_eval.benchmarks import BENCHMARKS
from llava_eval.cli import extract_args, load_eval_config, main, planned_results, run_eval
from llava_eval.export import write_llava_json
from llava_eval.features import EvalFeatures
from llava_eval.results import ResultFiles, stored_results
from stages.cache_spec import CacheSpec, array_shapes_for, spec_summary
from stages.extractor import amplify
from stages.features import ArrayId
from stages.serving import SpecFeatures
from stages.store import StoreReader
from stages.store.fingerprint import Fingerprint
from train.config import (DataConfig, GuidanceConfig, TrainConfig, VisionConfig, load_run_config,
                          save_run_config)
from train.engine import CHECKPOINTS_DIR
from train.model import build_model
from train.resume import FINAL_DIR

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
    from llava_eval.benchmarks.coco import CocoCaptions

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
        "shard_size": 8, "batch_size": 4, "device": "cpu", "precision": "fp32", "write_webdataset": False}))
    store_builder(extract_yaml)
    return {"root": root, "eval_root": eval_root, "yaml": extract_yaml, "items": items,
            "channels": array_shapes_for(SPEC)[SD_ARRAY][0][-1]}


def _save_weights(env, run: Path, folder: Path, *, seed: int = 0, with_llm: bool = False) -> None:
    """The adapter of `run`'s config, seeded, saved into `folder` (with the LLM when `with_llm`) as the trainer
    saves `final/` and each `checkpoints/step-N/` (`LlavaModel.save_pretrained`)."""
    torch.manual_seed(seed)
    build_model(load_run_config(run), feature_dims={SD_ARRAY: env["channels"], "CLIP-L-2": 16}).save_pretrained(
        folder, with_llm=with_llm)


def _run(env, name: str, **changes) -> Path:
    """A run directory as the trainer leaves it: train_config.json and final/adapter.safetensors."""
    config = TrainConfig(stage="sft", output_dir=str(env["root"] / name), max_length=256,
                         vision=VisionConfig(sd_array=SD_ARRAY),
                         data=DataConfig(extract_configs=(str(env["yaml"]),)),
                         guidance=GuidanceConfig(scale=4.0, prompt_source="question"))
    config = replace(config, **changes)
    save_run_config(config)
    _save_weights(env, Path(config.output_dir), Path(config.output_dir) / FINAL_DIR)
    return Path(config.output_dir)


def _eval_config(env, run: Path, *more: str, eval_root: Path | None = None, benchmarks=BENCHES):
    return load_eval_config([f"run={run}", f"eval_root={eval_root or env['eval_root']}",
                             f"benchmarks=[{','.join(benchmarks)}]", "max_new_tokens=4", *more])


def _result_files(run: Path, name: str) -> list[Path]:
    return sorted(result.path for result in stored_results(run) if result.name == name)


def _interrupt(result_file: Path, *, answered: int, text: str) -> Path:
    """Turn a written result into an evaluation killed after `answered` answers, each `text` (to tell them
    from recomputed ones), while writing the next line; returns its predictions log."""
    log = result_file.with_name("predictions.jsonl")
    header, *lines = log.read_text().splitlines()
    kept = [json.dumps({"id": json.loads(line)["id"], "text": text}) for line in lines[:answered]]
    log.write_text("\n".join([header, *kept]) + '\n{"id": "torn')
    result_file.unlink()
    return log


def test_eval_writes_results_then_is_a_no_op_and_resumes_from_its_log(env, capsys):
    run = _run(env, "guided")
    results = run_eval(_eval_config(env, run), progress=False)
    assert sorted(result.name for result in stored_results(run)) == ["coco-gt", "coco-mismatched", "coco-none", "mmvp"]
    [mmvp_file] = _result_files(run, "mmvp")
    mmvp = json.loads(mmvp_file.read_text())
    key = Fingerprint.from_fields(mmvp["identity"])  # the folder is named by the identity recorded
    assert (mmvp["key"], mmvp_file.parent.name) == (key.full, key.short)
    assert [p["id"] for p in mmvp["predictions"]] == [i.id for i in env["items"]["mmvp"]]
    identity = mmvp["identity"]
    assert {"accuracy", "pair_accuracy"} <= set(mmvp["metrics"]) and len(identity["features"]["stores"]) == 1
    assert len(identity["checkpoint"]) == 64 and len(identity["data"]) == 64 and identity["options"] == {
        "corrected": True}
    assert identity["features"]["guidance_scale"] == 4.0 and identity["generation"]["max_new_tokens"] == 4
    assert mmvp["eval_root"] == str(env["eval_root"]) and mmvp["checkpoint"]["label"] == FINAL_DIR
    sd_prompts = {r["identity"]["sd_setting"]: [p["sd_prompt"] for p in r["predictions"]]
                  for r in results if r["identity"]["benchmark"] == "coco"}
    assert set(sd_prompts["none"]) == {""} and sd_prompts["gt"] != sd_prompts["mismatched"]

    before = mmvp_file.stat().st_mtime_ns
    run_eval(_eval_config(env, run), progress=False)  # every result exists: nothing is evaluated again
    assert mmvp_file.stat().st_mtime_ns == before
    assert "exists" in capsys.readouterr().out

    _interrupt(mmvp_file, answered=3, text="from the log")  # killed after three answers, mid-line
    resumed = run_eval(_eval_config(env, run, benchmarks=["mmvp"]), progress=False)[0]
    texts = [p["text"] for p in resumed["predictions"]]
    assert texts[:3] == ["from the log"] * 3 and texts[3:] == [p["text"] for p in mmvp["predictions"]][3:]


def test_a_changed_checkpoint_is_evaluated_again_not_found_existing(env, capsys):
    run = _run(env, "changed")
    first = run_eval(_eval_config(env, run, benchmarks=["mmvp"]), progress=False)[0]
    _save_weights(env, run, run / FINAL_DIR, seed=1)  # other adapter weights in the same files
    capsys.readouterr()
    second = run_eval(_eval_config(env, run, benchmarks=["mmvp"]), progress=False)[0]
    assert "exists" not in capsys.readouterr().out
    assert second["identity"]["checkpoint"] != first["identity"]["checkpoint"]
    assert len(_result_files(run, "mmvp")) == 2  # the first checkpoint's result is kept beside

    kept = {path: path.stat().st_mtime_ns for path in _result_files(run, "mmvp")}
    run_eval(_eval_config(env, run, "force=true", benchmarks=["mmvp"]), progress=False)  # the current one only
    changed = {path for path in _result_files(run, "mmvp") if path.stat().st_mtime_ns != kept.get(path)}
    assert [path.parent.name for path in changed] == [Fingerprint.from_fields(second["identity"]).short]


def test_a_log_of_another_checkpoint_is_never_resumed(env):
    run = _run(env, "stale-log")
    first = run_eval(_eval_config(env, run, benchmarks=["mmvp"]), progress=False)[0]
    [result_file] = _result_files(run, "mmvp")
    log = _interrupt(result_file, answered=3, text="stale")  # checkpoint A interrupted after three answers
    logged = log.read_text()
    _save_weights(env, run, run / FINAL_DIR, seed=1)  # checkpoint B
    second = run_eval(_eval_config(env, run, benchmarks=["mmvp"]), progress=False)[0]
    assert "stale" not in [p["text"] for p in second["predictions"]]
    assert second["identity"]["checkpoint"] != first["identity"]["checkpoint"]
    assert log.read_text() == logged  # left for A, not relabelled


def test_another_eval_root_with_the_same_file_names_gets_its_own_result(env, tmp_path):
    run = _run(env, "two-roots")
    other = tmp_path / "other"
    shutil.copytree(env["eval_root"] / "mmvp", other / "mmvp")
    questions = other / "mmvp" / "Questions.csv"  # the same files, other questions
    questions.write_text(questions.read_text().replace("picture", "photo"))
    a = run_eval(_eval_config(env, run, benchmarks=["mmvp"]), progress=False)[0]
    b = run_eval(_eval_config(env, run, eval_root=other, benchmarks=["mmvp"]), progress=False)[0]
    assert (a["eval_root"], b["eval_root"]) == (str(env["eval_root"]), str(other))
    assert a["identity"]["data"] != b["identity"]["data"] and a["key"] != b["key"]
    assert [p["prompt"] for p in a["predictions"]] != [p["prompt"] for p in b["predictions"]]
    assert len(_result_files(run, "mmvp")) == 2


def test_a_benchmark_given_by_its_own_path_is_the_result_it_is_under_the_eval_root(env, tmp_path):
    """`paths.mmvp=<a link to the same folder>`: the image root is the run's folder of links, the image keys and
    the data hash are the eval root's, so the result identity is the same (the result "exists")."""
    run = _run(env, "by-path")
    linked = tmp_path / "MMVP"
    linked.symlink_to(env["eval_root"] / "mmvp", target_is_directory=True)
    by_path = load_eval_config([f"run={run}", f"paths.mmvp={linked}", "max_new_tokens=4"])
    assert [f.identity for f in planned_results(by_path)] == \
        [f.identity for f in planned_results(_eval_config(env, run, benchmarks=["mmvp"]))]
    (line,) = extract_args(by_path)
    assert f"image_root={run}/eval/images" in line and f"data=[{run}/eval/data/mmvp.json]" in line
    assert (run / "eval" / "images" / "mmvp").resolve() == (env["eval_root"] / "mmvp").resolve()
    (result,) = run_eval(by_path, progress=False)  # read through the links: the extraction follows them
    assert [p["id"] for p in result["predictions"]] == [i.id for i in env["items"]["mmvp"]]


def test_other_pictures_under_the_cached_names_get_their_own_features(env, tmp_path, store_builder, capsys):
    """A second eval root whose files have the cached names but other pictures: their features are
    computed from those files (equal to an extraction of that root), never read from the store."""
    other = tmp_path / "other"
    shutil.copytree(env["eval_root"], other)
    keys = sorted({i.image for i in env["items"]["mmvp"]})
    first, second = other / keys[0], other / keys[1]
    swapped = first.read_bytes()
    first.write_bytes(second.read_bytes())  # the two pictures trade names
    second.write_bytes(swapped)
    config = load_run_config(_run(env, "other-pictures"))
    data_json = write_llava_json(env["items"]["mmvp"], tmp_path / "mmvp.json")

    features = EvalFeatures(config, device=torch.device("cpu"), image_root=other)
    features.check_cached(keys, data_json=data_json)
    assert "2 images under" in capsys.readouterr().err
    served = features.source.read(keys, [SD_ARRAY])[SD_ARRAY]
    cached = StoreReader(features.stores[0].path, expect=None).read(keys, [SD_ARRAY])[SD_ARRAY]
    assert not np.array_equal(served[:2], cached[:2]) and np.array_equal(served[2:], cached[2:])

    fresh = yaml.safe_load(env["yaml"].read_text())  # the other root, extracted into a store of its own
    fresh.update(data=[str(data_json)], image_root=str(other), cache_root=str(tmp_path / "cache"))
    (tmp_path / "extract.yaml").write_text(yaml.safe_dump(fresh))
    extracted = store_builder(tmp_path / "extract.yaml")
    expected = StoreReader(extracted, expect=None).read(keys, [SD_ARRAY])[SD_ARRAY]
    np.testing.assert_allclose(served, expected, rtol=1e-4, atol=1e-5)  # another batch: float rounding only
    assert np.abs(served[:2] - cached[:2]).max() > 100 * np.abs(served - expected).max()


def test_a_step_checkpoint_is_evaluated_beside_final(env, tmp_path, capsys):
    run = _run(env, "steps")
    step = run / CHECKPOINTS_DIR / f"step-{2:08d}"
    _save_weights(env, run, step, seed=1, with_llm=True)  # an SFT checkpoint but its deepspeed/ and state:
    assert not (step / "llm" / "tokenizer_config.json").exists()  # its llm/ has no tokenizer (final/llm/ has)
    final = run_eval(_eval_config(env, run, benchmarks=["mmvp"]), progress=False)[0]
    stepped = run_eval(_eval_config(env, step, benchmarks=["mmvp"]), progress=False)[0]
    assert (final["checkpoint"]["label"], stepped["checkpoint"]["label"]) == (FINAL_DIR, step.name)
    assert stepped["identity"]["checkpoint"] != final["identity"]["checkpoint"]
    assert {r.parent.parent.parent.parent for r in _result_files(run, "mmvp")} == {run}  # both under the run
    capsys.readouterr()
    run_eval(_eval_config(env, run / FINAL_DIR, benchmarks=["mmvp"]), progress=False)  # <run>/final: <run>
    assert "exists" in capsys.readouterr().out

    out = tmp_path / "table"
    assert main(["table", str(run), "--out", str(out)]) == 0
    rows = out.with_suffix(".csv").read_text().splitlines()[1:]
    assert [row.split(",")[1:3] for row in rows] == [[FINAL_DIR, final["identity"]["checkpoint"][:12]],
                                                      [step.name, stepped["identity"]["checkpoint"][:12]]]
    err = _refusal(capsys, ["eval", f"run={run / CHECKPOINTS_DIR}/step-00000009",
                            f"eval_root={env['eval_root']}", "benchmarks=[mmvp]"])
    assert "step-00000009" in err and f"checkpoints: {step.name}" in err


def test_unguided_run_evaluates_each_benchmark_once(env):
    run = _run(env, "unguided", guidance=GuidanceConfig(scale=0.0))
    results = run_eval(_eval_config(env, run, "benchmarks=[coco]"), progress=False)
    assert [r["identity"]["sd_setting"] for r in results] == [None]
    assert len(_result_files(run, "coco-none")) == 1


def test_question_guidance_at_eval_equals_recomputation_from_the_image(env):
    run = _run(env, "guided-features")
    features = EvalFeatures(load_run_config(run), device=torch.device("cpu"))
    items = env["items"]["mmvp"][:3]
    keys, prompts = [i.image for i in items], [i.prompt for i in items]
    got = features(keys, [*prompts[:2], ""])[SD_ARRAY].double()

    # the room's computation from the image files: image -> latents -> unconditional and prompted passes
    question = str(replace(ArrayId.parse(SD_ARRAY), source="question"))
    fresh = SpecFeatures(SPEC, image_root=env["eval_root"], compute_missing=True, device="cpu")
    pair = fresh.read(keys, [SD_ARRAY, question], prompts={"question": prompts})
    uncond, cond = (torch.from_numpy(pair[a]).double() for a in (SD_ARRAY, question))
    expected = amplify(uncond, cond, 4.0)
    assert float((got[:2] - expected[:2]).norm() / expected[:2].norm()) < 1e-4
    assert float((got[2] - uncond[2]).norm() / uncond[2].norm()) < 1e-4  # an empty SD prompt keeps X_u
    assert float((expected[:2] - uncond[:2]).norm() / uncond[:2].norm()) > 1e-3  # guidance changed them


def _refusal(capsys, argv) -> str:
    """The one-line error of a refused `eval` (exit status 2)."""
    capsys.readouterr()  # drop what building the run printed
    assert main(argv) == 2
    said, error, rest = capsys.readouterr().err.strip().partition("eval: error:")
    assert error and all(line.endswith((" items", " …")) for line in said.splitlines()), said  # layouts read, phases
    return error + rest


def test_missing_benchmark_files_are_refused_naming_them(env, tmp_path, capsys):
    run = _run(env, "refusals")
    err = _refusal(capsys, ["eval", f"run={run}", f"eval_root={tmp_path}", "benchmarks=[mmvp]"])
    assert "no folder mmvp or MMVP" in err and "paths.mmvp=" in err and len(err.splitlines()) == 1
    (tmp_path / "mmvp").mkdir()
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


def _table_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def test_eval_table_lays_out_the_papers_tables_in_their_units_one_row_per_checkpoint_and_data(tmp_path,
                                                                                             make_identity):
    def result(run: Path, name: str, metrics: dict, **hashes: str) -> None:
        ResultFiles(run, name, make_identity(name, **hashes)).write({"metrics": metrics, "eval_root": "/eval",
                                                "checkpoint": {"label": FINAL_DIR, "path": str(run / FINAL_DIR)}})

    a, b = tmp_path / "a", tmp_path / "b"
    result(a, "mmvp", {"pair_accuracy": 0.25, "accuracy": 0.5, "pairs": 4})
    result(a, "naturalbench", {"q_acc": 0.5, "i_acc": 0.25, "g_acc": 0.0, "acc": 0.6, "samples": 2})
    result(a, "coco-gt", {"cider": 1.234, "bleu_4": 0.3, "images": 4})
    result(b, "gqa", {"accuracy": 0.625, "questions": 8}, weights="b")
    result(b, "gqa", {"accuracy": 0.5, "questions": 8}, weights="b", data="e")  # the same files, other content
    out = tmp_path / "table"
    assert main(["table", str(a), str(b), "--out", str(out)]) == 0
    markdown = out.with_suffix(".md").read_text()
    assert ("| run | checkpoint | weights | eval root | data | LLaVA-Bench (relative %) | MMVP (%) | GQA (%) | "
            "NaturalBench Q-Acc (%) |") in markdown
    data = {d: Fingerprint.from_fields({"gqa": d * 64}).full[:12] for d in "de"}
    assert f"| {a} | final | {'a' * 12} | /eval | " in markdown
    assert "| — | 25.0 | — | 50.0 | 25.0 | 0.0 | — | — | 4 | — | 2 | — |" in markdown  # scores, then counts
    for hashed, gqa in (("e", "50.0"), ("d", "62.5")):
        row = f"| {b} | final | {'b' * 12} | /eval | {data[hashed]} | — | — | {gqa} |"
        assert row + " — | — | — | — | — | — | 8 |" in markdown
    assert "| GT caption CIDEr (×100) | GT caption BLEU-4 (×100) |" in markdown
    assert "| — | — | 123.4 | 30.0 | — | — | 4 |" in markdown  # CIDEr and BLEU-4 ×100, as the paper
    rows = _table_csv(out.with_suffix(".csv"))
    assert len(rows) == 3 and rows[0]["eval root"] == "/eval"
    assert (rows[0]["MMVP (%)"], rows[0]["MMVP n (pairs)"], rows[0]["GQA (%)"]) == ("25.0", "4", "")  # empty: none
    assert (rows[0]["GT caption CIDEr (×100)"], rows[0]["COCO n (images)"], rows[0]["no caption CIDEr (×100)"]) == (
        "123.4", "4", "")
    assert "—" not in out.with_suffix(".csv").read_text()


def test_eval_table_breaks_blink_naturalbench_and_llava_bench_down_by_category(tmp_path, make_identity):
    run = tmp_path / "run"
    for name, metrics in {
        "blink": {"mean_accuracy": 0.5, "per_subtask": {"Counting": 1 / 3, "Jigsaw": 2 / 3}, "questions": 6,
                  "questions_per_subtask": {"Counting": 3, "Jigsaw": 3}},
        "naturalbench": {"q_acc": 0.5, "i_acc": 0.25, "g_acc": 0.0, "acc": 0.625, "samples": 2, "per_type": {
            "yes_no": {"q_acc": 0.5, "i_acc": 0.0, "g_acc": 0.0, "acc": 0.5, "samples": 1}}},
        "llava-bench": {"relative_score": 70.0, "questions": 3, "questions_per_category": {"conv": 2, "detail": 1},
                        "judged": {"llava_bench_conv": {"relative": 80.0}, "all": {"relative": 70.0}}},
    }.items():
        ResultFiles(run, name, make_identity(name)).write({"metrics": metrics, "eval_root": "/eval",
                                                           "checkpoint": {"label": FINAL_DIR}})
    out = tmp_path / "t"
    assert main(["table", str(run), "--out", str(out)]) == 0
    assert sorted(p.name for p in tmp_path.glob("t*")) == ["t-blink.csv", "t-llava-bench.csv", "t-naturalbench.csv",
                                                           "t.csv", "t.md"]
    keys = ["run", "checkpoint", "weights", "eval root", "data"]
    blink, = _table_csv(tmp_path / "t-blink.csv")  # the subtasks some row has, each with its n
    assert list(blink) == [*keys, "mean (%)", "Counting (%)", "Jigsaw (%)", "n (questions)",
                           "Counting n (questions)", "Jigsaw n (questions)"]
    assert (blink["Counting (%)"], blink["Jigsaw (%)"], blink["Counting n (questions)"]) == ("33.3333", "66.6667", "3")
    natural, = _table_csv(tmp_path / "t-naturalbench.csv")
    assert list(natural)[len(keys):] == ["Q-Acc (%)", "I-Acc (%)", "G-Acc (%)", "Acc (%)", "n (samples)",
                                         "yes_no Q-Acc (%)", "yes_no I-Acc (%)", "yes_no G-Acc (%)", "yes_no Acc (%)",
                                         "yes_no n (samples)"]
    assert (natural["Acc (%)"], natural["yes_no Q-Acc (%)"], natural["yes_no n (samples)"]) == ("62.5", "50.0", "1")
    bench, = _table_csv(tmp_path / "t-llava-bench.csv")
    assert list(bench)[len(keys):] == ["all (relative %)", "conv (relative %)", "n (questions)",
                                       "conv n (questions)", "detail n (questions)"]
    assert (bench["all (relative %)"], bench["conv (relative %)"], bench["detail n (questions)"]) == (
        "70.0", "80.0", "1")
    markdown = out.with_suffix(".md").read_text()
    assert "### BLINK per subtask" in markdown and "| 50.0 | 33.3 | 66.7 | 6 | 3 | 3 |" in markdown
    assert "MMVP has no per-category table" in markdown


def test_eval_table_refuses_run_directories_that_do_not_exist_and_overwrites_nothing(tmp_path, capsys):
    out = tmp_path / "table"
    before = {out.with_suffix(".md"): "earlier table\n", out.with_suffix(".csv"): "run\nearlier\n"}
    for path, text in before.items():
        path.write_text(text)
    assert main(["table", str(tmp_path), str(tmp_path / "nope"), str(tmp_path / "gone"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("table: error:") and f"{tmp_path / 'nope'}, {tmp_path / 'gone'}" in err
    assert len(err.strip().splitlines()) == 1
    assert {path: path.read_text() for path in before} == before and not (tmp_path / "table-blink.csv").exists()


def test_llava_bench_score_goes_into_the_one_result_named(tmp_path, make_identity, capsys):
    run, review = tmp_path / "run", tmp_path / "review.jsonl"
    review.write_text(json.dumps({"question_id": 0, "content": "8 6", "tuple": [8.0, 6.0]}) + "\n")
    a, b = (ResultFiles(run, "llava-bench", make_identity("llava-bench", weights=w)) for w in "ab")
    for files in (a, b):
        files.write({"metrics": {"judge": "not run"}})
    assert main(["llava-bench-score", str(review), "--run", str(run)]) == 2  # two checkpoints: which one?
    assert str(a.dir) in capsys.readouterr().err
    assert main(["llava-bench-score", str(review), "--run", str(a.dir)]) == 0
    assert a.read()["metrics"]["relative_score"] == 75.0 and "relative_score" not in b.read()["metrics"]
