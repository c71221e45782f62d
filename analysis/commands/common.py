"""Arguments every analysis command shares, and the small steps they all take (open the feature source,
pick array ids, open the output folder)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from analysis.fixtures import EMBEDDED, benchmark_root
from analysis.inputs import DEFAULT_DATA
from analysis.outputs import DEFAULT_OUT, RunDir
from analysis.sources import AnalysisFeatures
from stages.features import ArrayId, FeatureName

__all__ = ["DEFAULT_EXTRACT", "add_common", "add_images", "add_benchmark_roots", "benchmark_root_of", "open_source",
           "open_run", "array_ids"]

DEFAULT_EXTRACT = "configs/extract/sample.yaml"


def add_common(parser: argparse.ArgumentParser, *, name: str) -> None:
    parser.add_argument("--name", default=name, help=f"output folder under --out (default {name})")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="root of analysis outputs (default %(default)s)")
    parser.add_argument("--extract-config", default=DEFAULT_EXTRACT,
                        help="extraction YAML whose store (found by fingerprint) serves the SD arrays and latents; "
                             "what it lacks is computed the same way (default %(default)s)")
    parser.add_argument("--cache-root", default=None, help="cache root (default: the YAML's cache_root)")
    parser.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")


def add_images(parser: argparse.ArgumentParser, *, limit: int | None) -> None:
    parser.add_argument("--data", default=DEFAULT_DATA, help="LLaVA JSON (or bundled-sample name) giving image keys "
                                                             "and captions (default %(default)s)")
    parser.add_argument("--image-root", default=None, help="folder the keys of --data are under (for a file)")
    parser.add_argument("--keys", nargs="+", default=None,
                        help=f"image keys to use (default: the first {limit} of --data)" if limit
                        else "image keys to use (default: every image of --data)")


def add_benchmark_roots(parser: argparse.ArgumentParser, names: Sequence[str]) -> None:
    """`--<benchmark> DIR` for each name: the benchmark's folder in its official layout."""
    for name in names:
        parser.add_argument(f"--{name}", default=EMBEDDED, dest=name.replace("-", "_"),
                            help=f"{name} folder in its official layout (default: the embedded tiny fixture)")


def benchmark_root_of(args: argparse.Namespace, name: str) -> Path:
    """The folder of benchmark `name` given on the command line (materialising the embedded fixture)."""
    return benchmark_root(name, getattr(args, name.replace("-", "_")))


def open_source(args: argparse.Namespace, *, image_root: str | Path, extract_config: str | None = None
                ) -> AnalysisFeatures:
    return AnalysisFeatures.from_yaml(extract_config or args.extract_config, image_root=image_root,
                                   cache_root=args.cache_root, device=args.device)


def open_run(args: argparse.Namespace) -> RunDir:
    return RunDir(args.out, args.name)


def array_ids(source: AnalysisFeatures, *, features: Sequence[str] | None = None,
              timesteps: Sequence[int] | None = None) -> list[str]:
    """Unconditional `NAME@tT` ids: the given names and timesteps, each defaulting to the spec's."""
    names = [FeatureName.parse(n) for n in (features or source.spec.features)]
    return [str(ArrayId(name, t)) for name in names for t in (timesteps or source.spec.timesteps)]
