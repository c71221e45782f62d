"""`python -m train.cli {pretrain,sft} --dry-run` (train.plan) against what a run does.

Steps are those of the real runs in test_cli.py; tokens come from the collate and the model's own
splice; the guided pass's GFLOP from a FlopCounterMode count of `prompted_features` on real weights.
"""
import functools
import json

import numpy as np
import pytest
import torch

from stages.flops import ComputeBudget, count_gflop
from stages.serving import load_encoder, prompted_features
from train.cli import main
from train.config import load_stage_config
from train.batch import collate
from train.data import LlavaDataset
from train.model import load_llm, load_tokenizer, splice_image_tokens
from train.plan import plan_training
from stages.serving import CachedFeatures
from train.stores import locate_stores

SD_ARRAY = "U-L1-R1-B0-Cross-Q@t50"


def overrides(store, stage, tmp_path, *extra):
    data = store.pretrain_json if stage == "pretrain" else store.sft_json
    return [f"data.extract_configs=[{store.extract_yaml}]", f"data.data_path={data}", f"output_dir={tmp_path}",
            "per_device_batch_size=2", "pretrained_adapter=", "max_length=256", *extra]


def spliced_tokens(config, source):
    """Attended positions per sample after the model's splice (what `LlavaOutput.tokens` counts)."""
    tokenizer = load_tokenizer(config.model)
    dataset = LlavaDataset(json.loads(open(config.data.data_path).read()), template=config.template,
                           tokenizer=tokenizer, max_length=config.max_length, num_image_tokens=16,
                           feature_source=source, array_ids=[SD_ARRAY])
    counts = []
    for i in range(len(dataset)):
        batch = collate([dataset[i]], pad_token_id=tokenizer.pad_token_id)
        features = batch.features.get(SD_ARRAY)
        _, _, mask = splice_image_tokens(embeds=torch.zeros(*batch.input_ids.shape, 8), input_ids=batch.input_ids,
                                         labels=batch.labels, attention_mask=batch.attention_mask,
                                         image_tokens=None if features is None else torch.zeros(1, 16, 8),
                                         max_length=config.max_length)
        counts.append(int(mask.sum()))
    return np.asarray(counts, float)


def test_sft_plan_counts_steps_tokens_bytes_and_the_guided_pass_as_a_run_does(train_store, tmp_path):
    config = load_stage_config("sft", overrides(train_store, "sft", tmp_path, "epochs=3", "guidance.scale=4",
                                                "guidance.prompt_dropout=0.25"))
    plan = plan_training(config, world_size=1, budget=ComputeBudget())
    # test_cli's run of this data: 3 image megabatches of 2 + 1 text-only per epoch, 12 steps
    assert (plan.steps["per_epoch"], plan.steps["total"]) == (4, 12)
    assert (plan.samples["image"], plan.samples["text_only"]) == (6, 2)

    source = CachedFeatures(locate_stores(config.data), array_ids=[SD_ARRAY, "latents"])
    tokens = spliced_tokens(config, source)
    assert plan.tokens_per_sample["mean"] == pytest.approx(tokens.mean())
    llm = load_llm(config.model)
    params = sum(p.numel() for p in llm.parameters()) - (
        0 if llm.get_input_embeddings().weight is llm.get_output_embeddings().weight
        else llm.get_input_embeddings().weight.numel())
    assert plan.parameters["llm"] == params
    assert plan.gflop_per_sample["llm"] == pytest.approx(6 * params * tokens.mean() / 1e9)

    # stored bytes per image sample: the SD array (16 x C float16) and the latents (4 x 16 x 16 float32), each + crc32c
    channels = source.sample_shape(SD_ARRAY)[-1]
    per_image = 16 * channels * 2 + 4 + 4 * 16 * 16 * 4 + 4
    assert plan.bytes_read_per_epoch == 6 * per_image  # the epoch's 8 samples, 6 with an image

    from torch.nn.attention import SDPBackend, sdpa_kernel  # the CPU flash kernel is not counted (test_plan.py)

    encoder = load_encoder(source.spec_of(SD_ARRAY), device=torch.device("cpu"), with_vae=False)
    key = source.readers[0].keys[0]
    latents = torch.from_numpy(source.read([key], ["latents"])["latents"])  # (1, 4, 16, 16)
    run = functools.partial(prompted_features, encoder, SD_ARRAY, latents, [key])
    run(["warm up"])
    with sdpa_kernel(SDPBackend.MATH):
        counted = count_gflop(lambda: run(["what is in the picture?"]))
    assert plan.gflop_per_sample["diffusion"] == pytest.approx(0.75 * counted * 6 / 8, rel=1e-6)
    assert plan.gflop_per_sample["diffusion_naive"] > 4 * plan.gflop_per_sample["diffusion"]


def test_pretrain_dry_run_on_two_ranks_prices_a_frozen_llm_and_no_diffusion(train_store, tmp_path, capsys):
    first, *rest = overrides(train_store, "pretrain", tmp_path, "epochs=2")
    code = main(["pretrain", "--dry-run", first, "--world-size", "2", *rest])  # overrides and flags in any order
    assert code == 0, capsys.readouterr().err
    out = tmp_path / "train-pretrain-plan.json"  # in output_dir, not in the working directory
    plan = json.loads(out.read_text())
    assert plan["steps"] == {"per_epoch": 1, "total": 2, "epochs": 2.0, "global_batch": 4, "micro_batch": 2,
                             "accumulation": 1}  # 6 samples, 2 ranks x 2: one whole step per epoch
    assert plan["gflop_per_sample"]["llm_factor"] == 4 and plan["gflop_per_sample"]["diffusion"] == 0
    assert plan["gflop"]["total"] == pytest.approx(plan["gflop"]["llm"] + plan["gflop"]["adapter"])
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # nothing else: a later run starts from step 0
    printed = capsys.readouterr().out
    assert "GPU-hours" in printed and f"wrote {out}" in printed
