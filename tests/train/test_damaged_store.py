"""Training never trains on a damaged store: each kind of damage stops `train` with one line (no
traceback) saying what is wrong, at the latest when the damaged sample would be read."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from stages.store import CacheStore, Fingerprint, StoreMeta
from train.cli import main

SD_ARRAY = "U-L1-R1-B0-Cross-Q@t50"


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    path.write_bytes(bytes(data))


def _shard(store: Path, shard: int) -> Path:
    return store / "zarr" / SD_ARRAY / "c" / str(shard) / "0" / "0"


def _swap_shard_files(store: Path) -> None:
    first, second = _shard(store, 0).read_bytes(), _shard(store, 1).read_bytes()
    _shard(store, 0).write_bytes(second)
    _shard(store, 1).write_bytes(first)


def _swap_samples(store: Path) -> None:
    """Rows 0 <-> 3 and 1 <-> 2 of shard 0 (the run reads some of them), each with its crc32c."""
    chunk = StoreMeta.load(store, expect=None).infos[SD_ARRAY].chunk_nbytes + 4
    blob = _shard(store, 0).read_bytes()
    rows = [blob[i * chunk:(i + 1) * chunk] for i in range(4)]
    _shard(store, 0).write_bytes(b"".join(reversed(rows)) + blob[4 * chunk:])


def _foreign_shard(store: Path) -> None:
    """Shard 0 and its completion record from a store of the same keys and shapes made with another seed."""
    meta = StoreMeta.load(store, expect=None)
    fields = {**meta.fingerprint.fields, "noise": {**meta.fingerprint.fields["noise"], "seed": 1}}
    other = CacheStore.open_or_create(store.parent.parent / "other", fingerprint=Fingerprint.from_fields(fields),
                                      shard_size=meta.shard_size)
    other.add_keys([k for k in meta.plans[0].keys if k is not None])
    info = meta.infos[SD_ARRAY]
    other.ensure_array(SD_ARRAY, sample_shape=info.sample_shape, dtype=info.dtype.name)
    values = np.random.default_rng(1).standard_normal((meta.shard_size, *info.sample_shape)).astype(info.dtype)
    other.write_shard(0, {SD_ARRAY: values})
    shutil.copyfile(_shard(other.path, 0), _shard(store, 0))
    shutil.copyfile(other.path / "done" / SD_ARRAY / "000000.json", store / "done" / SD_ARRAY / "000000.json")


def _edit_json(path: Path, edit) -> None:
    document = json.loads(path.read_text())
    edit(document)
    path.write_text(json.dumps(document))


def _edit_array(edit):
    return lambda store: _edit_json(store / "zarr" / SD_ARRAY / "zarr.json", edit)


def _link_wds(store: Path) -> None:
    outside = store.parent.parent / "outside"
    outside.mkdir()
    (store / "wds").symlink_to(outside, target_is_directory=True)


DAMAGE = {
    "flipped bytes in a shard": lambda s: _flip(_shard(s, 0)),
    "deleted shard file": lambda s: _shard(s, 0).unlink(),
    "zero-length shard file": lambda s: _shard(s, 0).write_bytes(b""),
    "truncated index": lambda s: (s / "index" / "000000.json").write_text('{"shard": 0, "fir'),
    "deleted completion record": lambda s: (s / "done" / SD_ARRAY / "000000.json").unlink(),
    "swapped shard files": _swap_shard_files,
    "samples swapped in a shard": _swap_samples,
    "shard from a store with another seed": _foreign_shard,
    "edited dtype": _edit_array(lambda d: d.update(data_type="int16")),
    "edited sample shape": _edit_array(lambda d: d.update(shape=[d["shape"][0], *reversed(d["shape"][1:])])),
    "edited shard size of the array": _edit_array(
        lambda d: d["chunk_grid"]["configuration"]["chunk_shape"].__setitem__(0, 2)),
    "edited shard size of the store": lambda s: _edit_json(
        s / "zarr" / "zarr.json", lambda d: d["attributes"]["feature_cache"].update(shard_size=2)),
    "deleted array directory": lambda s: shutil.rmtree(s / "zarr" / SD_ARRAY),
    "invalid fingerprint.json": lambda s: (s / "fingerprint.json").write_text("{"),
    "invalid array zarr.json": lambda s: (s / "zarr" / SD_ARRAY / "zarr.json").write_text("{"),
    "directory link inside the store": _link_wds,
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_training_refuses_a_damaged_store_with_one_line(damage, train_store, tmp_path, capsys):
    cache_root = Path(shutil.copytree(train_store.cache_root, tmp_path / "cache"))
    DAMAGE[damage](cache_root / train_store.path.name)
    out = tmp_path / "run"
    status = main(["pretrain", f"data.extract_configs=[{train_store.extract_yaml}]", f"data.cache_root={cache_root}",
                   f"data.data_path={train_store.pretrain_json}", "data.num_workers=0",
                   "data.group_by_modality_length=false", f"output_dir={out}", "max_steps=2",
                   "per_device_batch_size=2", "max_length=64", "precision=fp32", "report_to=none",
                   "data.missing=error"])  # skip (the default) trains on the rest of a shard whose record is gone
    err = capsys.readouterr().err
    said = [line for line in err.splitlines()  # besides progress bars and the status lines of phases ("… …")
            if line.startswith("train pretrain: ") and not line.endswith(" …")]
    assert status != 0 and len(said) == 1 and "Traceback" not in err, err
    assert not (out / "final").exists()  # the run did not finish on damaged data
