"""`python -m train.cli pretrain` then `sft`, in process, on a store found through its extraction YAML."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml

from stages.errors import run_main
from train.cli import _loader_factory, main
from stages.locations import REPO
from train.config import DEFAULT_CONFIGS, DataConfig, load_stage_config
from train.model import load_tokenizer
from stages.llava import load_llava_json
from train.data import LlavaDataset
from train.metrics import METRICS_FILE
from train.model import ADAPTER_FILE, LLM_DIR
from train.resume import FINAL_DIR
from train.sampler import SeededRandomSampler
from stages.serving import CachedFeatures
from stages.store import StoreNotFound
from train.stores import locate_stores

SD_ARRAY = "U-L1-R1-B0-Cross-Q@t50"


def _common(store, stage: str, out) -> list[str]:
    data = store.pretrain_json if stage == "pretrain" else store.sft_json
    return [f"data.extract_configs=[{store.extract_yaml}]", f"data.data_path={data}", f"output_dir={out}",
            "per_device_batch_size=2", "save_every=0"]


def _epoch_means(out, steps_per_epoch: int) -> tuple[float, float]:
    """Mean loss of the first and of the last epoch (the same samples, so comparable)."""
    losses = [json.loads(line)["loss"] for line in (out / METRICS_FILE).read_text().splitlines()]
    return float(np.mean(losses[:steps_per_epoch])), float(np.mean(losses[-steps_per_epoch:]))


def _refuse(self, *args, **kwargs):
    raise AssertionError("a U-Net was constructed")


def test_pretrain_then_sft_from_the_cli_lower_the_loss_and_save_everything(train_store, tmp_path, monkeypatch,
                                                                            capsys):
    from diffusers import UNet2DConditionModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pretrain_out, sft_out = tmp_path / "pretrain", tmp_path / "sft"
    with monkeypatch.context() as patch:  # stage 1 (s = 0) must not build a U-Net at all
        patch.setattr(UNet2DConditionModel, "__init__", _refuse)
        assert main(["pretrain", *_common(train_store, "pretrain", pretrain_out), "epochs=5", "lr=2.0e-2",
                     "max_length=96"]) == 0
    first, last = _epoch_means(pretrain_out, steps_per_epoch=3)  # 6 samples, batch 2
    assert last < first - 0.03, (first, last)
    assert (pretrain_out / FINAL_DIR / ADAPTER_FILE).is_file() and not (pretrain_out / FINAL_DIR / LLM_DIR).exists()
    assert "pretrain: 15 steps" in capsys.readouterr().out

    adapter = pretrain_out / FINAL_DIR / ADAPTER_FILE
    assert main(["sft", *_common(train_store, "sft", sft_out), f"pretrained_adapter={adapter}", "epochs=3",
                 "max_length=256", "guidance.prompt_dropout=0.5"]) == 0
    first, last = _epoch_means(sft_out, steps_per_epoch=4)  # 3 image megabatches of 2 + 1 text-only
    assert last < first - 0.1, (first, last)
    assert "sft: 12 steps" in capsys.readouterr().out
    llm_dir = sft_out / FINAL_DIR / LLM_DIR
    assert (sft_out / FINAL_DIR / ADAPTER_FILE).is_file()
    tokenizer = AutoTokenizer.from_pretrained(llm_dir)
    llm = AutoModelForCausalLM.from_pretrained(llm_dir)
    assert tokenizer("a cat").input_ids and llm.config.vocab_size == len(tokenizer)


def test_missing_store_exits_2_naming_the_extract_command(train_store, tmp_path, capsys):
    fields = yaml.safe_load(train_store.extract_yaml.read_text())
    elsewhere = tmp_path / "other.yaml"
    elsewhere.write_text(yaml.safe_dump({**fields, "cache_root": str(tmp_path / "empty-cache")}))
    common = _common(train_store, "pretrain", tmp_path / "out")
    code = main(["pretrain", *common, f"data.extract_configs=[{elsewhere}]"])
    err = capsys.readouterr().err
    assert code == 2 and f"just extract config={elsewhere}" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_sft_without_the_stage1_adapter_exits_2_naming_train_pretrain(train_store, tmp_path, capsys):
    missing = tmp_path / "nowhere" / ADAPTER_FILE
    code = main(["sft", *_common(train_store, "sft", tmp_path / "out"), f"pretrained_adapter={missing}"])
    err = capsys.readouterr().err
    assert code == 2 and str(missing) in err and "just train-pretrain" in err
    assert main(["sft", f"config={DEFAULT_CONFIGS['pretrain']}"]) == 2  # a stage-1 config run as sft
    assert "use `train.cli pretrain`" in capsys.readouterr().err


def test_missing_deepspeed_json_exits_2_before_loading_anything(train_store, tmp_path, capsys):
    missing = tmp_path / "no-such-zero2.json"
    code = main(["pretrain", *_common(train_store, "pretrain", tmp_path / "out"), f"deepspeed_config={missing}"])
    err = capsys.readouterr().err
    assert code == 2 and str(missing) in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("override, message", [
    ("lr=-1", "lr must be > 0"),
    ("model=no-such-llm-dir", "model directory 'no-such-llm-dir' does not exist"),
    ("max_length=8", "max_length (8) must exceed num_image_tokens (16)"),
    ("vision.projector=bogus", "unknown projector 'bogus'"),
])
def test_a_user_mistake_exits_2_with_one_line_naming_it(override, message, train_store, tmp_path, capsys):
    code = main(["pretrain", *_common(train_store, "pretrain", tmp_path / "out"), override])
    err = capsys.readouterr().err  # the last line: before it, maybe the LLM's loading progress bar
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"train pretrain: error: {message}"), err


def test_a_bug_is_not_reported_as_a_setup_error_but_keeps_its_traceback(train_store, tmp_path, monkeypatch,
                                                                         capsys):
    def bug(*args, **kwargs):
        raise KeyError("a bug in our code")

    monkeypatch.setattr("train.cli.check_engine_config", bug)
    with pytest.raises(KeyError, match="a bug in our code"):  # uncaught: Python prints it and exits 1
        main(["pretrain", *_common(train_store, "pretrain", tmp_path / "out")])
    assert "error:" not in capsys.readouterr().err


def test_cached_features_pickle_for_spawned_loader_workers(train_store):
    stores = locate_stores(DataConfig(stores=(str(train_store.path),)))
    source = CachedFeatures(stores, array_ids=[SD_ARRAY, "latents"])
    keys = source.readers[0].keys[:3]
    clone = pickle.loads(pickle.dumps(source))
    assert all(k in clone for k in keys) and "not/a/key.jpg" not in clone
    for array_id, values in source.read(keys, [SD_ARRAY, "latents"]).items():
        np.testing.assert_array_equal(clone.read(keys, [array_id])[array_id], values)
    with pytest.raises(StoreNotFound, match="in none of the stores"):
        CachedFeatures(stores, array_ids=["CLIP-L-2"])


def test_iterating_the_cli_loader_leaves_the_global_torch_rng_untouched(train_store):
    # prompt dropout draws from the global torch RNG, which checkpoints restore; a loader that drew from
    # it on iter() would shift the masks of a run resumed exactly at an epoch boundary
    config = load_stage_config("pretrain", _common(train_store, "pretrain", "unused"))
    tokenizer = load_tokenizer(config.model)
    dataset = LlavaDataset(load_llava_json(train_store.pretrain_json), template="plain", tokenizer=tokenizer,
                           max_length=64, num_image_tokens=4, feature_source=None, array_ids=())
    make_loader = _loader_factory(config, dataset, tokenizer.pad_token_id)
    torch.manual_seed(7)
    expected = torch.rand(4)
    torch.manual_seed(7)
    for _ in range(2):  # two epochs
        assert len(list(make_loader(SeededRandomSampler(len(dataset), seed=0)))) > 0
    assert torch.equal(torch.rand(4), expected)


def test_resume_true_without_a_checkpoint_exits_2_saying_to_drop_it(train_store, tmp_path, capsys):
    code = main(["pretrain", *_common(train_store, "pretrain", tmp_path / "out"), "resume=true"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("train pretrain: error: resume=true, but") and "drop resume=true" in err[-1]


def _train_cli(args):
    """A fresh process: without the rendezvous variables this one's in-process runs have set."""
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE",
                                                            "LOCAL_RANK")}
    return subprocess.Popen([sys.executable, "-m", "train.cli", "pretrain", *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**env, "OMP_NUM_THREADS": "1"},
                            start_new_session=True)


