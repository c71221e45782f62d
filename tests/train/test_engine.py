"""The DeepSpeed ZeRO-2 loop end to end on CPU (gloo, fp32): real tiny Llama, dataset, collate, sampler.

Features come from an in-memory feature source (`stages.serving.FeatureSource`, as the dataset reads it) with fixed
seeded arrays, so the tests need no extraction. DeepSpeed initialises torch.distributed once per
process; each `train()` call builds a new engine (~1-2 s), so the engine count is kept small.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from train.batch import collate
from train.config import DataConfig, TrainConfig, VisionConfig
from train.data import LlavaDataset
from train.engine import CHECKPOINTS_DIR, cosine_with_warmup, deepspeed_config, op_build_env, seed_everything
from train.loop import TrainingInterrupted, train
from train.metrics import LOSS_PLOT, METRICS_FILE, TENSORBOARD_DIR, WANDB_DIR
from train.model import ADAPTER_FILE, LLM_DIR, build_model
from train.resume import FINAL_DIR
from train.sampler import ModalityLengthGroupedSampler, SeededRandomSampler
from train.trackers import wandb_offline_reason

SD, CLIP = "U-L1-R1-B0-Cross-Q@t50", "clip"
DIMS = {SD: 12, CLIP: 10}
TOKENS = 4  # image tokens per sample, both arrays
CAPTIONS = ["a cat on a red sofa", "two dogs playing with a ball in a park", "a plate of food with rice",
            "a train at a station", "a man in a suit talking on a phone", "a boat on a lake",
            "a clock tower in a town square", "a bowl of fruit on a table"]


class MemoryFeatures:
    """A feature source over fixed arrays: `{key: {array_id: (T, C)}}`."""

    def __init__(self, keys: list[str], *, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.arrays = {k: {a: rng.standard_normal((TOKENS, c)).astype(np.float16) for a, c in DIMS.items()}
                       for k in keys}

    def __contains__(self, key: object) -> bool:
        return key in self.arrays

    def read(self, keys: list[str], array_ids: list[str]) -> dict[str, np.ndarray]:
        return {a: np.stack([self.arrays[k][a] for k in keys]) for a in array_ids}


def _records(text_only: int = 0) -> list[dict]:
    image = [{"id": str(i), "image": f"img/{i:03d}.jpg", "conversations": [
        {"from": "human", "value": "<image>\nWhat is in the image?"}, {"from": "gpt", "value": caption}]}
        for i, caption in enumerate(CAPTIONS)]
    text = [{"id": f"t{i}", "conversations": [{"from": "human", "value": "What time of day is it?"},
                                              {"from": "gpt", "value": "It is late afternoon."}]}
            for i in range(text_only)]
    return image + text


@pytest.fixture(scope="module")
def llm_dir() -> str:
    from stages.embedded import resolve_model

    return resolve_model("embedded:tiny-llm")


@pytest.fixture(scope="module")
def tokenizer(llm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(llm_dir)


def _config(llm_dir: str, tmp_path, **kwargs) -> TrainConfig:
    vision = VisionConfig(sd_array=SD, clip_array=CLIP, xattn_heads=2, **kwargs.pop("vision", {}))
    base = dict(model=llm_dir, vision=vision, data=DataConfig(), max_length=64, per_device_batch_size=2,
                output_dir=str(tmp_path), deepspeed_config="configs/deepspeed/zero2.json", precision="fp32")
    return TrainConfig(**{**base, **kwargs})


def _dataset(config: TrainConfig, tokenizer, records: list[dict]) -> LlavaDataset:
    keys = [r["image"] for r in records if "image" in r]
    return LlavaDataset(records, template="plain" if config.stage == "pretrain" else "v1", tokenizer=tokenizer,
                        max_length=config.max_length, num_image_tokens=TOKENS, feature_source=MemoryFeatures(keys),
                        array_ids=config.vision.array_ids)


def _run(config: TrainConfig, dataset: LlavaDataset, tokenizer, *, sampler=None, **kwargs):
    seed_everything(config.seed)  # the adapter's initial weights
    model = build_model(config, feature_dims=DIMS)
    sampler = sampler or SeededRandomSampler(len(dataset), seed=config.seed)
    make_loader = lambda s: DataLoader(dataset, sampler=s, batch_size=config.per_device_batch_size,  # noqa: E731
                                       collate_fn=functools.partial(collate, pad_token_id=tokenizer.pad_token_id))
    return model, train(config=config, model=model, sampler=sampler, make_loader=make_loader, **kwargs)


def test_a_venv_builds_deepspeed_ops_into_itself_with_its_ninja_unless_told_otherwise():
    venv, bin_dir = "/work/.venv", "/work/.venv/bin"
    assert op_build_env({"PATH": "/usr/bin:/bin"}, prefix=venv, base_prefix="/usr") == {
        "TORCH_EXTENSIONS_DIR": "/work/.venv/torch-extensions", "PATH": f"{bin_dir}:/usr/bin:/bin"}
    assert op_build_env({"PATH": f"/usr/bin:{bin_dir}", "TORCH_EXTENSIONS_DIR": "/x"}, prefix=venv,
                        base_prefix="/usr") == {}  # the user's choices stand
    assert op_build_env({}, prefix="/usr", base_prefix="/usr") == {}  # not a venv: torch's defaults


def test_runs_not_launched_need_no_port_and_processes_they_start_are_worlds_of_their_own():
    """A world of one rendezvouses inside its process. A TCP store on a port picked free and bound later lost
    it to a sweep's other run starting on the same host (EADDRINUSE). Here MASTER_PORT, left in the shell by
    some launcher, names a port another process holds, and the run then starts a second one (as a sweep's
    driver or a Ray worker would), which must not join the first one's world."""
    world = ("import torch; from train.engine import ensure_distributed; ensure_distributed(); "
             "t = torch.ones(2); torch.distributed.all_reduce(t); print(torch.distributed.get_world_size(), t.tolist())")
    script = f"{world}; import subprocess, sys; subprocess.run([sys.executable, '-c', {world!r}], check=True)"
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(held.getsockname()[1]))
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [line for line in done.stdout.splitlines() if line.startswith("1 ")] == ["1 [1.0, 1.0]"] * 2


