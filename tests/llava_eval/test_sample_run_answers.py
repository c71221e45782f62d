"""The demo's run answers in words: `just demo`'s SFT (configs/train/sample-sft.yaml: its learning rate,
batches, guidance), then `just eval-extract` and `just eval` on the embedded fixtures, at test sizes: the session
store (128 px, 4x4 token grid) and its SFT subset (6 image and 2 text-only conversations) for 16 epochs, 32
steps; a fresh adapter in place of stage 1's; 8-token answers. The demo trains 240 steps on the whole sample.

A tiny LLM trained too briefly answers every question with blanks, `</s>` or punctuation: the sample SFT's
former 24 steps at lr 2e-3 gave the empty string, and here 8 steps give `........`. So does a generator that
drops what it generates. None of them passes."""
from __future__ import annotations

import shlex
import shutil

import pytest
import torch
import yaml

from llava_eval.cli import extract_args, load_eval_config, run_eval
from llava_eval.embedded import ensure_eval_root
from train.cli import main as train_main

EPOCHS = 16
BENCHMARKS = "[mmvp,naturalbench,gqa]"


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only add contention on a 2-core machine
    yield
    torch.set_num_threads(threads)


def test_the_demos_sft_settings_train_a_run_that_answers_every_question_with_text(train_store, store_builder,
                                                                                    tmp_path):
    cache_root = tmp_path / "cache"  # the session store, copied: the benchmark images are added to it below
    shutil.copytree(train_store.path, cache_root / train_store.path.name)
    extract = {**yaml.safe_load(train_store.extract_yaml.read_text()), "cache_root": str(cache_root)}
    extract_yaml = tmp_path / "extract.yaml"
    extract_yaml.write_text(yaml.safe_dump(extract))
    run = tmp_path / "sample-sft"
    assert train_main(["sft", f"data.extract_configs=[{extract_yaml}]", f"data.data_path={train_store.sft_json}",
                       f"output_dir={run}", "pretrained_adapter=", "save_every=0", "report_to=none",
                       "data.num_workers=0", f"epochs={EPOCHS}"]) == 0

    config = load_eval_config([f"run={run}", f"benchmarks={BENCHMARKS}", "max_new_tokens=8", "device=cpu"])
    for args in extract_args(config):  # `just eval-extract`: the benchmark images into the run's store
        values = dict(arg.split("=", 1) for arg in shlex.split(args))
        benchmark_yaml = tmp_path / "benchmarks.yaml"
        benchmark_yaml.write_text(yaml.safe_dump({**extract, "data": values["data"].strip("[]").split(","),
                                                  "image_root": values["image_root"]}))
        assert store_builder(benchmark_yaml) == cache_root / train_store.path.name
    results = run_eval(config, progress=False)
    answers = {(r["identity"]["benchmark"], p["id"]): p["text"] for r in results for p in r["predictions"]}
    assert len(answers) == 22 and str(ensure_eval_root()) == results[0]["eval_root"]
    assert all(any(c.isalnum() for c in text) for text in answers.values()), answers  # words, not blanks