def _steps(out) -> list[int]:
    return [json.loads(line)["step"] for line in (out / METRICS_FILE).read_text().splitlines()]


def test_a_rerun_resumes_a_finished_run_unchanged_and_overwrite_true_starts_over_saying_so(train_store, tmp_path,
                                                                                          capsys):
    out = tmp_path / "out"

    def args(steps: int, *extra: str) -> list[str]:
        return ["pretrain", *_common(train_store, "pretrain", out), f"max_steps={steps}", "save_every=1",
                "keep_checkpoints=0", "report_to=none", *extra]

    assert main(args(3)) == 0
    adapter = (out / FINAL_DIR / ADAPTER_FILE).read_bytes()
    capsys.readouterr()
    assert main(args(3)) == 0  # the same command again: the run directory has checkpoints
    captured = capsys.readouterr()
    assert f"train pretrain: resuming from {out}/checkpoints/step-00000003 (" in captured.err
    assert "nothing left to train" in captured.out and _steps(out) == [1, 2, 3]
    assert (out / FINAL_DIR / ADAPTER_FILE).read_bytes() == adapter

    assert main(args(2, "overwrite=true")) == 0
    assert (f"train pretrain: overwrite=true: starting over, removing the earlier run's checkpoints, final, "
            f"metrics.jsonl, loss.png from {out}") in capsys.readouterr().err
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-00000001", "step-00000002"]
    assert _steps(out) == [1, 2]

    shutil.rmtree(out / "checkpoints")  # a finished run whose checkpoints were deleted
    assert main(args(2)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "holds a finished run (final/) but no checkpoint" in err[-1] and "set overwrite=true" in err[-1]
    assert (out / FINAL_DIR / ADAPTER_FILE).is_file() and _steps(out) == [1, 2]


@pytest.mark.parametrize("where", ["train.cli.build_model", "train.loop.build_engine"])
def test_ctrl_c_while_training_starts_is_one_line_exit_130(where, train_store, tmp_path, monkeypatch, capsys):
    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(where, ctrl_c)  # loading the model; DeepSpeed's engine start (and op build)
    try:
        code = main(["pretrain", *_common(train_store, "pretrain", tmp_path / "out")])
    except KeyboardInterrupt:
        pytest.fail("the Ctrl-C escaped main()")
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "interrupted" in line]
    assert code == 130 and "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("train pretrain: interrupted "), err


