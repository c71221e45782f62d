"""A shard's tar has one byte layout: it does not depend on which arrays a run computed and which it read."""
from __future__ import annotations

import numpy as np

from stages.store.webdataset_shards import stage_tar_shard


def test_a_tar_is_the_same_bytes_whatever_order_its_arrays_arrive_in(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"latents": rng.standard_normal((3, 4, 2, 2)).astype(np.float32),
              "U-L1-R1-B0-Cross-Q@t50": rng.standard_normal((3, 4, 8)).astype(np.float16),
              "U-L1-R1-B0-Cross-Q@t50:caption": rng.standard_normal((3, 4, 8)).astype(np.float16)}
    keys, rows = ["a.jpg", "b.jpg", None], range(6, 9)
    written = []
    for order in (list(arrays), list(reversed(arrays))):  # as computed / as read back by a repair
        path = tmp_path / order[0].replace(":", "_") / "000002.tar"
        staged = stage_tar_shard(path, keys=keys, rows=rows, arrays={a: arrays[a] for a in order}, failed={},
                                 store="s")
        written.append(staged.read_bytes())
    assert written[0] == written[1]


def test_the_size_rule_is_the_size_of_the_tar_the_writer_writes(tmp_path):
    """`tar_shard_size` (what `extract --dry-run` counts) from keys and `.npy` sizes alone, for padding, a
    failed key, a non-ASCII key and names long enough for one and for two PAX header blocks."""
    from stages.store.webdataset_shards import npy_size, tar_shard_size

    keys = ["a.jpg", None, "failed.jpg", "é/ü" * 3 + ".png", "x" * 150 + ".jpg", "y/" * 300 + "z.jpg"]
    arrays = {"latents": np.ones((6, 4, 8, 8), np.float32), "U-L1-R1-B0-Cross-Q@t50": np.ones((6, 16, 32), np.float16)}
    staged = stage_tar_shard(tmp_path / "000003.tar", keys=keys, rows=range(18, 24), arrays=arrays,
                             failed={"failed.jpg": "too large"}, store="0123456789abcdef")
    valid = [None if k == "failed.jpg" else k for k in keys]
    sizes = {a: npy_size(v.shape[1:], v.dtype.name) for a, v in arrays.items()}
    assert tar_shard_size(valid, rows=range(18, 24), shard=3, npy_sizes=sizes,
                          store="0123456789abcdef") == staged.stat().st_size