def test_cosine_schedule_warms_up_then_decays_to_zero():
    factor = cosine_with_warmup(total_steps=10, warmup_steps=2)
    assert [round(factor(s), 6) for s in (0, 1, 2, 6, 10)] == [0.0, 0.5, 1.0, 0.5, 0.0]


def test_deepspeed_config_fills_auto_and_rejects_conflicts(llm_dir, tmp_path):
    ds = deepspeed_config(_config(llm_dir, tmp_path, gradient_accumulation_steps=3, max_grad_norm=0.5))
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["gradient_clipping"],
            ds["bf16"]["enabled"], ds["zero_optimization"]["stage"]) == (2, 3, 0.5, False, 2)
    fixed = tmp_path / "fixed.json"
    fixed.write_text(json.dumps({"gradient_accumulation_steps": 4, "zero_optimization": {"stage": 2}}))
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        deepspeed_config(_config(llm_dir, tmp_path, deepspeed_config=str(fixed)))


def _board(logdir) -> dict[str, list[tuple[int, float]]]:
    """The scalars of an event directory as TensorBoard reads them: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logdir)).Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _wandb_records(run_dir) -> list[dict]:
    """The records of an offline wandb run as wandb's own reader prints them (`wandb leet inspect --json`)."""
    out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(run_dir)], check=True,
                         capture_output=True, text=True, timeout=120).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def _float32(value: float) -> float:
    return float(np.float32(value))  # TensorBoard stores scalars as float32


