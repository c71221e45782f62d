"""The cache key (DESIGN §4): canonical JSON of the value-changing inputs, hashed with SHA-256.

Model components enter by content (`weights_hash`), never by path, so a copy of the same weights in
another directory gives the same store. Batch size, worker count and paths are not fields.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

from stages.errors import UserError

__all__ = ["Fingerprint", "FingerprintMismatch", "canonical_json", "diff_fields", "weights_hash",
           "contract_fields"]

_CHUNK = 1 << 24  # bytes per read when hashing weight files


def canonical_json(value: Any) -> str:
    """The one serialisation that is hashed: sorted keys, no spaces, no NaN, UTF-8 kept as is."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


@dataclasses.dataclass(frozen=True)
class Fingerprint:
    """`json` is the canonical text; `full` its SHA-256 (64 hex); `short` the first 16 hex (dir name)."""

    json: str
    full: str

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> "Fingerprint":
        if not isinstance(fields, Mapping) or not fields:
            raise ValueError("a fingerprint needs a non-empty mapping of fields")
        text = canonical_json(dict(fields))
        return cls(json=text, full=hashlib.sha256(text.encode("utf-8")).hexdigest())

    @classmethod
    def from_json(cls, text: str) -> "Fingerprint":
        return cls.from_fields(json.loads(text))

    @property
    def short(self) -> str:
        return self.full[:16]

    @property
    def fields(self) -> dict[str, Any]:
        """A fresh copy of the fields (the fingerprint itself stays immutable)."""
        return json.loads(self.json)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping) and value:
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out.update(_flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def diff_fields(expected: Fingerprint, actual: Fingerprint) -> list[str]:
    """Dotted field paths that differ, each as `path: <actual> != <expected>` (sorted)."""
    exp, act = _flatten(expected.fields), _flatten(actual.fields)
    missing = object()
    lines = []
    for key in sorted(set(exp) | set(act)):
        a, e = act.get(key, missing), exp.get(key, missing)
        if a != e:
            show = lambda v: "<absent>" if v is missing else json.dumps(v)  # noqa: E731
            lines.append(f"{key}: {show(a)} != {show(e)}")
    return lines


class FingerprintMismatch(UserError, ValueError):
    """A store was made from other inputs than the caller expects (to write into it or to read it)."""

    def __init__(self, path: Path, *, store: Fingerprint, requested: Fingerprint) -> None:
        self.path, self.store, self.requested = Path(path), store, requested
        diffs = diff_fields(store, requested) or ["(fields equal; hash differs)"]
        super().__init__(
            f"store {path} was made with fingerprint {store.short}, not the expected {requested.short}; "
            "refusing to use it. Differing fields (expected != store):\n  " + "\n  ".join(diffs))


def _default_memo() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "diffusion-feature-cache" / "weights_hash.json"


def _file_digest(path: Path) -> str:
    """SHA-256 of a file; JSON files are hashed as canonical JSON without `_`-prefixed keys, which
    hold provenance (`_name_or_path`, `_diffusers_version`, `_commit_hash`) rather than values."""
    if path.suffix == ".json":
        with path.open(encoding="utf-8") as fh:
            data = json.load(fh)
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if not str(k).startswith("_")}
        return hashlib.sha256(canonical_json(data).encode("utf-8")).hexdigest()
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _load_memo(memo_path: Path) -> dict[str, Any]:
    try:
        with memo_path.open(encoding="utf-8") as fh:
            memo = json.load(fh)
        return memo if isinstance(memo, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_memo(memo_path: Path, memo: dict[str, Any]) -> None:
    memo_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = memo_path.with_name(f".{memo_path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(memo, sort_keys=True), encoding="utf-8")
    os.replace(tmp, memo_path)  # last writer wins; a lost entry is only re-hashed


def weights_hash(component_dir: str | Path, *, memo_path: str | Path | None = None) -> str:
    """Content SHA-256 of a model component directory (weights, configs, tokenizer files).

    Combines `relative path \\0 file-sha256 \\n` over the sorted non-hidden files (symlinks followed,
    as in the HF cache). Each file digest is remembered in a JSON memo keyed by (real path, size,
    mtime_ns), so multi-GB weights are hashed once per machine.
    """
    root = Path(component_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"model component directory {root} does not exist")
    files = sorted(p for p in root.rglob("*")
                   if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise ValueError(f"model component directory {root} holds no files to hash")
    memo_file = Path(memo_path) if memo_path is not None else _default_memo()
    memo, changed = _load_memo(memo_file), False
    combined = hashlib.sha256()
    for path in files:
        real = path.resolve()
        st = real.stat()
        memo_key = f"{real}|{st.st_size}|{st.st_mtime_ns}"
        if memo_key not in memo:
            memo[memo_key], changed = _file_digest(real), True
        combined.update(f"{path.relative_to(root).as_posix()}\0{memo[memo_key]}\n".encode("utf-8"))
    if changed:
        _save_memo(memo_file, memo)
    return combined.hexdigest()


def contract_fields(*, components: Mapping[str, str | Path], scheduler_config: Mapping[str, Any],
                    preprocess: Mapping[str, Any], noise: Mapping[str, Any],
                    pooling: Mapping[str, Any], dtypes: Mapping[str, str],
                    memo_path: str | Path | None = None) -> dict[str, Any]:
    """The DESIGN §4 fields from their sources: component dirs are replaced by their content hashes,
    the scheduler config loses its `_`-prefixed provenance keys. `preprocess` (resolution, resize,
    pad_color), `noise` (seed, trials), `pooling` (grid, mode) and `dtypes` are taken as given;
    run-only settings (batch size, workers, paths) have no parameter here on purpose."""
    return {
        "weights": {name: weights_hash(path, memo_path=memo_path) for name, path in sorted(components.items())},
        "scheduler": {k: v for k, v in scheduler_config.items() if not str(k).startswith("_")},
        "preprocess": dict(preprocess),
        "noise": dict(noise),
        "pooling": dict(pooling),
        "dtypes": dict(dtypes),
    }
