"""Identity on every read: a sample must be *the* sample (store, array, row, key), not only intact bytes.

Each damage keeps every crc32c intact; the reader refuses it naming store, array, shard and key, and
`verify` names it with a fix that `repair` acts on (`record`: withdraw, the next extract computes it)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import google_crc32c
import numpy as np
import pytest

from stages.store import CacheStore, Fingerprint, StoreCorruption, StoreMeta, StoreReader, verify_store
from stages.store.verify import check_store
from tests.stages.store.test_integrity import SAMPLE_NBYTES, shard0
from tests.stages.store.test_legacy_store import LEGACY, PINNED
from tests.stages.store.test_store import FEATURE, KEYS, SHAPE, shard_data

SEED0 = Fingerprint.from_fields({"weights": {"unet": "a" * 64}, "noise": {"seed": 0, "trials": 1}})
SEED1 = Fingerprint.from_fields({"weights": {"unet": "a" * 64}, "noise": {"seed": 1, "trials": 1}})
CHUNK = SAMPLE_NBYTES + 4  # one inner chunk: the sample's bytes, then their crc32c


def make(root: Path, fingerprint: Fingerprint = SEED0) -> CacheStore:
    """A store of `KEYS` whose values depend on the fingerprint, as a real store's do."""
    store = CacheStore.open_or_create(root, fingerprint=fingerprint, shard_size=4)
    store.add_keys(KEYS)
    store.ensure_array(FEATURE, sample_shape=SHAPE)
    for plan in store.shards():
        store.write_shard(plan.index, {FEATURE: shard_data(f"{fingerprint.short}/{FEATURE}", plan.index, 4)})
    return store


@pytest.fixture()
def store(tmp_path: Path) -> CacheStore:
    return make(tmp_path / "cache")


def shard_file(store: CacheStore, shard: int) -> Path:
    return store.path / "zarr" / FEATURE / "c" / str(shard) / "0" / "0"


def refused_naming(store: CacheStore, shard: int, keys: list[str]) -> str:
    """The reader's refusal of `keys` (in `shard`), checked to name store, array, shard and the keys."""
    with pytest.raises(StoreCorruption) as exc:
        StoreReader(store.path, expect=store.fingerprint).read(KEYS)
    message = str(exc.value)
    for part in (str(store.path), repr(FEATURE), f"shard {shard}", *map(repr, keys), "--repair", "just extract"):
        assert part in message, (part, message)
    return message


def findings(store: CacheStore) -> list[tuple[str, int | None, str | None, str]]:
    return [(p.fix, p.shard, p.array_id, p.message) for p in check_store(store.path)]


def test_records_carry_the_documented_identity_digest_of_every_row(store: CacheStore) -> None:
    record = json.loads((store.path / "done" / FEATURE / "000000.json").read_text())
    blob = shard_file(store, 0).read_bytes()
    for row, key in enumerate(KEYS[:4]):  # docs/store.md: crc32c(values) ^ crc32c(identity text)
        stored_crc = int.from_bytes(blob[row * CHUNK + SAMPLE_NBYTES:(row + 1) * CHUNK], "little")
        text = f"{SEED0.full}\n{FEATURE}\nfloat16\n{SHAPE[0]}x{SHAPE[1]}\n{row}\n{key}".encode()
        assert record["identity"][row] == stored_crc ^ google_crc32c.value(text)


def test_swapped_shard_files_of_an_array_are_refused_and_found(store: CacheStore) -> None:
    first, second = shard_file(store, 0).read_bytes(), shard_file(store, 1).read_bytes()
    shard_file(store, 0).write_bytes(second)
    shard_file(store, 1).write_bytes(first)
    assert "identity digest mismatch" in refused_naming(store, 0, KEYS[:4])
    found = findings(store)
    assert {(fix, shard, array) for fix, shard, array, _ in found} == {("record", 0, FEATURE), ("record", 1, FEATURE)}


