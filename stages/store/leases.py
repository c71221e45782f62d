"""Exclusive leases on an object store: the object-store form of the store's locks (`stages.store.locks`).

Object stores have no `flock`. A lease is a small object created with a conditional PUT (`If-None-Match: *`,
obstore `mode="create"`): exactly one of several writers creates it. Its holder renews it every `ttl / 3`
seconds with a PUT conditional on the ETag it last wrote (`If-Match`, obstore `UpdateVersion`), so a
renewal fails if anyone else took it. A lease whose object was last written more than `ttl` ago (its
holder died: a killed worker, a lost node) is taken over the same way, conditionally on the ETag that was
read, so of two writers taking over one wins. The holder deletes it when done.

What this assumes (docs/store.md): the store honours conditional PUTs (S3 since 2024, GCS, Azure, MinIO,
moto); clocks agree to well within `ttl`; a holder that stalls longer than `ttl` without renewing (a
stopped process) has lost its lease — its renewal then fails and it stops writing at its next check
(`LeaseLost`), but a write already in flight still lands, which is why a shard's bytes are one PUT and its
completion record, written after, names their sha256.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import threading
import time
import uuid
from typing import Iterator

import obstore
from obstore.exceptions import AlreadyExistsError, PreconditionError

from stages.store.objects import ObjectPath

__all__ = ["lease", "LeaseLost", "LEASE_TTL"]

LEASE_TTL = 60.0  # seconds a lease outlives its last renewal
_POLL = 0.2  # seconds between attempts while another holder has it


class LeaseLost(RuntimeError):
    """Our lease was taken over (we stalled longer than its ttl) or deleted: stop writing."""


def _body(ttl: float) -> bytes:
    return json.dumps({"owner": f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}",
                       "ttl": ttl}).encode()


def _try_take(path: ObjectPath, ttl: float) -> str | None:
    """The ETag of the lease if we got it now (created, or taken over from a holder past its ttl), else None."""
    try:
        return obstore.put(path.store, path.key, _body(ttl), mode="create")["e_tag"]
    except AlreadyExistsError:
        pass
    try:
        meta = obstore.head(path.store, path.key)
    except FileNotFoundError:
        return None  # released meanwhile: try creating again
    age = (dt.datetime.now(dt.timezone.utc) - meta["last_modified"]).total_seconds()
    if age <= ttl:
        return None
    try:
        return obstore.put(path.store, path.key, _body(ttl), mode={"e_tag": meta["e_tag"]})["e_tag"]
    except (PreconditionError, FileNotFoundError):
        return None  # someone else took it over or released it first


class _Renewer(threading.Thread):
    def __init__(self, path: ObjectPath, e_tag: str, ttl: float) -> None:
        super().__init__(daemon=True, name=f"lease {path.name}")
        self.path, self.e_tag, self.ttl = path, e_tag, ttl
        self.stop = threading.Event()
        self.lost: str | None = None

    def run(self) -> None:
        while not self.stop.wait(self.ttl / 3):
            try:
                self.e_tag = obstore.put(self.path.store, self.path.key, _body(self.ttl),
                                         mode={"e_tag": self.e_tag})["e_tag"]
            except (PreconditionError, FileNotFoundError) as exc:
                self.lost = f"lease {self.path} was taken over or removed ({type(exc).__name__})"
                return


@contextlib.contextmanager
def lease(path: ObjectPath, *, ttl: float | None = None) -> Iterator[None]:
    """Hold the exclusive lease `path` for the block (waiting while another holder has a live one).
    `LeaseLost` at the end of the block if it was lost meanwhile. `ttl`: `LEASE_TTL` unless given."""
    ttl = LEASE_TTL if ttl is None else ttl
    while (e_tag := _try_take(path, ttl)) is None:
        time.sleep(_POLL)
    renewer = _Renewer(path, e_tag, ttl)
    renewer.start()
    try:
        yield
    finally:
        renewer.stop.set()
        renewer.join()
        if renewer.lost is None:
            try:  # only our own version: a holder that took it over keeps theirs
                if obstore.head(path.store, path.key)["e_tag"] == renewer.e_tag:
                    obstore.delete(path.store, path.key)
            except FileNotFoundError:
                pass
    if renewer.lost is not None:
        raise LeaseLost(renewer.lost)
