"""`verify_store`: check every shard of a store against what was recorded when it was written."""
from __future__ import annotations

import sys
import tarfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from stages.store.keys import decode_key
from stages.store.layout import file_sha256
from stages.store.meta import EditedShardSize, StoreMeta
from stages.store.reader import StoreCorruption, StoreReader
from stages.store.repair import Problem, index_disagreements, leftover_problems, structural_problems

__all__ = ["check_store", "verify_store"]


def _check_header(meta: StoreMeta) -> list[str]:
    own = meta.attrs.get("feature_cache", {})
    problems = []
    if own.get("fingerprint_sha256") != meta.fingerprint.full:
        problems.append("fingerprint.json does not hash to the fingerprint in the group attributes")
    if own.get("fingerprint_json") != meta.fingerprint.json:
        problems.append("fingerprint_json in the group attributes differs from fingerprint.json")
    seen: set[str] = set()
    for plan in meta.plans:
        if plan.rows.start != plan.index * meta.shard_size or len(plan.keys) != meta.shard_size:
            problems.append(f"index of shard {plan.index} has rows {plan.rows}, expected shard_size {meta.shard_size}")
        dupes = seen.intersection(k for k in plan.keys if k is not None)
        if dupes:
            problems.append(f"index of shard {plan.index} repeats keys of earlier shards: {sorted(dupes)[:3]}")
        seen.update(k for k in plan.keys if k is not None)
    return problems


def _check_shard(reader: StoreReader, array_id: str, shard: int) -> list[str]:
    """Recorded bytes, checksum, shape, dtype, failed keys and finiteness of one completed shard."""
    meta = reader.meta
    info, record = meta.infos[array_id], meta.record(array_id, shard)
    where = f"array {array_id!r} shard {shard}"
    path = meta.paths.shard_file(array_id, shard, len(info.sample_shape))
    if not path.is_file():
        return [f"{where}: shard file {path} is missing"]
    try:
        nbytes, digest = file_sha256(path)
    except OSError as exc:
        return [f"{where}: shard file {path} cannot be read ({exc})"]
    if nbytes != record.nbytes or digest != record.sha256:
        return [f"{where}: checksum mismatch ({nbytes} bytes, sha256 {digest[:12]}; "
                f"recorded {record.nbytes} bytes, {record.sha256[:12]})"]
    problems = []
    if record.sample_shape != info.sample_shape or np.dtype(record.dtype) != info.dtype:
        problems.append(f"{where}: recorded {record.dtype} {list(record.sample_shape)} but the array is "
                        f"{info.dtype.str} {list(info.sample_shape)}")
    stray = set(record.failed) - set(meta.plans[shard].keys)
    if stray:
        problems.append(f"{where}: failed keys not in this shard: {sorted(stray)[:3]}")
    try:
        data = reader.read_shard(array_id, shard)  # each sample's crc32c and identity digest
    except StoreCorruption as exc:
        return problems + [f"{where}: {exc.finding}"]
    except Exception as exc:  # noqa: BLE001 - any decode failure is a finding, not a crash
        return problems + [f"{where}: cannot be decoded: {exc}"]
    if np.issubdtype(data.dtype, np.floating):
        bad = int(data.size - np.count_nonzero(np.isfinite(data)))
        if bad:
            problems.append(f"{where}: {bad} NaN/Inf values")
    return problems


def _check_tar_digest(meta: StoreMeta, shard: int) -> list[str]:
    """The tar against its digest record (`wds/NNNNNN.json`); stores of layout 1 wrote none."""
    path, record = meta.paths.tar(shard), meta.tars.get(shard)
    if record is None:
        if meta.attrs["feature_cache"].get("layout_version", 1) < 2:
            return []
        return [f"{path.name}: no digest record {path.with_suffix('.json').name} (export interrupted?); "
                "export the shard again"]
    if not path.is_file():
        return [f"{path.name}: missing, but {path.with_suffix('.json').name} records it"]
    nbytes, digest = file_sha256(path)
    if (nbytes, digest) != (record.nbytes, record.sha256):
        return [f"{path.name}: checksum mismatch ({nbytes} bytes, sha256 {digest[:12]}; "
                f"recorded {record.nbytes} bytes, {record.sha256[:12]})"]
    return []