def test_two_samples_swapped_inside_a_shard_crcs_included_are_refused_and_found(store: CacheStore) -> None:
    blob = bytearray(shard_file(store, 0).read_bytes())
    one, two = bytes(blob[CHUNK:2 * CHUNK]), bytes(blob[2 * CHUNK:3 * CHUNK])  # rows 1 and 2, each with its crc
    blob[CHUNK:2 * CHUNK], blob[2 * CHUNK:3 * CHUNK] = two, one
    shard_file(store, 0).write_bytes(bytes(blob))
    message = refused_naming(store, 0, KEYS[1:3])
    assert repr(KEYS[0]) not in message and repr(KEYS[3]) not in message  # only the moved samples
    assert [(fix, shard) for fix, shard, _, _ in findings(store)] == [("record", 0)]


@pytest.mark.parametrize("with_record", [True, False], ids=["with its record", "file only"])
def test_a_same_shape_shard_from_a_store_with_another_seed_is_refused_and_found(
        store: CacheStore, tmp_path: Path, with_record: bool) -> None:
    foreign = make(tmp_path / "other", SEED1)
    shutil.copyfile(shard_file(foreign, 0), shard_file(store, 0))
    if with_record:  # the record copied along proves the bytes by sha256, but not whose they are
        shutil.copyfile(foreign.path / "done" / FEATURE / "000000.json", store.path / "done" / FEATURE / "000000.json")
    refused_naming(store, 0, KEYS[:4])
    found = findings(store)
    assert [(fix, shard, array) for fix, shard, array, _ in found] == [("record", 0, FEATURE)]
    assert with_record is ("identity digest" in found[0][3])  # else the sha256 against its record finds it


def test_a_store_written_before_identity_digests_is_checked_by_sha256_and_upgrades(store: CacheStore) -> None:
    records = sorted((store.path / "done" / FEATURE).glob("*.json"))
    written = {p: p.read_text() for p in records}
    for path in records:
        path.write_text(json.dumps({k: v for k, v in json.loads(written[path]).items() if k != "identity"}))
    reader = StoreReader(store.path, expect=SEED0)
    before = reader.read(KEYS)[FEATURE]
    first, second = shard_file(store, 0).read_bytes(), shard_file(store, 1).read_bytes()
    shard_file(store, 0).write_bytes(second)
    shard_file(store, 1).write_bytes(first)
    with pytest.raises(StoreCorruption, match="sha256"):
        StoreReader(store.path, expect=SEED0).read(KEYS)
    skipped = CacheStore.open(store.path, fingerprint=SEED0).add_identity()  # damaged shards are not upgraded
    assert [line.split(":")[0] for line in skipped] == [f"array {FEATURE!r} shard 0", f"array {FEATURE!r} shard 1"]
    assert ["identity" in json.loads(p.read_text()) for p in records] == [False, False, True]
    shard_file(store, 0).write_bytes(first)
    shard_file(store, 1).write_bytes(second)
    assert CacheStore.open(store.path, fingerprint=SEED0).add_identity() == []
    assert {p: json.loads(p.read_text())["identity"] for p in records} == {
        p: json.loads(written[p])["identity"] for p in records}  # what the writer records
    np.testing.assert_array_equal(StoreReader(store.path, expect=SEED0).read(KEYS)[FEATURE], before)


def test_a_layout_1_store_upgrades_and_then_checks_the_identity_of_every_sample(tmp_path: Path) -> None:
    legacy = Path(shutil.copytree(LEGACY / PINNED[:16], tmp_path / PINNED[:16]))
    fingerprint = StoreMeta.load(legacy, expect=None).fingerprint
    before = StoreReader(legacy, expect=fingerprint).read_shard(FEATURE, 0)
    assert CacheStore.open(legacy, fingerprint=fingerprint).add_identity() == [] and verify_store(legacy) == []
    reader = StoreReader(legacy, expect=fingerprint)
    np.testing.assert_array_equal(reader.read_shard(FEATURE, 0), before)
    chunk = reader.infos[FEATURE].chunk_nbytes  # layout 1: no crc32c after the values
    blob = shard0(legacy).read_bytes()
    shard0(legacy).write_bytes(blob[chunk:2 * chunk] + blob[:chunk] + blob[2 * chunk:])  # rows 0 and 1 swapped
    with pytest.raises(StoreCorruption, match="identity digest mismatch"):
        StoreReader(legacy, expect=fingerprint).read_shard(FEATURE, 0)
