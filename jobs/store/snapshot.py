"""A read-only view of one prefix of a store: one listing per look, reads only of what changed.

``status``, ``wait`` and the fan-in ask about every run of a study: up to four records per run.
Against the store itself that is a request per record per poll, seconds per poll for a 500-run study
on S3. A :class:`Snapshot` answers the same questions (it is a :class:`~jobs.store.backends.Store`
for reading, so :func:`jobs.store.records.run_state` and the rest take it as they take a store):

- :meth:`Snapshot.refresh` lists the prefix once: every key with its size and version (an S3
  ETag, a local file's mtime and size);
- ``exists`` answers from that listing, with no request;
- ``get_bytes`` reads an object only when its version differs from the copy it read before; the
  records of a poll are fetched in parallel (:meth:`Snapshot.prefetch`). That takes versions that
  change with the bytes (S3 ETags); over a local store, whose file times may repeat within one
  clock tick, every look reads the records again (a local read costs what a copy would).

So a poll of a study whose runs did not change costs one listing (a page per 1,000 objects), and
``wait`` reads only the progress files that moved. A snapshot may keep its copies on disk between
processes (``cache_file``), so one ``cxrstudy status`` after another reads only what changed too.
Keys outside the prefix go to the store itself.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from jobs.errors import NoSuchObject
from jobs.store.backends import ObjectInfo, Store

# What a snapshot copies: the small JSON records (study.json, result.json, progress.json, ...),
# never checkpoints, predictions or figures.
CACHED_SUFFIX = ".json"
CACHED_MAX_BYTES = 4 << 20


class Snapshot(Store):
    """The objects under ``prefix`` (ending in ``/``) of ``store``, as of the last :meth:`refresh`."""

    def __init__(self, store: Store, prefix: str, cache_file: str | os.PathLike | None = None, threads: int = 16):
        if not prefix.endswith("/"):
            raise ValueError(f"a snapshot's prefix ends in '/': {prefix!r}")
        self.store, self.prefix, self.threads = store, prefix, threads
        self.uri = store.uri
        self.versions_reliable = store.versions_reliable
        self.listing: dict[str, ObjectInfo] = {}
        self._fresh: set[str] = set()
        self.copies: dict[str, tuple[str, bytes]] = {}  # key -> (version, bytes)
        self.requests = {"list": 0, "get": 0}
        self.cache_file = Path(cache_file) if cache_file else None
        self._load_cache()

    # --- one look ----------------------------------------------------------------------------------
    def refresh(self, prefetch: bool = True) -> Snapshot:
        """List the prefix once; with ``prefetch``, read every changed record (in parallel) now."""
        self.requests["list"] += 1
        self.listing = {o.key: o for o in self.store.list(self.prefix)}
        self.copies = {k: v for k, v in self.copies.items() if k in self.listing}
        self._fresh = set()  # read since this listing: current whatever the store's versions
        if prefetch:
            self.prefetch()
        return self

    def prefetch(self, wanted: Callable[[str], bool] | None = None) -> None:
        """Read, in parallel, every listed record whose copy is missing or out of date."""
        stale = [
            o.key
            for o in self.listing.values()
            if o.key.endswith(CACHED_SUFFIX)
            and o.size <= CACHED_MAX_BYTES
            and (wanted is None or wanted(o.key))
            and not self._current(o.key, o.version)
        ]
        if not stale:
            return
        if len(stale) == 1 or self.threads <= 1:
            for key in stale:
                self._fetch(key)
        else:
            with ThreadPoolExecutor(min(self.threads, len(stale))) as ex:
                list(ex.map(self._fetch, stale))
        self._save_cache()

    def _fetch(self, key: str) -> bytes | None:
        version = self.listing[key].version
        self.requests["get"] += 1
        try:
            data = self.store.get_bytes(key)
        except NoSuchObject:  # removed since the listing
            self.copies.pop(key, None)
            return None
        self.copies[key] = (version, data)
        self._fresh.add(key)
        return data

    def _current(self, key: str, version: str) -> bool:
        """The copy of ``key`` is the listed version: never for a store whose versions can repeat (a
        local file rewritten within one clock tick) or an object listed without one."""
        copy = self.copies.get(key)
        if copy is None or copy[0] != version:
            return False
        return key in self._fresh or (self.versions_reliable and bool(version))

    def _inside(self, key: str) -> bool:
        return key.startswith(self.prefix)

    # --- the reading half of Store ------------------------------------------------------------------
    def exists(self, key: str) -> bool:
        return key in self.listing if self._inside(key) else self.store.exists(key)

    def get_bytes(self, key: str) -> bytes:
        if not self._inside(key):
            return self.store.get_bytes(key)
        info = self.listing.get(key)
        if info is None:
            raise NoSuchObject(f"{self.url(key)} does not exist")
        if self._current(key, info.version):
            return self.copies[key][1]
        data = self._fetch(key)
        if data is None:
            raise NoSuchObject(f"{self.url(key)} does not exist")
        return data

    def open(self, key: str) -> BinaryIO:
        return io.BytesIO(self.get_bytes(key)) if self._inside(key) else self.store.open(key)

    def list(self, prefix: str = ""):
        if prefix.startswith(self.prefix):
            return iter([o for k, o in sorted(self.listing.items()) if k.startswith(prefix)])
        return self.store.list(prefix)

    # --- copies kept between processes ---------------------------------------------------------------
    def _load_cache(self) -> None:
        if self.cache_file is None:
            return
        try:
            doc = json.loads(self.cache_file.read_text())
            if doc.get("uri") == self.uri and doc.get("prefix") == self.prefix:
                self.copies = {k: (v, text.encode("utf-8")) for k, (v, text) in doc["copies"].items()}
        except (OSError, ValueError, TypeError, AttributeError, KeyError):
            self.copies = {}  # no cache, or one that cannot be read: read from the store

    def _save_cache(self) -> None:
        if self.cache_file is None:
            return
        copies = {}
        for key, (version, data) in self.copies.items():
            try:
                copies[key] = (version, data.decode("utf-8"))
            except UnicodeDecodeError:
                continue
        try:
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.cache_file.with_name(f".{self.cache_file.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"uri": self.uri, "prefix": self.prefix, "copies": copies}))
            os.replace(tmp, self.cache_file)
        except OSError:
            pass  # a cache that cannot be written costs reads next time, nothing else