@pytest.mark.parametrize("report_to", ["tensorboard", "wandb", "none"])
def test_the_tracker_report_to_names_logs_every_metrics_jsonl_value_and_the_run_ends_with_a_loss_plot(
        report_to, llm_dir, tokenizer, tmp_path, monkeypatch, capsys):
    from PIL import Image

    for name in ("WANDB_MODE", "WANDB_API_KEY"):  # no key: offline by default, whatever the network
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    config = _config(llm_dir, tmp_path, max_steps=2, report_to=report_to)
    _run(config, _dataset(config, tokenizer, _records()), tokenizer)
    logged = [json.loads(line) for line in (tmp_path / METRICS_FILE).read_text().splitlines()]
    expected = {f"train/{key}": [(m["step"], m[key]) for m in logged] for key in logged[0] if key != "step"}
    assert [m["step"] for m in logged] == [1, 2]
    if report_to == "tensorboard":
        assert _board(tmp_path / TENSORBOARD_DIR) == {tag: [(s, _float32(v)) for s, v in points]
                                                      for tag, points in expected.items()}
    elif report_to == "wandb":
        (run_dir,) = (tmp_path / WANDB_DIR).glob("offline-run-*")
        assert f"wandb: offline run in {run_dir}" in capsys.readouterr().err
        records = _wandb_records(run_dir)
        history = [r["history"]["item"] for r in records if r["type"] == "history"]
        assert {tag: [(h["_step"], h[tag]) for h in history] for tag in expected} == expected
        (run,) = [r["run"] for r in records if r["type"] == "run"]
        assert (run["config"]["update"]["report_to"], run["config"]["update"]["lr"]) == ("wandb", config.lr)
    if report_to != "tensorboard":
        assert not (tmp_path / TENSORBOARD_DIR).exists()
    if report_to != "wandb":
        assert not (tmp_path / WANDB_DIR).exists()
    with Image.open(tmp_path / LOSS_PLOT) as plot:
        assert plot.format == "PNG" and plot.width > 100