def _check_tar(meta: StoreMeta, path: Path) -> list[str]:
    shard = int(path.stem)
    if shard >= len(meta.plans):
        return [f"{path.name}: shard {shard} is not planned"]
    digest_problems = _check_tar_digest(meta, shard)
    if digest_problems:
        return digest_problems
    planned = set(k for k in meta.plans[shard].keys if k is not None)
    fields: dict[str, set[str]] = {}
    try:
        with path.open("rb") as fh, tarfile.open(fileobj=fh) as tar:
            for name in tar.getnames():
                stem, _, field = name.partition(".")
                fields.setdefault(decode_key(stem), set()).add(field)
    except (tarfile.TarError, ValueError, OSError) as exc:
        return [f"{path.name}: unreadable: {exc}"]
    problems = [f"{path.name}: key {k!r} is not in shard {shard}" for k in sorted(set(fields) - planned)[:3]]
    shapes = {frozenset(v) for v in fields.values()}
    if len(shapes) > 1 or any("json" not in v for v in fields.values()):
        problems.append(f"{path.name}: samples do not all carry the same fields and a .json")
    return problems


def _array_problems(meta: StoreMeta) -> list[Problem]:
    """Arrays whose metadata cannot be trusted. With its sealed creation spec intact, the next extract
    rewrites the array's zarr.json from it (its shards are kept); otherwise its records are withdrawn,
    and the next extract creates the array again and computes its shards."""
    problems = []
    for array_id, damaged in sorted(meta.damaged_arrays.items()):
        message = f"array {array_id!r}: {damaged.reason}"
        if damaged.spec is None and damaged.recorded:
            problems += [Problem(f"{message}; its shard {shard} cannot be proven", "record", shard=shard,
                                 array_id=array_id) for shard in damaged.recorded]
        else:
            then = "rewrites it from the array's creation spec" if damaged.spec is not None else "creates it again"
            problems.append(Problem(f"{message} (the next extract {then})", "extract", array_id=array_id))
    return problems


def check_store(path: str | Path, *, require_complete: bool = True, progress: bool = False) -> list[Problem]:
    """Problems found in the store at `path`, each with its fix (`stages.store.repair`); empty =
    healthy. With `require_complete`, a planned shard without a completion record for some array is
    a problem too (fixed by extracting). `progress`: a bar over the shards on stderr."""
    try:  # inspection: the store is checked against itself; its damaged arrays are findings
        reader = StoreReader(path, expect=None, array_ids=StoreMeta.load(path, expect=None).array_ids)
    except EditedShardSize as exc:
        return [Problem(str(exc), "group")]
    except Exception as exc:  # noqa: BLE001
        return [Problem(f"cannot open store {path}: {exc}", "none")]
    meta = reader.meta
    disputed = index_disagreements(meta)
    problems = [Problem(m, "none") for m in _check_header(meta)] + structural_problems(meta)
    problems += _array_problems(meta) + disputed + leftover_problems(meta)
    needed = len(meta.plans) * meta.shard_size
    wrong_index = set(meta.damaged_index) | {p.shard for p in disputed}  # the rows' identities need their keys
    intact = [p.index for p in meta.plans if p.index not in wrong_index]  # others: their index first
    tars = [s for s in sorted({*meta.tars, *(int(t.stem) for t in meta.paths.wds.glob("[0-9]*.tar"))})
            if s in intact]
    bar = tqdm(total=len(meta.infos) * len(intact) + len(tars), unit="shard", desc="verify", file=sys.stderr,
               disable=not progress, dynamic_ncols=True)
    for array_id, info in meta.infos.items():
        if info.n_rows < needed:
            problems.append(Problem(f"array {array_id!r}: {info.n_rows} rows; the index needs {needed}", "none"))
        for shard in intact:
            if meta.is_complete(array_id, shard):  # any finding: computing the shard again rewrites it
                problems += [Problem(m, "record", shard=shard, array_id=array_id)
                             for m in _check_shard(reader, array_id, shard)]
            elif require_complete:
                problems.append(Problem(f"array {array_id!r} shard {shard}: not complete", "extract", shard=shard))
            bar.update()
    for shard in tars:
        tar = meta.paths.tar(shard)
        found = _check_tar(meta, tar) if tar.is_file() else _check_tar_digest(meta, shard)
        problems += [Problem(m, "shard", shard=shard) for m in found]
        bar.update()
    bar.close()
    return problems


def verify_store(path: str | Path, *, require_complete: bool = True) -> list[str]:
    """The messages of `check_store` (empty list = healthy)."""
    return [p.message for p in check_store(path, require_complete=require_complete)]
