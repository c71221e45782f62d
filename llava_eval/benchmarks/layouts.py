"""Which of its accepted layouts a benchmark folder holds, and how its images become image keys.

Each benchmark lists its layouts (`Benchmark.layouts`), most specific first. A layout's `find` looks at the
folder's file names and columns and returns the files its `read` parses, or raises `LayoutMismatch` saying
what the folder lacks for it; `locate` takes the first layout that finds its files, and when none does,
refuses with one line naming every layout tried and what each lacked. A hub-cache repository folder is read
at its snapshot (`hf_local.hub_snapshot`) whatever the layout.

Image keys start with the benchmark's name: an image file of the folder is keyed by its path under the
folder (`mmvp/MMVP Images/1.jpg`); an image embedded in a data file is written out once, unchanged, named by
the sha256 of its bytes (`mmvp/images/<sha256>.jpg`), so a changed data file can never leave a stale image
under a name it reuses. Where those are written (`ImageFiles.out`) is the folder itself unless the caller
says otherwise (`llava_eval.sources`).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from llava_eval.benchmarks.items import BenchmarkLayoutError, EvalItem
from llava_eval.benchmarks.hf_local import (data_files, hub_snapshot, image_bytes, image_suffix, missing_columns,
                                          write_once)

__all__ = ["LayoutMismatch", "Found", "ImageFiles", "Layout", "Located", "locate", "first_file", "data_files_with"]

EMBEDDED_IMAGES = "images"  # where images embedded in data files are written, under `ImageFiles.out`


class LayoutMismatch(Exception):
    """The folder is not in this layout; the message says what it lacks."""


@dataclass(frozen=True)
class Found:
    """What a layout found: the folder its paths are under (a hub snapshot, GQA's `data/`) and the files its
    reader parses besides image files (they are part of a result's identity)."""

    root: Path
    files: tuple[Path, ...]


@dataclass(frozen=True)
class ImageFiles:
    """Image keys of one benchmark: `<name>/<path under folder>` for its image files, `<name>/images/<sha256>`
    for images embedded in its data files, written under `out`."""

    name: str
    folder: Path
    out: Path

    def file(self, path: Path, *, what: str) -> str:
        """The key of an image file of the folder; refused, naming it, when it does not exist."""
        if not path.is_file():
            raise BenchmarkLayoutError(f"{self.name}: {path} does not exist ({what})")
        return f"{self.name}/{path.relative_to(self.folder).as_posix()}"

    def embedded(self, value: Any, *, where: str) -> str:
        """The key of an `Image` column value (`{bytes, path}`), its bytes written out unchanged."""
        data = image_bytes(value, where=where)
        return self.derived(hashlib.sha256(data).hexdigest(), data, suffix=image_suffix(data, where=where))

    def derived(self, digest: str, content: bytes | Callable[[], bytes], *, suffix: str) -> str:
        """The key of an image made from embedded ones (BLINK's composites), named by `digest` (of what
        determines its bytes) and built only when not written yet."""
        relative = f"{EMBEDDED_IMAGES}/{digest}{suffix}"
        write_once(self.out / relative, content)
        return f"{self.name}/{relative}"


@dataclass(frozen=True)
class Layout:
    """One way a benchmark is laid out on disk."""

    name: str  # what the one-line report and a refusal call it: "lmms-eval's lmms-lab-eval/MMVP"
    find: Callable[[Path], Found]  # the folder (a hub snapshot already resolved) -> its files; LayoutMismatch
    read: Callable[[Found, ImageFiles], list[EvalItem]]
    embedded: bool = False  # its images come inside the data files (written out by `read`)


@dataclass(frozen=True)
class Located:
    """A benchmark folder matched to one of its layouts."""

    benchmark: str
    folder: Path  # as given (paths under it keep the names they were given by)
    layout: Layout
    found: Found

    def read(self, images: ImageFiles) -> list[EvalItem]:
        return self.layout.read(self.found, images)

    def summary(self, n_items: int) -> str:
        """`mmvp: lmms-eval's lmms-lab-eval/MMVP (data/train-00000-of-00001.parquet), 300 items`."""
        names = [path.relative_to(self.folder).as_posix() for path in self.found.files]
        shown = names[0] + (f" and {len(names) - 1} more" if len(names) > 1 else "")
        return f"{self.benchmark}: {self.layout.name} ({shown}), {n_items} items"


def locate(benchmark: str, folder: Path, layouts: Sequence[Layout]) -> Located:
    """The first of `layouts` that `folder` holds; one line naming each layout tried and what it lacked if none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BenchmarkLayoutError(f"{benchmark}: {folder} is not a folder")
    root = hub_snapshot(folder)
    tried = []
    for layout in layouts:
        try:
            return Located(benchmark=benchmark, folder=folder, layout=layout, found=layout.find(root))
        except LayoutMismatch as exc:
            tried.append(f"{layout.name}: {exc}")
    raise BenchmarkLayoutError(f"{benchmark}: {folder} holds none of the accepted layouts (docs/evaluation.md); "
                               + "; ".join(tried))


def first_file(root: Path, names: Sequence[str]) -> Path:
    """The first of `names` (paths under `root`) that is a file; `LayoutMismatch` naming the first otherwise."""
    for name in names:
        if (root / name).is_file():
            return root / name
    raise LayoutMismatch(f"{root / names[0]} does not exist")


def data_files_with(columns: Sequence[str | tuple[str, ...]], *, splits: Sequence[str] = (),
                    under: str = "") -> Callable[[Path], Found]:
    """A layout's `find` for a Hugging Face dataset: the data files of `splits` under the folder (or its
    sub-folder `under`, a dataset config), the first of which has `columns` (a tuple: alternative spellings)."""
    def find(root: Path) -> Found:
        files = data_files(root / under, splits=splits)
        if not files:
            raise LayoutMismatch(f"no parquet or save_to_disk Arrow files under {root / under}")
        missing = missing_columns(files[0], columns)
        if missing:
            raise LayoutMismatch(f"{files[0]} has no column {missing[0]!r}")
        return Found(root, tuple(files))
    return find