def test_wandb_goes_offline_without_a_key_or_a_server_and_leaves_wandb_mode_to_wandb(tmp_path):
    no_login = {"NETRC": str(tmp_path / "no-netrc")}
    assert wandb_offline_reason({**no_login, "WANDB_MODE": "online"}) is None
    assert "no W&B API key" in wandb_offline_reason(no_login)
    unreachable = {**no_login, "WANDB_API_KEY": "x" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9"}
    assert "127.0.0.1:9 cannot be reached" in wandb_offline_reason(unreachable, timeout=1)


def test_pretrain_leaves_llm_bit_identical_and_loss_decreases(llm_dir, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    # 8 samples, 2 steps per epoch, 10 epochs: an epoch's mean loss is over the same samples every time.
    # A frozen random tiny LLM leaves the projector little room: ~6.41 -> ~6.23 (ln(vocab) = 6.39).
    config = _config(llm_dir, tmp_path, stage="pretrain", lr=1e-2, epochs=10, per_device_batch_size=4,
                     save_every=8, keep_checkpoints=0)
    dataset = _dataset(config, tokenizer, _records())
    model, history = _run(config, dataset, tokenizer)
    assert len(history) == 20
    first, last = np.mean([m.loss for m in history[:2]]), np.mean([m.loss for m in history[-2:]])
    assert last < first - 0.1, [round(m.loss, 3) for m in history]
    original = AutoModelForCausalLM.from_pretrained(llm_dir).state_dict()
    for name, value in model.llm.state_dict().items():
        assert torch.equal(value, original[name]), f"pretrain changed LLM weight {name}"
    checkpoint = tmp_path / CHECKPOINTS_DIR / "step-00000008"
    assert (checkpoint / ADAPTER_FILE).is_file() and not (checkpoint / LLM_DIR).exists()
    ds_bytes = sum(f.stat().st_size for f in (checkpoint / "deepspeed").rglob("*") if f.is_file())
    llm_bytes = sum(v.numel() * v.element_size() for v in original.values())
    assert ds_bytes < llm_bytes / 2, "frozen LLM weights were written into the DeepSpeed checkpoint"

    # resume from the step-8 checkpoint alone (frozen weights excluded from it) in a fresh directory
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(checkpoint, resumed_dir / CHECKPOINTS_DIR / checkpoint.name)
    (resumed_dir / CHECKPOINTS_DIR / "latest").write_text(checkpoint.name)
    resumed_model, resumed = _run(dataclasses.replace(config, output_dir=str(resumed_dir), resume=True),
                                  dataset, tokenizer)
    assert [m.loss for m in resumed] == [m.loss for m in history[8:]]
    assert all(torch.equal(v, original[k]) for k, v in resumed_model.llm.state_dict().items())


def test_ctrl_c_stops_training_after_the_step_and_never_raises_where_it_lands(llm_dir, tokenizer, tmp_path):
    # CI saw a run go on to its last step: the KeyboardInterrupt was raised inside logging's at-fork lock
    # release as the DataLoader forked its worker, where Python prints it and drops it. Here the signal
    # lands in a loader start-up that drops it the same way.
    config = _config(llm_dir, tmp_path, stage="pretrain", epochs=4, per_device_batch_size=4, save_every=0)
    dataset = _dataset(config, tokenizer, _records())
    model = build_model(config, feature_dims=DIMS)
    dropped = []

    def make_loader(sampler):
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt as exc:
            dropped.append(exc)  # as the at-fork callback does
        return DataLoader(dataset, sampler=sampler, batch_size=config.per_device_batch_size,
                          collate_fn=functools.partial(collate, pad_token_id=tokenizer.pad_token_id))

    with pytest.raises(TrainingInterrupted) as stopped:
        train(config=config, model=model, sampler=SeededRandomSampler(len(dataset), seed=0), make_loader=make_loader)
    assert (stopped.value.step, stopped.value.total, dropped) == (1, 8, [])
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_second_ctrl_c_stops_at_once():
    from train.loop import _CtrlC

    ctrl_c = _CtrlC()
    try:
        signal.raise_signal(signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    finally:
        ctrl_c.restore()


class _Crash(RuntimeError):
    pass


def _noisy_hook(*, crash_at: int = 0, seen: list | None = None):
    """A prepare_features hook drawing from the torch, numpy and python RNGs (as prompt dropout would);
    it dies on micro-batch `crash_at` (1-based) like a killed job and records batch modalities in `seen`."""
    calls = {"n": 0}

    def prepare(batch):
        calls["n"] += 1
        if calls["n"] == crash_at:
            raise _Crash(f"simulated crash at micro-batch {crash_at}")
        if seen is not None:
            seen.append(bool(batch.has_image.any()))
        scale = (1 + 0.1 * np.random.rand()) * (1 + 0.1 * random.random())
        return {k: v * scale * (1 + 0.1 * torch.rand(len(v), 1, 1)) for k, v in batch.features.items()}
    return prepare


def test_rerun_after_crash_resumes_and_matches_uninterrupted_run_bit_for_bit(llm_dir, tokenizer, tmp_path):
    # SFT (LLM + adapter train) on 8 image + 4 text-only samples, modality-grouped megabatches of 4,
    # 2 micro-batches of 2 per step -> 3 steps per epoch, one of them text-only. The checkpoint at
    # step 4 is mid-epoch; the crash hits step 5; the same run again (no resume=true: the run
    # directory has a checkpoint) redoes steps 5 and 6.
    records = _records(text_only=4)
    base = dict(stage="sft", lr=1e-3, max_steps=6, gradient_accumulation_steps=2, save_every=4, weight_decay=0.1,
                max_length=256, keep_checkpoints=1)

    def sampler(dataset):
        return ModalityLengthGroupedSampler(dataset.modality_lengths, batch_size=4, seed=0)

    seen_images: list[bool] = []
    ref_config = _config(llm_dir, tmp_path / "ref", **base)
    dataset = _dataset(ref_config, tokenizer, records)
    _, reference = _run(ref_config, dataset, tokenizer, sampler=sampler(dataset),
                        prepare_features=_noisy_hook(seen=seen_images))
    assert [m.step for m in reference] == [1, 2, 3, 4, 5, 6] and False in seen_images[6:]

    config = _config(llm_dir, tmp_path / "run", **base)
    with pytest.raises(_Crash):
        _run(config, dataset, tokenizer, sampler=sampler(dataset), prepare_features=_noisy_hook(crash_at=9))
    assert (tmp_path / "run" / CHECKPOINTS_DIR / "latest").read_text() == "step-00000004"
    # TensorBoard orders event files by the whole-second timestamp that starts their names, then by a
    # per-process counter compared as text; a real resume starts seconds after the crash, so do the same
    time.sleep(1.0 - time.time() % 1.0 + 0.01)
    _, resumed = _run(config, dataset, tokenizer, sampler=sampler(dataset), prepare_features=_noisy_hook())

    assert [m.step for m in resumed] == [5, 6]
    assert [p.name for p in (tmp_path / "run" / CHECKPOINTS_DIR).glob("step-*")] == ["step-00000006"]
    assert [(m.loss, m.grad_norm, m.lr) for m in resumed] == [(m.loss, m.grad_norm, m.lr) for m in reference[4:]]
    logged = [json.loads(line) for line in (tmp_path / "run" / METRICS_FILE).read_text().splitlines()]
    assert [m["step"] for m in logged] == [1, 2, 3, 4, 5, 6]
    assert [m["loss"] for m in logged] == [m.loss for m in reference]
    assert _board(tmp_path / "run" / TENSORBOARD_DIR)["train/loss"] == [(m.step, _float32(m.loss)) for m in reference]
    for part in (ADAPTER_FILE, f"{LLM_DIR}/model.safetensors"):
        a, b = load_file(str(tmp_path / "ref" / FINAL_DIR / part)), load_file(str(tmp_path / "run" / FINAL_DIR / part))
        assert all(torch.equal(a[k], b[k]) for k in a), part


@pytest.mark.parametrize("change", [{"gradient_accumulation_steps": 2}, {"max_steps": 3},
                                    {"per_device_batch_size": 4}, {"lr": 2e-3}])
def test_a_rerun_refuses_a_checkpoint_written_with_other_batch_schedule_or_config_settings(change, llm_dir,
                                                                                          tokenizer, tmp_path):
    config = _config(llm_dir, tmp_path, stage="pretrain", max_steps=2, save_every=1)
    dataset = _dataset(config, tokenizer, _records())
    _run(config, dataset, tokenizer)
    field = {"max_steps": "total_steps"}.get(next(iter(change)), next(iter(change)))
    with pytest.raises(ValueError, match=f"cannot resume .* {field}=.*overwrite=true"):  # resumed without resume=true
        _run(dataclasses.replace(config, **change), dataset, tokenizer)
    assert [json.loads(line)["step"] for line in (tmp_path / METRICS_FILE).read_text().splitlines()] == [1, 2]


def _poison_hook(*, at_call: int):
    """Feature hook that turns one batch's SD features into NaN on its `at_call`-th call (1-based)."""
    calls = []

    def prepare(batch):
        calls.append(1)
        features = dict(batch.features)
        if len(calls) == at_call:
            features[SD] = torch.full_like(features[SD], float("nan"))
        return features
    return prepare


def test_a_non_finite_loss_stops_the_run_naming_step_keys_and_array(llm_dir, tokenizer, tmp_path):
    from train.loop import NonFiniteLoss

    config = _config(llm_dir, tmp_path / "run", max_steps=3, save_every=1)
    dataset = _dataset(config, tokenizer, _records())
    with pytest.raises(NonFiniteLoss, match=r"non-finite loss at step 2, batch with image keys \['img/") as info:
        _run(config, dataset, tokenizer, prepare_features=_poison_hook(at_call=2))
    assert SD in str(info.value) and "verify" in str(info.value)
    assert not (tmp_path / "run" / FINAL_DIR).exists()  # nothing is saved as if the run had finished
    logged = [json.loads(line)["step"] for line in (tmp_path / "run" / METRICS_FILE).read_text().splitlines()]
    assert logged == [1]


def test_skipping_non_finite_batches_counts_them_and_keeps_the_weights_finite(llm_dir, tokenizer, tmp_path):
    config = _config(llm_dir, tmp_path / "run", max_steps=3, gradient_accumulation_steps=2,
                     on_nonfinite="skip")
    dataset = _dataset(config, tokenizer, _records())
    model, history = _run(config, dataset, tokenizer, prepare_features=_poison_hook(at_call=3))
    assert [m.skipped for m in history] == [0, 1, 0]
    assert all(np.isfinite(m.loss) and np.isfinite(m.grad_norm) for m in history)
    weights = load_file(str(tmp_path / "run" / FINAL_DIR / ADAPTER_FILE))
    assert all(bool(torch.isfinite(w).all()) for w in weights.values())
