"""Manifests: the unique image keys of one or several LLaVA JSON files, checked against the image root.

A key is the `image` value exactly as written in the JSON (`00453/004539375.jpg`,
`coco/train2017/000000033471.jpg`). Samples without `image` are text-only and have no features.
Keys that could leave the image root as written (absolute, `..`) or that no file system can hold (a NUL
byte, a component over 255 bytes) are refused and keys without a file are reported as missing, each one
up front and with a reason (one bad key is one entry, never a failed manifest), so that only the rest
enters the shard plan: a missing image that appears later is simply a new key on the next run. Symlinks
under the image root are followed (`stages.image_files.safe_image_path`).
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from stages.config import ConfigError
from stages.llava import PROMPT_TEXT, DataError, load_llava_json
from stages.image_files import UnsafeKey, safe_image_path

__all__ = ["Manifest", "ManifestError", "build_manifest", "REFUSED_HINT"]

REFUSED_HINT = "keys are paths under image_root, whose symlinks are followed"
_STAT_THREADS = 32  # file checks are I/O-bound; on network filesystems parallel stats help a lot


class ManifestError(DataError):
    """Data files or an image root that cannot be used: missing, not a list of LLaVA sample objects."""


@dataclass(frozen=True)
class Manifest:
    """`keys`: sorted unique usable image keys. `refused`/`missing`: key -> reason, kept out of `keys`;
    `refused_by_cause`: a short cause (`absolute path`) -> the keys refused for it."""

    image_root: Path
    keys: tuple[str, ...]
    prompts: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # source -> key -> text
    refused: Mapping[str, str] = field(default_factory=dict)
    missing: Mapping[str, str] = field(default_factory=dict)
    refused_by_cause: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    n_samples: int = 0
    n_text_only: int = 0

    def refusals(self) -> str:
        """`2 absolute path (e.g. '/data/coco/1.jpg'), 1 '..' in the path (e.g. '../x.jpg')`; "" if none."""
        return ", ".join(f"{len(keys)} {cause} (e.g. {keys[0]!r})" for cause, keys in self.refused_by_cause.items())

    def problems(self) -> list[dict[str, str]]:
        """Up-front problems as error-file records, sorted by key."""
        rows = [{"key": k, "kind": "refused", "reason": r} for k, r in self.refused.items()]
        rows += [{"key": k, "kind": "missing", "reason": r} for k, r in self.missing.items()]
        return sorted(rows, key=lambda row: row["key"])


def _check(root: Path, key: object) -> tuple[str, str | None, str | None]:
    """(kind, reason, cause): kind 'ok', 'refused' or 'missing'; a refusal's cause in a few words."""
    if not isinstance(key, str) or not key:
        return "refused", f"image entry {key!r} is not a non-empty path string", "not a path string"
    try:
        path = safe_image_path(root, key)
        if not path.is_file():
            return "missing", f"missing image file {path}", None
    except UnsafeKey as exc:
        return "refused", str(exc), exc.cause
    except (OSError, ValueError) as exc:  # one key the file system refuses is one entry
        return "refused", f"image path {key!r} cannot be looked up: {exc}", "cannot be looked up"
    return "ok", None, None


def _grouped(causes: Mapping[str, str]) -> dict[str, tuple[str, ...]]:
    """key -> cause, as cause -> its keys (sorted), the most frequent cause first."""
    groups: dict[str, list[str]] = {}
    for key in sorted(causes):
        groups.setdefault(causes[key], []).append(key)
    return {cause: tuple(keys) for cause, keys in sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))}


def _collect(samples: Iterable[Mapping[str, Any]], sources: Sequence[str]
             ) -> tuple[dict[str, tuple[object, dict[str, str]]], int, int]:
    """Unique image entries (by their text) in first-seen order -> (entry, prompts); sample count;
    text-only count."""
    first: dict[str, tuple[object, dict[str, str]]] = {}
    n_samples = n_text_only = 0
    for sample in samples:
        n_samples += 1
        image = sample.get("image")
        if image is None:
            n_text_only += 1
            continue
        text = image if isinstance(image, str) else json.dumps(image, sort_keys=True)
        if text not in first:
            first[text] = (image, {source: PROMPT_TEXT[source](sample) for source in sources})
    return first, n_samples, n_text_only


def build_manifest(json_paths: Sequence[str | Path], *, image_root: str | Path,
                   prompt_sources: Sequence[str] = ()) -> Manifest:
    """Read, deduplicate by key, refuse escaping paths, find missing files (in parallel)."""
    unknown = sorted(set(prompt_sources) - set(PROMPT_TEXT))
    if unknown:
        raise ConfigError(f"unknown prompt source(s) {unknown}; known: {sorted(PROMPT_TEXT)}")
    if not json_paths:
        raise ManifestError("no LLaVA JSON files given (config field `data`)")
    root = Path(image_root)
    if not root.is_dir():
        raise ManifestError(f"image root {root} is not a directory")
    samples = (s for p in json_paths for s in load_llava_json(p, error=ManifestError))
    first, n_samples, n_text_only = _collect(samples, prompt_sources)
    entries = list(first)
    with ThreadPoolExecutor(max_workers=_STAT_THREADS) as pool:
        checks = list(pool.map(lambda text: _check(root, first[text][0]), entries, chunksize=256))
    refused = {k: reason for k, (kind, reason, _) in zip(entries, checks) if kind == "refused"}
    missing = {k: reason for k, (kind, reason, _) in zip(entries, checks) if kind == "missing"}
    keys = tuple(sorted(k for k, (kind, _, _) in zip(entries, checks) if kind == "ok"))
    causes = {k: cause for k, (kind, _, cause) in zip(entries, checks) if kind == "refused"}
    prompts = {source: {k: first[k][1][source] for k in keys} for source in prompt_sources}
    return Manifest(image_root=root, keys=keys, prompts=prompts, refused=refused, missing=missing,
                    refused_by_cause=_grouped(causes), n_samples=n_samples, n_text_only=n_text_only)
