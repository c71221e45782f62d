"""Where each selected benchmark is read from, and the image root its image keys are relative to.

A benchmark's folder is its own path (`paths.<name>=...`) or else `<eval_root>/<name>`, or the first of its
other names there (`Benchmark.folder_names`: `MMVP`, `llava-bench-in-the-wild`, ... so LLaVA's
`playground/data/eval` serves as an eval root). Any accepted layout may be in it
(`llava_eval.benchmarks.layouts`).

Image keys are `<name>/<path>` under one image root for all benchmarks (DESIGN §7). When every folder is
`<eval_root>/<name>`, the eval root is the image root, as it always was, and images embedded in data files
are written into the benchmark's folder. Otherwise the image root is the run's `<run>/eval/images/`, which
holds one link per benchmark, named by it: to the benchmark's folder when its images are files, or to
`<cache_root>/eval-images/<name>/`, where images embedded in its data files are written (named by their
content, so every run and every copy of a benchmark shares them, and no data folder is written to).
The links are made again on every load; the extraction and the feature check follow them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from llava_eval.benchmarks import Benchmark, EvalItem
from llava_eval.benchmarks.layouts import Located
from stages.config import ConfigError

__all__ = ["WRITTEN_IMAGES", "written_images", "LoadedBenchmark", "benchmark_folder", "load_benchmarks"]

WRITTEN_IMAGES = "eval-images"  # under the cache root: images written out of benchmarks' data files


def written_images(cache_root: str, run_cache_root: str) -> Path:
    """`<cache root>/eval-images`: the cache root given, else the run's (`data.cache_root`), else the default."""
    from stages.locations import DEFAULT_CACHE_ROOT

    return Path(cache_root or run_cache_root or DEFAULT_CACHE_ROOT, WRITTEN_IMAGES)


@dataclass(frozen=True)
class LoadedBenchmark:
    benchmark: Benchmark
    located: Located  # its folder, the layout read and the data files it read
    items: list[EvalItem]


def benchmark_folder(benchmark: Benchmark, *, eval_root: Path | None, paths: Mapping[str, str]) -> Path:
    """The folder `benchmark` is read from; `ConfigError` naming the setting when there is none."""
    if benchmark.name in paths:
        folder = Path(paths[benchmark.name]).expanduser()
        if not folder.is_dir():
            raise ConfigError(f"paths.{benchmark.name}: {folder} is not a folder")
        return folder
    names = (benchmark.name, *benchmark.folder_names)
    if eval_root is None:
        raise ConfigError(f"{benchmark.name} has no folder: give paths.{benchmark.name}=<folder> or eval_root")
    found = next((eval_root / name for name in names if (eval_root / name).is_dir()), None)
    if found is None:
        raise ConfigError(f"eval_root {eval_root} has no folder {' or '.join(names)}: lay {benchmark.name} out "
                          f"there or give its own path, paths.{benchmark.name}=<folder> (docs/evaluation.md)")
    return found


def _link(link: Path, target: Path) -> None:
    """`link` -> `target` (absolute), replacing the link it was (a new link renamed over it)."""
    target = target.absolute()
    if link.is_symlink() and Path(os.readlink(link)) == target:
        return
    if link.exists() and not link.is_symlink():
        raise ConfigError(f"{link} is not a link made by `just eval`: move it away (the image root {link.parent} "
                          "holds one link per benchmark)")
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.{os.getpid()}.link")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target, target_is_directory=True)
    os.replace(tmp, link)


def load_benchmarks(benchmarks: Sequence[Benchmark], *, eval_root: Path | None, paths: Mapping[str, str],
                    view: Path, written: Path) -> tuple[Path, list[LoadedBenchmark]]:
    """(image root, each benchmark loaded): `view` is the run's image root of links, used unless every folder
    is `<eval_root>/<name>`; `written` holds the images written out of data files there (module doc)."""
    folders = {b.name: benchmark_folder(b, eval_root=eval_root, paths=paths) for b in benchmarks}  # all checked first
    if eval_root is not None and all(folders[b.name] == eval_root / b.name for b in benchmarks):
        return eval_root, [_loaded(b, b.locate(folders[b.name]), out=None) for b in benchmarks]
    loaded = []
    for benchmark in benchmarks:
        located = benchmark.locate(folders[benchmark.name])
        out = written / benchmark.name if located.layout.embedded else None
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
        _link(view / benchmark.name, out or located.folder)
        loaded.append(_loaded(benchmark, located, out=out))
    return view, loaded


def _loaded(benchmark: Benchmark, located: Located, *, out: Path | None) -> LoadedBenchmark:
    return LoadedBenchmark(benchmark, located, benchmark.read(located, out=out))
