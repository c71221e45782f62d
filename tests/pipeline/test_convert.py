"""`just caches --convert STORE feature_dtype=DTYPE` (`stages.store.convert`): a float16 store converted to a
compact dtype is, byte for byte, the store `just extract` writes with that dtype; it resumes, and refuses
what it cannot convert with one line."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.store_cli import caches_main
from stages.store import CacheStore, Fingerprint, StoreReader
from stages.store.convert import convert_store


def _files(store: Path) -> dict[str, bytes | dict]:
    """The files of a store's layout (docs/store.md) but the group's zarr.json (it holds its creation time),
    records without their `written` time."""
    out: dict[str, bytes | dict] = {}
    for sub in ("zarr", "index", "done", "wds"):
        for path in sorted(p for p in (store / sub).rglob("*") if p.is_file()):
            name = path.relative_to(store).as_posix()
            if sub in ("done", "wds") and path.suffix == ".json":
                out[name] = {k: v for k, v in json.loads(path.read_text()).items() if k != "written"}
            elif name != "zarr/zarr.json":
                out[name] = path.read_bytes()
    return out


def _copy(store: Path, root: Path) -> Path:
    return Path(shutil.copytree(store, root / store.name))


def test_converting_the_float16_store_gives_the_int8_extractions_bytes_and_resumes(train_store, train_store_int8,
                                                                                   tmp_path) -> None:
    source = _copy(train_store.path, tmp_path)
    assert caches_main(["--convert", str(source), "feature_dtype=int8"]) == 0
    converted = source.parent / train_store_int8.path.name  # the store extraction with int8 fills
    want = _files(train_store_int8.path)
    assert any(name.endswith(".scale/c/0/0/0") for name in want) and _files(converted) == want
    record = converted / "done" / "U-L1-R1-B0-Cross-Q@t50.scale" / "000001.json"
    record.unlink()  # an interrupted conversion: that shard is written again, the others are left alone
    untouched = (converted / "done" / "latents" / "000000.json").stat().st_mtime_ns
    convert_store(source, "int8", features=["U-L1-R1-B0-Cross-Q@t50", "U-L1-R1-B0-Cross-Q@t50:caption"])
    assert _files(converted) == want
    assert (converted / "done" / "latents" / "000000.json").stat().st_mtime_ns == untouched


def test_conversion_with_tars_and_failed_keys_writes_what_a_direct_write_of_the_float16_values_does(tmp_path) -> None:
    values = np.random.default_rng(0).standard_normal((8, 4, 16)).astype(np.float16)
    failed = {"k2": "unreadable"}

    def store(dtype: str, root: Path) -> CacheStore:
        out = CacheStore.open_or_create(root, fingerprint=Fingerprint.from_fields({"dtypes": {"features": dtype}}),
                                        shard_size=4)
        out.add_keys([f"k{i}" for i in range(7)])
        out.ensure_array("f", sample_shape=(4, 16), dtype=dtype)
        for plan in out.shards():
            rows = values[plan.rows.start:plan.rows.stop]
            out.write_shard(plan.index, {"f": rows}, {k: v for k, v in failed.items() if k in plan.keys},
                            export={"f": rows})
        return out

    direct = store("float8_e4m3fn", tmp_path / "direct")
    converted = convert_store(store("float16", tmp_path / "converted").path, "float8_e4m3fn", features=["f"])
    assert converted.name == direct.path.name and _files(converted) == _files(direct.path)
    reader = StoreReader(converted, expect=direct.fingerprint)
    assert "k2" not in reader.keys and reader.read(["k1"])["f"].dtype == np.float32


@pytest.mark.parametrize("setting, message", [
    ("feature_dtype=float16", "converting writes one of int8, float8_e4m3fn"),
    ("feature_dtype=int8", "already stores its features as int8"),
    ("feature_dtype=float8_e4m3fn", "stores its features as int8; only float16 stores are converted"),
    ("dtype=int8", "--convert takes a store and feature_dtype=<int8|float8_e4m3fn>"),
])
def test_caches_convert_refuses_what_it_cannot_convert_with_one_line(setting, message, train_store_int8,
                                                                     capsys) -> None:
    assert caches_main(["--convert", str(train_store_int8.path), setting]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in train_store_int8.cache_root.iterdir()) == [train_store_int8.path.name]

