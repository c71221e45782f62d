"""Two training ranks on one CPU machine (torchrun, gloo, `DS_ACCELERATOR=cpu`), against one rank.

One `torchrun --standalone --nproc_per_node 2` launch runs, in the same two processes: pretraining
(micro-batch 2), SFT with question guidance on image samples (micro-batch 2, 4 steps, checkpoints
every 2), the same SFT resumed from its step-2 checkpoint (the run as a SIGKILL after that checkpoint
leaves it), and SFT on image and text-only samples, whose second step of each epoch gives one rank
images and the other text only. The references are single-rank runs in this process with micro-batch 2 x
accumulation 2: the same global batch, so the same losses. Prompt dropout is 0: each rank draws it
from its own RNG, so with dropout the masks are equal in distribution only.
"""
import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from train.cli import main
from train.config import REPO, load_stage_config
from train.sampler import make_sampler
from train.data import LlavaDataset
from train.metrics import METRICS_FILE
from train.model import load_tokenizer
from stages.llava import load_llava_json
from stages.serving import CachedFeatures
from train.stores import locate_stores

pytestmark = pytest.mark.slow

# Runs each entry of argv[1] (JSON) in turn: {"argv": [...]} is `train.cli.main(argv)`; {"cut": [src, dst,
# step]} copies run src to dst as it stood after checkpoint `step` (rank 0, then a barrier).
LAUNCHED = textwrap.dedent("""
    import json, shutil, sys
    from pathlib import Path
    from train.cli import main
    from train.engine import barrier, is_main_process
    for entry in json.loads(sys.argv[1]):
        if "argv" in entry:
            code = main(entry["argv"])
            if code:
                sys.exit(code)
            continue
        src, dst, step = Path(entry["cut"][0]), Path(entry["cut"][1]), entry["cut"][2]
        if is_main_process():
            shutil.copytree(src, dst)
            for checkpoint in (dst / "checkpoints").glob("step-*"):
                if int(checkpoint.name.split("-")[1]) > step:
                    shutil.rmtree(checkpoint)
            (dst / "checkpoints" / "latest").write_text(f"step-{step:08d}")
        barrier()
""")


def common(store, run, out, **extra):
    """`train.cli` arguments of `run`: pretrain, sft (image samples only: every step one modality) or
    sft-mixed (image and text-only samples, 2 steps per epoch), micro-batch 2, 4 steps."""
    stage = run.split("-")[0]
    data = {"pretrain": store.pretrain_json, "sft": store.sft_json.with_name("sft-images.json"),
            "sft-mixed": store.sft_json}[run]
    values = {"data.extract_configs": f"[{store.extract_yaml}]", "data.data_path": data, "output_dir": out,
              "per_device_batch_size": 2, "pretrained_adapter": "", "max_length": 256, "report_to": "none",
              "data.num_workers": 0, "epochs": 2 if run == "sft-mixed" else 4, "save_every": 2,
              "keep_checkpoints": 0, **({"guidance.scale": 4, "guidance.prompt_dropout": 0} if stage == "sft" else {}),
              **extra}
    return [stage, *(f"{k}={v}" for k, v in values.items())]


def losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / METRICS_FILE).read_text().splitlines()]


@pytest.fixture(scope="module")
def two_ranks(train_store, tmp_path_factory):
    """The runs of the two-rank launch: {"pretrain", "sft", "resumed"} -> output directory."""
    root = tmp_path_factory.mktemp("two-ranks")
    images = [r for r in json.loads(train_store.sft_json.read_text()) if "image" in r]
    train_store.sft_json.with_name("sft-images.json").write_text(json.dumps(images))
    runs = {name: root / name for name in ("pretrain", "sft", "resumed", "sft-mixed")}
    plan = [{"argv": common(train_store, "pretrain", runs["pretrain"])},
            {"argv": common(train_store, "sft", runs["sft"])},
            {"cut": [str(runs["sft"]), str(runs["resumed"]), 2]},
            {"argv": common(train_store, "sft", runs["resumed"], resume="true")},
            {"argv": common(train_store, "sft-mixed", runs["sft-mixed"])}]
    script = root / "launched.py"
    script.write_text(LAUNCHED)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(script), json.dumps(plan)], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    return runs


@pytest.mark.parametrize("run", ["pretrain", "sft", "sft-mixed"])
def test_two_ranks_of_micro_batch_2_give_the_losses_of_one_rank_with_accumulation_2(run, two_ranks, train_store,
                                                                                     tmp_path):
    assert main(common(train_store, run, tmp_path, gradient_accumulation_steps=2, save_every=0)) == 0
    two, one = losses(two_ranks[run]), losses(tmp_path)
    assert len(two) == len(one) == 4
    assert two == pytest.approx(one, rel=1e-5, abs=1e-5)


def test_two_rank_checkpoint_resumes_on_two_ranks_with_the_uninterrupted_losses(two_ranks):
    assert losses(two_ranks["resumed"]) == pytest.approx(losses(two_ranks["sft"]), rel=1e-6, abs=1e-6)


def test_rank_0_alone_writes_metrics_and_final_artefacts(two_ranks):
    run = two_ranks["sft"]
    steps = [json.loads(line)["step"] for line in (run / METRICS_FILE).read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # one line per step: rank 1 appended none
    assert (run / "final" / "adapter.safetensors").is_file() and (run / "final" / "llm").is_dir()
    assert sorted(p.name for p in (run / "checkpoints" / "step-00000002").glob("rng-rank*.json")) == [
        "rng-rank0.json", "rng-rank1.json"]


def test_resuming_a_two_rank_checkpoint_on_one_rank_is_refused_naming_the_world_size(two_ranks, train_store, capsys):
    code = main(common(train_store, "sft", two_ranks["resumed"], resume="true"))
    assert code == 2
    assert "world size" in capsys.readouterr().err


def test_ranks_read_disjoint_micro_batches_whose_union_is_the_single_rank_step(train_store):
    """Each step, rank r's micro-batch is the r-th of the step's global batch as one rank with accumulation 2
    reads it; ranks never share a sample within an epoch; modality grouping is global (same megabatches)."""
    config = load_stage_config("sft", common(train_store, "sft-mixed", "unused")[1:])
    source = CachedFeatures(locate_stores(config.data), array_ids=["U-L1-R1-B0-Cross-Q@t50", "latents"])
    dataset = LlavaDataset(load_llava_json(config.data.data_path), template=config.template,
                           tokenizer=load_tokenizer(config.model), max_length=256, num_image_tokens=16,
                           feature_source=source, array_ids=["U-L1-R1-B0-Cross-Q@t50"])
    for epoch in range(2):
        ranks = [make_sampler(config, dataset, world_size=2, rank=r) for r in range(2)]
        one = make_sampler(dataclasses.replace(config, gradient_accumulation_steps=2), dataset, world_size=1, rank=0)
        for sampler in (*ranks, one):
            sampler.set_epoch(epoch)
        orders = [sampler.rank_order() for sampler in ranks]
        assert not set(orders[0]) & set(orders[1])
        single = one.rank_order()
        for step in range(len(orders[0]) // 2):
            micro = [order[2 * step:2 * step + 2] for order in orders]
            assert micro[0] + micro[1] == single[4 * step:4 * step + 4]
