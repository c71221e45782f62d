"""`python -m llava_eval.cli {eval,export,table,llava-bench-score}` (the `just eval*` recipes).

    eval [key=value ...]               answer and score the benchmarks for a trained run's final/ weights or
                                       one of its checkpoints (run=<run>/checkpoints/step-N); default
                                       configs/eval/sample.yaml: runs/sample-sft on the embedded fixtures;
                                       eval_root=<folder> and/or paths.<benchmark>=<folder> say where the
                                       benchmarks are (docs/evaluation.md)
    export [key=value ...]             write each benchmark's images as LLaVA JSON under <run>/eval/data/ and
                                       print, one per line, the `extract` arguments that cache them
    table RUN [RUN ...] [--out PREFIX] the paper's Table 2 and Table 5 layouts and the per-category breakdowns
                                       over runs' results, in the paper's units, printed and written as
                                       PREFIX.md, PREFIX.csv and PREFIX-<breakdown>.csv (default runs/eval-table)
    llava-bench-score REVIEW [...] [--run RUN]
                                       relative scores per category from judge review files (LLaVA's
                                       format); with --run, the one file's scores go into the LLaVA-Bench
                                       result of RUN (a run with one, or a result folder)

`key=value` overrides and flags come in any order; `--verbose` (anywhere) also shows what third-party
libraries print (the COCO tokenizer's Java lines, weight-loading bars), otherwise kept off the terminal.

Exit status as every command of the project: 2 for a setup problem (one line naming the fix, e.g. the
`just extract` command for benchmark images that are not cached yet), 130 when interrupted (run the
same command to resume from the predictions already written).
"""
from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import torch

from stages.config import ConfigError, build_dataclass, load_config
from stages.console import status, take_verbose
from stages.errors import INTERRUPTED, USAGE_ERROR, UserError, print_user_error
from stages.llava import QUESTION
from stages.locations import REPO

if TYPE_CHECKING:
    from llava_eval.benchmarks import Benchmark
    from llava_eval.features import EvalFeatures
    from llava_eval.results import ResultFiles
    from llava_eval.run import Checkpoint
    from llava_eval.sources import LoadedBenchmark

__all__ = ["EvalConfig", "load_eval_config", "extract_args", "planned_results", "run_eval", "answer_samples", "main"]

DEFAULT_CONFIG = REPO / "configs/eval/sample.yaml"


@dataclass(frozen=True)
class EvalConfig:
    run: str = "runs/sample-sft"  # a training run's output_dir (its final/), or <run>/checkpoints/step-N
    benchmarks: tuple[str, ...] = ()  # () = every benchmark
    eval_root: str = ""  # one folder per benchmark, in any accepted layout; "" = the embedded fixtures (unless paths)
    paths: Mapping[str, str] = field(default_factory=dict)  # a benchmark's own folder: paths.mmvp=/data/MMVP
    cache_root: str = ""  # where the run's stores live; "" = where the run found them
    batch_size: int = 8
    max_new_tokens: int = 0  # 0 = each benchmark's own
    sd_settings: tuple[str, ...] = ()  # of a benchmark's SD prompt settings, those listed (all when none is)
    mmvp_corrected: bool = True  # apply the known MMVP answer fixes (llava_eval.benchmarks.mmvp)
    force: bool = False  # evaluate again even when the result of this identity exists
    device: str = ""  # "" = cuda when available, else cpu

    def __post_init__(self) -> None:
        from llava_eval.benchmarks import BENCHMARKS

        if not isinstance(self.paths, Mapping):
            raise ConfigError(f"paths must map benchmarks to their folders (paths.mmvp=/data/MMVP), got {self.paths!r}")
        unknown = [b for b in (*self.benchmarks, *self.paths) if b not in BENCHMARKS]
        if unknown:
            raise ConfigError(f"unknown benchmarks {unknown}; valid: {sorted(BENCHMARKS)}")
        if not all(isinstance(path, str) and path for path in self.paths.values()):
            raise ConfigError("paths: each benchmark's path must be a folder name (paths.mmvp=/data/MMVP)")
        known = {s for b in BENCHMARKS.values() for s in b.sd_settings}
        if not set(self.sd_settings) <= known:
            raise ConfigError(f"unknown sd_settings {sorted(set(self.sd_settings) - known)}; valid: {sorted(known)}")
        if self.batch_size <= 0 or self.max_new_tokens < 0:
            raise ConfigError("batch_size must be > 0 and max_new_tokens >= 0")


def load_eval_config(overrides: Sequence[str] = ()) -> EvalConfig:
    return build_dataclass(EvalConfig, load_config(DEFAULT_CONFIG, overrides), where="eval config")


def _eval_root(config: EvalConfig) -> Path | None:
    """The eval root given, the embedded fixtures' when neither it nor any benchmark path is, else None."""
    if config.eval_root:
        root = Path(config.eval_root)
        if not root.is_dir():
            raise ConfigError(f"eval_root {root} is not a folder (one sub-folder per benchmark; docs/evaluation.md)")
        return root
    if config.paths:
        return None
    from llava_eval.embedded import ensure_eval_root

    return ensure_eval_root()


