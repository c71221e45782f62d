"""Names inside a store: the tar-safe sample-key encoding and the rules for array ids.

webdataset splits a tar member name at the first '.' of its basename into the sample key and the
field, and tar paths treat '/' as a directory separator. Sample keys are LLaVA image paths
(`coco/train2017/000000033471.jpg`, possibly with spaces or non-ASCII), so in tar names every UTF-8
byte outside `[A-Za-z0-9_-]` is written as `%XX` (upper-case hex). The encoding is injective and
`urllib.parse.unquote` reverses it.
"""
from __future__ import annotations

import re

__all__ = ["encode_key", "decode_key", "check_array_id", "check_key"]

_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_ENCODED = re.compile(r"(?:[A-Za-z0-9_-]|%[0-9A-F]{2})+")


def check_key(key: object) -> str:
    """A sample key must be a non-empty str (no further rules: it is opaque)."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"sample keys must be non-empty strings, got {key!r}")
    return key


def encode_key(key: str) -> str:
    """`coco/train2017/0001.jpg` -> `coco%2Ftrain2017%2F0001%2Ejpg` (no '.', '/', spaces or non-ASCII)."""
    raw = check_key(key).encode("utf-8")
    return "".join(chr(b) if b in _SAFE else f"%{b:02X}" for b in raw)


def decode_key(encoded: str) -> str:
    """Inverse of `encode_key`; rejects strings `encode_key` cannot produce."""
    if not _ENCODED.fullmatch(encoded):
        raise ValueError(f"{encoded!r} is not an encoded sample key (expected [A-Za-z0-9_-] and %XX)")
    data = bytearray()
    i = 0
    while i < len(encoded):
        if encoded[i] == "%":
            data.append(int(encoded[i + 1:i + 3], 16))
            i += 3
        else:
            data.append(ord(encoded[i]))
            i += 1
    return data.decode("utf-8")


def check_array_id(array_id: object) -> str:
    """Array ids (`U-L1-R1-B0-Cross-Q@t50:caption`, `latents`) are opaque but must be valid zarr v3
    node names and single path components: non-empty, no '/', '\\' or control characters, not
    '.'/'..', not starting with '__' (reserved by zarr) or '.' (hidden files)."""
    if (not isinstance(array_id, str) or not array_id or array_id.startswith((".", "__"))
            or any(c in array_id for c in "/\\") or any(ord(c) < 32 for c in array_id)):
        raise ValueError(f"invalid array id {array_id!r}: it must be a non-empty single path component "
                         "without '/', '\\' or control characters, not starting with '.' or '__'")
    return array_id