def test_ctrl_c_while_the_cli_imports_is_one_line_exit_130(tmp_path, monkeypatch, capsys):
    (tmp_path / "slow_cli.py").write_text("raise KeyboardInterrupt  # as if pressed during `import torch`\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(SystemExit) as exited:
        run_main("slow_cli", prog="train")
    assert exited.value.code == 130
    assert capsys.readouterr().err == "train: interrupted before it started; run the same command to start\n"


def test_sigint_mid_training_is_one_line_exit_130_and_the_same_command_continues_from_the_checkpoint(train_store,
                                                                                                    tmp_path):
    out = tmp_path / "out"
    # a loader worker: Ctrl-C reaches it too (train.cli._ignore_ctrl_c)
    args = [*_common(train_store, "pretrain", out), "save_every=3", "epochs=40", "report_to=none",
            "data.num_workers=1"]
    proc = _train_cli(args)
    try:
        deadline = time.time() + 240
        while proc.poll() is None and time.time() < deadline:  # past the first checkpoint (step 3)
            metrics = out / METRICS_FILE
            if metrics.is_file() and len(metrics.read_text().splitlines()) >= 5:
                break
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the trainer and its loader worker
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if "interrupted" in line]
    assert len(lines) == 1 and lines[0].startswith("train pretrain: interrupted at step "), stderr
    assert "; run the same command to resume from step-" in lines[0] and "pretrain: " in stdout
    resumed = _train_cli(args)  # `python -m train.cli`: train.cli imported by stages.errors.run_main
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    assert "train pretrain: resuming from " in stderr
    assert _steps(out) == list(range(1, 121))  # 6 samples, batch 2: 3 steps x 40 epochs, each logged once