def _selected(config: EvalConfig) -> list[Benchmark]:
    """The benchmarks named, else those given a path when there is no eval root, else all."""
    from llava_eval.benchmarks import BENCHMARKS, MMVP

    names = config.benchmarks or (tuple(config.paths) if config.paths and not config.eval_root else BENCHMARKS)
    chosen = [BENCHMARKS[name] for name in names]
    return [MMVP(corrected=False) if b.name == MMVP.name and not config.mmvp_corrected else b for b in chosen]


def _export(config: EvalConfig, checkpoint: Checkpoint) -> tuple[Path, list[tuple[LoadedBenchmark, Path]]]:
    """The image root and every selected benchmark loaded, with the LLaVA JSON of its images (written now)."""
    from llava_eval.export import write_llava_json
    from llava_eval.results import EVAL_DIR
    from llava_eval.sources import load_benchmarks, written_images

    eval_dir = checkpoint.run_dir / EVAL_DIR
    written = written_images(config.cache_root, checkpoint.config.data.cache_root)
    root, loaded = load_benchmarks(_selected(config), eval_root=_eval_root(config), paths=config.paths,
                                   view=eval_dir / "images", written=written)
    return root, [(one, write_llava_json(one.items, eval_dir / "data" / f"{one.benchmark.name}.json"))
                  for one in loaded]


def extract_args(config: EvalConfig) -> list[str]:
    """`extract` arguments (shell-quoted) that cache the selected benchmarks' images in the run's stores."""
    from llava_eval.run import Checkpoint

    checkpoint = Checkpoint.locate(config.run)
    train = checkpoint.config
    root, loaded = _export(config, checkpoint)
    data = [str(path) for _, path in loaded]
    cache_root = config.cache_root or train.data.cache_root
    extra = [f"cache_root={cache_root}"] if cache_root else []
    return [shlex.join([f"config={yaml}", f"data=[{','.join(data)}]", f"image_root={root}", *extra])
            for yaml in train.data.extract_configs]


def _planned(config: EvalConfig, checkpoint: Checkpoint, features: EvalFeatures, root: Path,
             loaded: list[tuple[LoadedBenchmark, Path]]) -> list[tuple[LoadedBenchmark, str, ResultFiles]]:
    """Each (benchmark, SD prompt setting) to answer, with the result files of its identity."""
    from llava_eval.identity import Generation, ResultIdentity, benchmark_digests, data_hash
    from llava_eval.results import ResultFiles, result_name
    from llava_eval.run import inference_dtype

    weights = checkpoint.sha256()  # once per invocation; refuses a checkpoint without weights
    dtype = str(inference_dtype(checkpoint.config, features.device)).removeprefix("torch.")
    planned = []
    for one, _ in loaded:
        benchmark = one.benchmark
        data = data_hash(benchmark_digests(one.located, root, one.items))
        generation = Generation(max_new_tokens=config.max_new_tokens or benchmark.max_new_tokens,
                                template=checkpoint.config.template, dtype=dtype)
        settings = [s for s in benchmark.sd_settings if s in config.sd_settings] or benchmark.sd_settings
        for setting in settings if features.guided else settings[:1]:  # unguided: every setting gives X_u
            identity = ResultIdentity(checkpoint=weights, benchmark=benchmark.name, options=benchmark.options(),
                                      data=data, sd_setting=setting if features.guided else None,
                                      generation=generation, features=features.settings)
            planned.append((one, setting, ResultFiles(checkpoint.run_dir, result_name(benchmark, setting), identity)))
    return planned


def _setup(config: EvalConfig) -> tuple[Checkpoint, EvalFeatures, Path, list[tuple[LoadedBenchmark, Path]]]:
    """`_planned`'s inputs: the checkpoint, its features, the image root and the loaded benchmarks, located and
    checked before any weights load."""
    from llava_eval.features import EvalFeatures
    from llava_eval.run import Checkpoint
    from stages.models import default_device

    checkpoint = Checkpoint.locate(config.run)  # every refusal before any weights load
    root, loaded = _export(config, checkpoint)
    device = torch.device(config.device) if config.device else default_device()
    features = EvalFeatures(checkpoint.config, cache_root=config.cache_root, device=device, image_root=root)
    return checkpoint, features, root, loaded


def planned_results(config: EvalConfig) -> list[ResultFiles]:
    """The result files `run_eval(config)` writes or finds, one per benchmark and SD prompt setting, keyed by
    their identity (`.done()`: written); loads no weights (hashes them), computes nothing."""
    return [files for *_, files in _planned(config, *_setup(config))]


