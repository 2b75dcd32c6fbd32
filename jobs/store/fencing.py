"""A store whose writes happen only while a lease is held.

A worker wraps the store it hands to a running job in :class:`FencedStore`. Every write (put,
upload, delete) first calls ``check``, which renews the job's lease and raises
:class:`~jobs.errors.LeaseLost` once another worker has acquired the job; reads pass straight
through. So a worker that wakes from a pause longer than its lease (SIGSTOP, a stalled node) stops
at its first write, and everything it would have written (a checkpoint, metrics, predictions,
``result.json``) stays the new holder's.

The check renews the lease, so a write that follows it has a whole lease TTL to land before any
other worker could acquire the job; only a pause of more than a TTL between the check and the
request itself is not covered (S3 has no conditional write keyed on a token).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import BinaryIO

from jobs.store.backends import ObjectInfo, Store


class FencedStore(Store):
    def __init__(self, inner: Store, check: Callable[[], None]):
        self.inner, self.check = inner, check
        self.uri = inner.uri

    # reads
    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def open(self, key: str) -> BinaryIO:
        return self.inner.open(key)

    def get_bytes(self, key: str) -> bytes:
        return self.inner.get_bytes(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    # writes: only while the lease is held
    def put_bytes(self, key: str, data: bytes) -> None:
        self.check()
        self.inner.put_bytes(key, data)

    def put_file(self, key: str, path: str | os.PathLike) -> None:
        self.check()
        self.inner.put_file(key, path)

    def delete(self, key: str) -> None:
        self.check()
        self.inner.delete(key)
