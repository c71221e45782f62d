"""Training never trains on a damaged store: each kind of damage stops `train` with one line (no
traceback) saying what is wrong, at the latest when the damaged sample would be read."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from train.cli import main

SD_ARRAY = "U-L1-R1-B0-Cross-Q@t50"


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    path.write_bytes(bytes(data))


DAMAGE = {
    "flipped bytes in a shard": lambda s: _flip(s / "zarr" / SD_ARRAY / "c" / "0" / "0" / "0"),
    "deleted shard file": lambda s: (s / "zarr" / SD_ARRAY / "c" / "0" / "0" / "0").unlink(),
    "truncated index": lambda s: (s / "index" / "000000.json").write_text('{"shard": 0, "fir'),
    "deleted completion record": lambda s: (s / "done" / SD_ARRAY / "000000.json").unlink(),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_training_refuses_a_damaged_store_with_one_line(damage, train_store, tmp_path, capsys):
    cache_root = Path(shutil.copytree(train_store.cache_root, tmp_path / "cache"))
    DAMAGE[damage](cache_root / train_store.path.name)
    out = tmp_path / "run"
    status = main(["pretrain", f"data.extract_configs=[{train_store.extract_yaml}]", f"data.cache_root={cache_root}",
                   f"data.data_path={train_store.pretrain_json}", "data.num_workers=0",
                   "data.group_by_modality_length=false", f"output_dir={out}", "max_steps=2",
                   "per_device_batch_size=2", "max_length=64", "precision=fp32", "tensorboard=false"])
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if line.startswith("train pretrain: ")]  # besides progress bars
    assert status != 0 and len(said) == 1 and "Traceback" not in err, err
    assert not (out / "final").exists()  # the run did not finish on damaged data