def run_eval(config: EvalConfig, *, progress: bool = True) -> list[dict]:
    """Evaluate every selected benchmark and setting; returns the result of each (existing ones as found)."""
    from llava_eval.evaluator import evaluate_benchmark
    from llava_eval.run import TrainedRun

    checkpoint, features, root, loaded = _setup(config)
    for one, data_json in loaded:
        features.check_cached([i.image for i in one.items if i.image is not None], data_json=data_json)
    run, results = None, []
    for one, setting, files in _planned(config, checkpoint, features, root, loaded):
        if config.force:
            files.clear()
        if files.done():
            print(f"{files.result}: exists (force=true evaluates again)")
            results.append(files.read())
            continue
        if run is None:
            if progress:
                status("eval", f"loading {checkpoint.run_dir}/{checkpoint.label} on {features.device} …")
            run = TrainedRun.load(checkpoint, device=features.device)
        result = evaluate_benchmark(run, features, one.benchmark, one.items, setting=setting, files=files,
                                    batch_size=config.batch_size, eval_root=root, progress=progress,
                                    source={"folder": str(one.located.folder), "layout": one.located.layout.name})
        print(f"{files.result}: {json.dumps(result['metrics'])}")
        results.append(result)
    return results


def answer_samples(result: dict, *, n: int = 3, width: int = 60) -> list[str]:
    """A glance at what the model says: the result's name and its first `n` predictions as `question -> answer`
    lines (the prompt's first line and the generated text, each on one line and cut to `width` characters)."""
    def short(text: str) -> str:
        text = " ".join(text.split())
        return repr(text if len(text) <= width else text[:width - 1] + "…")

    identity = result["identity"]
    setting = f" ({identity['sd_setting']})" if identity["sd_setting"] not in (None, QUESTION) else ""
    lines = [f"{identity['benchmark']}{setting}: {min(n, len(result['predictions']))} of "
             f"{len(result['predictions'])} answers"]
    lines += [f"  {short(p['prompt'].splitlines()[0])} -> {short(p['text'])}" for p in result["predictions"][:n]]
    return lines


def _option(argv: list[str], flag: str) -> tuple[str | None, list[str]]:
    """(value of `flag VALUE`, the other arguments)."""
    if flag not in argv:
        return None, argv
    at = argv.index(flag)
    if at + 1 >= len(argv):
        raise ConfigError(f"{flag} needs a value")
    return argv[at + 1], argv[:at] + argv[at + 2:]


def _table(argv: list[str]) -> int:
    from llava_eval.table import write_tables

    out, runs = _option(argv, "--out")
    if not runs:
        raise ConfigError("name at least one run directory: `just eval-table runs/a runs/b`")
    missing = [run for run in runs if not Path(run).is_dir()]
    if missing:
        raise ConfigError(f"no such run directory: {', '.join(missing)}")
    markdown, files = write_tables([Path(a) for a in runs], out or "runs/eval-table")
    print(markdown, end="")
    print(f"(written to {', '.join(map(str, files))})")
    return 0


def _llava_bench_result(target: Path) -> Path:
    """The LLaVA-Bench result file of `target`: a result folder, or a run with exactly one such result."""
    from llava_eval.benchmarks.llava_bench import LlavaBench
    from llava_eval.results import RESULT_FILE, ResultMissing, stored_results

    if (target / RESULT_FILE).is_file():
        return target / RESULT_FILE
    found = [result.path for result in stored_results(target) if result.name == LlavaBench.name]
    if not found:
        raise ResultMissing(f"{target} holds no LLaVA-Bench result: evaluate it on llava-bench first")
    if len(found) > 1:
        folders = ", ".join(str(path.parent) for path in found)
        raise ConfigError(f"{target} holds {len(found)} LLaVA-Bench results ({folders}): name the folder of "
                          "the judged answer file with --run")
    return found[0]


def _llava_bench_score(argv: list[str]) -> int:
    from llava_eval.benchmarks.llava_bench import summarize_reviews
    from llava_eval.results import update_metrics

    run, reviews = _option(argv, "--run")
    if not reviews or (run and len(reviews) != 1):
        raise ConfigError("name the judge's review files (LLaVA's review jsonl format); with --run, exactly one")
    result_file = _llava_bench_result(Path(run)) if run else None  # refused before any summary is printed
    summaries = summarize_reviews([Path(a) for a in reviews])
    print(json.dumps(summaries, indent=1))
    if result_file:
        summary = next(iter(summaries.values()))
        update_metrics(result_file, {"relative_score": summary["all"]["relative"], "judged": summary})
        print(f"recorded in {result_file}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = take_verbose(sys.argv[1:] if argv is None else argv)
    commands = ("eval", "export", "table", "llava-bench-score")
    if not argv or argv[0] not in commands:
        print(__doc__, file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else USAGE_ERROR
    command, rest = argv[0], argv[1:]
    try:
        if command == "table":
            return _table(rest)
        if command == "llava-bench-score":
            return _llava_bench_score(rest)
        config = load_eval_config(rest)
        if command == "export":
            print("\n".join(extract_args(config)))
            return 0
        for result in run_eval(config):
            print("\n".join(answer_samples(result)))
        if not config.eval_root and not config.paths:
            print("note: the embedded fixtures hold a handful of items per benchmark, and the embedded models are "
                  "tiny, random, and trained for seconds on a few dozen samples: the answers show that generation "
                  "runs; the numbers mean nothing")
        return 0
    except UserError as exc:
        return print_user_error(command, exc)
    except KeyboardInterrupt:
        print(f"{command}: interrupted; run the same command to resume from the predictions written so far",
              file=sys.stderr)
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
