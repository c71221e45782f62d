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
