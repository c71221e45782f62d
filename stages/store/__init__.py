"""The feature cache store: fingerprinted, sharded zarr v3 arrays plus an optional webdataset export.

Layout and reading without this package: docs/store.md. Writers use `CacheStore`; the trainer uses
`StoreReader`; `verify_store`, `list_caches` and `convert_store` back the `verify` and `caches` commands.
All of them read a store's metadata through `StoreMeta` (stages/store/meta.py), checked against the
fingerprint the caller expects. Compact feature dtypes (int8, float8_e4m3fn): `stages.store.compact`.
"""
from stages.store.arrays import COMPRESSIONS, DEFAULT_COMPRESSION
from stages.store.compact import COMPACT
from stages.store.fingerprint import (Fingerprint, FingerprintMismatch, contract_fields, diff_fields,
                                      weights_hash)
from stages.store.keys import decode_key, encode_key
from stages.store.layout import ShardPlan
from stages.store.meta import StoreDamaged, StoreMeta, StoreNotFound
from stages.store.records import CompletionRecord, TarRecord
from stages.store.reader import KeyNotInStore, StoreCorruption, StoreReader
from stages.store.registry import CacheInfo, find_store, list_caches
from stages.store.verify import verify_store
from stages.store.writer import DEFAULT_SHARD_SIZE, CacheStore
from stages.store.convert import convert_store

__all__ = ["Fingerprint", "FingerprintMismatch", "contract_fields", "diff_fields", "weights_hash",
           "CacheStore", "ShardPlan", "StoreMeta", "CompletionRecord", "TarRecord", "StoreReader", "KeyNotInStore",
           "StoreCorruption", "StoreDamaged", "StoreNotFound", "CacheInfo", "find_store", "list_caches", "verify_store",
           "encode_key", "decode_key", "COMPRESSIONS", "DEFAULT_COMPRESSION", "DEFAULT_SHARD_SIZE", "COMPACT",
           "convert_store"]
