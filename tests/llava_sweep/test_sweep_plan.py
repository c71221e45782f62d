"""`just sweep SWEEP --dry-run` (llava_sweep.plan) against the planners it reuses.

Tiny sweeps over the bundled sample (tiny SD, tiny LLM, a cache root in tmp_path: nothing is extracted).
The cached-vs-naive ratio is recomputed by hand from what `pipeline.plan` and `train.plan` say of each
extraction job and training stage; spec errors are one line and exit status 2.
"""
import json
from pathlib import Path

import pytest
import yaml

from llava_sweep.cli import main
from llava_sweep.plan import PLAN_FILE, plan_sweep
from llava_sweep.load import load_sweep
from pipeline.config import load_extract_config
from pipeline.plan import plan_extract
from stages.flops import ComputeBudget
from train.config import load_stage_config
from train.plan import plan_training

REPO = Path(__file__).resolve().parents[2]
BUDGET = ComputeBudget()
A, B = "U-L1-R1-B0-Cross-Q", "U-L2-R2-Res-Out"


def write_sweep(tmp_path: Path, **fields) -> Path:
    """A sweep file over the sample configs, its root and extraction cache root in `tmp_path`."""
    values = {
        "name": "tiny", "root": str(tmp_path / "sweep"), "stages": ["pretrain", "sft"],
        "base": {"extract": {"sd": str(REPO / "configs/extract/sample.yaml"),
                             "clip": str(REPO / "configs/extract/sample-clip.yaml")},
                 "pretrain": str(REPO / "configs/train/sample-pretrain.yaml"),
                 "sft": str(REPO / "configs/train/sample-sft.yaml"),
                 "overrides": {"extract": [f"cache_root={tmp_path / 'cache'}"], "pretrain": ["max_steps=2"],
                               "sft": ["max_steps=2"]}},
        **fields}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def test_the_cached_vs_naive_ratio_follows_from_the_planners_numbers_per_job_and_stage(tmp_path, capsys):
    """Two SD runs sharing one pretraining (SFT with and without question guidance) and a CLIP run. By
    hand: cached = the SD job's extraction + the guided passes; naive = every training stage's features
    on the fly; the shared pretraining counted once, the CLIP job not at all."""
    path = write_sweep(tmp_path, axes={"guidance_scale": [0, 4]}, runs=[{"name": "clip", "mode": "clip"}])
    assert main(["sweep", str(path), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    plan = json.loads((tmp_path / "sweep" / PLAN_FILE).read_text())
    # nothing extracted or trained: the plan and the generated extraction YAMLs alone
    assert not (tmp_path / "cache").exists()
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir()) == ["extract", PLAN_FILE]

    sweep = load_sweep(path)
    extraction = 0.0
    for job in sweep.extractions.values():  # the YAMLs the dry run wrote, as `just extract` reads them
        job_plan = plan_extract(load_extract_config([f"config={job.path}"]), budget=BUDGET)
        assert plan["extractions"][job.name]["bytes"] == job_plan.bytes["total"]
        if job.values["encoder"] == "sd":
            extraction += job_plan.gflop["total"]
    trained = {name: plan_training(load_stage_config(s.kind, list(s.overrides)), world_size=1, budget=BUDGET)
               for name, s in sweep.stages.items()}
    assert sorted(trained) == ["pretrain/base", "pretrain/clip", "sft/clip", "sft/s0", "sft/s4"]
    processed = {name: p.steps["total"] * p.steps["global_batch"] for name, p in trained.items()}
    guided = sum(p.gflop_per_sample["diffusion"] * processed[name] for name, p in trained.items())
    naive = sum(p.gflop_per_sample["diffusion_naive"] * processed[name] for name, p in trained.items())
    assert extraction > 0 and guided > 0 and naive > 0

    diffusion = plan["totals"]["diffusion"]
    assert diffusion["extraction_gflop"] == pytest.approx(extraction)
    assert diffusion["guided_gflop"] == pytest.approx(guided)
    assert diffusion["naive_gflop"] == pytest.approx(naive)
    assert diffusion["ratio"] == pytest.approx(naive / (extraction + guided))
    assert diffusion["naive_gpu_hours"] == pytest.approx(BUDGET.gpu_hours(naive))
    assert f"naive / cached = {naive / (extraction + guided):.2f}x" in printed
    assert plan["runs"]["s0"]["stages"][0] == plan["runs"]["s4"]["stages"][0] == "pretrain/base"
    assert plan["stages"]["pretrain/base"]["runs"] == ["s0", "s4"]


def test_runs_needing_one_store_share_one_extraction_job_holding_the_union_of_their_arrays(tmp_path):
    """Names x timesteps, plus caption-guided pretraining reading `NAME@tT:caption` from the store: five runs,
    one job, one U-Net pass per timestep for all names. Sharing pays: the job costs less than each run
    extracting its own arrays (the VAE once per image)."""
    path = write_sweep(tmp_path, stages=["pretrain"], guidance_stage="pretrain",
                       axes={"feature": [A, B], "timestep": [50, 200]},
                       runs=[{"name": "caption", "feature": A, "timestep": 50, "guidance_scale": 4,
                              "prompt_source": "caption"}])
    sweep = load_sweep(path)
    plan = plan_sweep(sweep, BUDGET)

    (job,) = plan.extractions.values()
    assert job["runs"] == [r.name for r in sweep.runs] and len(job["runs"]) == 5
    assert all(run["extractions"] == ["sd-0"] for run in plan.runs.values())
    values = sweep.extractions["sd-0"].values
    assert (values["features"], values["timesteps"], values["prompt_sources"]) == ([A, B], [50, 200], ["caption"])
    assert job["arrays"] == [
        "latents", f"{A}@t50", f"{A}@t200", f"{B}@t50", f"{B}@t200",
        f"{A}@t50:caption", f"{A}@t200:caption", f"{B}@t50:caption", f"{B}@t200:caption"]

    own = 0.0
    for run in sweep.runs:  # each run extracting only what it reads, in a store of its own
        feature, timestep = (A, 50) if run.name == "caption" else (run.settings["feature"], run.settings["timestep"])
        sources = ["caption"] if run.name == "caption" else []
        config = load_extract_config([f"config={sweep.extractions['sd-0'].path}", f"features=[{feature}]",
                                      f"timesteps=[{timestep}]", f"prompt_sources={sources}"])
        own += plan_extract(config, budget=BUDGET).gflop["total"]
    assert job["gflop"] < own


@pytest.mark.parametrize("fields, message", [
    ({"axes": {"colour": ["red"]}}, "unknown sweep axes ['colour']"),
    ({"runs": [{"name": "twin", "mode": "clip"}, {"name": "twin", "mode": "sd"}]}, "two runs are named 'twin'"),
    ({"stages": ["sft", "pretrain"]}, "stages must be a non-empty ordered subset"),
    ({"cluster": {"gpus_per_run": -1}}, "cluster.gpus_per_run and cluster.cpus_per_run must be >= 0"),
])
def test_a_bad_sweep_file_is_one_line_exit_2_and_nothing_is_written(fields, message, tmp_path, capsys):
    path = write_sweep(tmp_path, **fields)
    assert main(["sweep", str(path), "--dry-run"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("sweep: error: ") and message in err[0], err
    assert not (tmp_path / "sweep").exists() and not (tmp_path / "cache").exists()


def test_an_unwritable_plan_file_is_refused_before_planning(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    path = write_sweep(tmp_path, axes={"guidance_scale": [0]})
    assert main(["sweep", str(path), "--dry-run", "--plan-json", str(tmp_path / "file" / "plan.json")]) == 2
    assert "--plan-json" in capsys.readouterr().err
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("name, runs, jobs", [
    ("paper-fig3", 37, {"sd-0": 36, "sd-1": 36, "clip-2": 1, "clip-3": 1}),
    ("paper-table2", 7, {"clip-0": 3, "clip-1": 3, "sd-2": 6, "sd-3": 6, "clip-4": 2, "clip-5": 2}),
    ("paper-table5", 3, {"sd-0": 3}),
    ("paper-sdxl", 3, {"sdxl-0": 3}),
])
def test_the_paper_sweeps_share_their_stores(name, runs, jobs, monkeypatch):
    """Planning them needs the LLaVA data and models (docs/sweep.md); their shape is checked here."""
    monkeypatch.chdir(REPO)  # their config paths are relative to the repository, as `just` runs them
    sweep = load_sweep(f"configs/sweeps/{name}.yaml")
    assert len(sweep.runs) == runs
    assert {job.name: len(job.runs) for job in sweep.extractions.values()} == jobs
    if name == "paper-fig3":
        values = sweep.extractions["sd-0"].values
        assert (len(values["features"]), values["timesteps"]) == (6, [10, 25, 50, 100, 200, 500])


def test_the_planned_extraction_jobs_are_what_the_sweep_then_writes(tmp_path):
    """Two runs over one store: the plan has one job, and running the sweep's extraction items (the runner's
    own `run_items`, each `just extract` a subprocess) writes exactly the zarr bytes it planned, one store."""
    from llava_sweep.execution import run_items

    sweep = load_sweep(write_sweep(tmp_path, axes={"timestep": [50, 200]}, stages=["pretrain"]),
                       ["base.overrides.extract=[runner=sequential,write_webdataset=false,cache_root="
                        f"{tmp_path / 'cache'}]"])
    plan = plan_sweep(sweep, BUDGET)
    assert list(plan.extractions) == ["sd-0"] and plan.extractions["sd-0"]["runs"] == ["t50", "t200"]
    outcomes = run_items(sweep, [("extract/sd-0", ())], since=0.0, say=print)
    assert outcomes["extract/sd-0"].status == "ran"
    stores = [p for p in (tmp_path / "cache").iterdir() if (p / "zarr").is_dir()]
    assert [str(s) for s in stores] == [plan.extractions["sd-0"]["store"]]
    written = sum(p.stat().st_size for p in stores[0].glob("zarr/*/c/**/*") if p.is_file())
    assert written == plan.extractions["sd-0"]["bytes"] > 0
    assert sorted(p.name for p in (stores[0] / "zarr").iterdir() if p.is_dir()) == sorted(
        ["latents", f"{A}@t50", f"{A}@t200"])
