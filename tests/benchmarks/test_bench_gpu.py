"""`just bench-gpu` at reduced size on the CPU: the report's rows and fields, FLOPs that agree with the
planner's meta-device counts, and a sweep that stops at the first CUDA out-of-memory error."""
import json
import time
from dataclasses import replace

import pytest
import torch

from benchmarks.bench_gpu import main
from benchmarks.throughput import known_gpu, sweep
from stages.cache_spec import cache_spec_from_yaml
from stages.locations import REPO
from stages.models import resolve_model_dir

PEAK = 0.5  # TFLOP/s given with --peak-tflops: a CPU has no table entry


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-gpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models gain nothing from a second thread, and a busy machine slows them
    try:
        main(["--resolution", "64", "--batches", "1", "2", "--repeats", "1", "--warmup", "0", "--llm-seq", "16",
              "--peak-tflops", str(PEAK), "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    return json.loads((out / "gpu.json").read_text()), (out / "gpu.md").read_text()


def test_cpu_run_is_reduced_size_fp32_with_a_row_per_batch_size_of_each_workload(result):
    payload, table = result
    assert payload["device"]["type"] == "cpu" and payload["device"]["peak_tflops"] == PEAK
    assert payload["settings"]["size"] == "tiny" and payload["settings"]["dtype"] == "torch.float32"
    assert set(payload["extraction"]) == {"sd21", "sdxl"}
    for name, extraction in payload["extraction"].items():
        assert extraction["resolution"] == 64 and extraction["attention"] == ["AttnProcessor2_0"]
        assert [r["batch"] for r in extraction["rows"]] == [1, 2] and extraction["stopped"] == "largest batch 2 done"
        for row in extraction["rows"]:
            assert row["peak_memory_gib"] is None  # no CUDA allocator to ask
            for part in ("", "vae_", "unet_"):
                assert row[f"{part}images_per_s"] > 0
                gflop = extraction["gflop_per_image"][part.rstrip("_") or "total"]
                assert row[f"{part}tflops"] == pytest.approx(gflop * row[f"{part}images_per_s"] / 1e3)
                assert row[f"{part}fraction_of_peak"] == pytest.approx(row[f"{part}tflops"] / PEAK)
        assert f"**{name}** (embedded:tiny-" in table
    llm = payload["llm"]
    assert llm["model"] == "embedded:tiny-llm" and llm["sequence_length"] == 16 and llm["attention"] == "sdpa"
    assert [r["batch"] for r in llm["rows"]] == [1, 2] and all(r["tokens_per_s"] > 0 for r in llm["rows"])
    assert table.count("\n| 1 |") == 3 and table.count("\n| 2 |") == 3


def test_counted_flops_are_the_planners_for_the_same_spec(result):
    """The U-Net pass of the SDXL sample spec is two halves (unconditional + caption) and the caption through
    both text encoders: `EncoderKind.image_gflop`'s parts, counted there on the meta device."""
    payload, _ = result
    for name, extraction in payload["extraction"].items():
        spec = cache_spec_from_yaml(REPO / extraction["config"])[0]
        spec = replace(spec, resolution=64)
        planned = spec.kind.image_gflop(spec, resolve_model_dir(spec.model))
        counted = extraction["gflop_per_image"]
        assert counted["vae"] == pytest.approx(planned["vae_encode"], rel=1e-9)
        assert counted["unet"] == pytest.approx(planned["unet"] + planned["text_encoder"], rel=1e-9), name
        assert (planned["text_encoder"] > 0) == (name == "sdxl")


def test_sweep_stops_at_the_first_out_of_memory_and_at_the_deadline():
    def measure(batch):
        if batch > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return {"batch": batch}

    device = torch.device("cpu")
    rows, stopped = sweep(measure, [1, 2, 4, 8], deadline=time.monotonic() + 60, device=device)
    assert rows == [{"batch": 1}, {"batch": 2}] and stopped == "out of memory at batch 4"
    rows, stopped = sweep(measure, [1, 2], deadline=time.monotonic() - 1, device=device)
    assert rows == [] and stopped == "time budget spent before batch 1"


@pytest.mark.parametrize("name, key", [("NVIDIA H100 80GB HBM3", "h100-sxm"), ("NVIDIA H100 PCIe", "h100-pcie"),
                                       ("NVIDIA H200", "h200"), ("NVIDIA A100-SXM4-80GB", "a100"),
                                       ("NVIDIA L40S", "l40s"), ("NVIDIA H100 NVL", None), ("Tesla T4", None)])
def test_device_names_map_to_their_dense_bf16_peak(name, key):
    assert known_gpu(name) == key
