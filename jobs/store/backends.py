"""The object store: the source of truth for datasets, runs and reports.

One small interface, two backends:

- :class:`LocalStore` over a directory (the embedded default, and a dataset folder on disk);
- :class:`S3Store` over ``s3://bucket/prefix`` through boto3. Endpoint, region and credentials come
  from the standard AWS variables (``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` for a non-AWS
  server, ``AWS_REGION``, ``AWS_ACCESS_KEY_ID``, ``AWS_MAX_ATTEMPTS`` ...); a custom endpoint
  switches to path-style addressing, which MinIO, SeaweedFS and Ceph expect.

Keys are ``/``-separated and relative to the store's root, and never leave it: both backends refuse
an absolute key, or one with ``..``, ``.`` or empty segments (:func:`jobs.store.layout.key_problem`),
whoever built it. Reads can stream (:meth:`Store.open`);
writes are whole objects: a local write goes to a temporary file that is renamed into place, and an
S3 PUT is atomic, so a reader never sees a partial object under its final key.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from jobs.errors import NoSuchObject, StoreError
from jobs.store.layout import key_problem


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    version: str = ""  # changes whenever the object does: an S3 ETag, a local file's mtime and size


class Store:
    """What every backend provides. ``uri`` names the root, e.g. ``s3://bucket/prefix``."""

    uri: str
    # Whether an object's listed version changes whenever its bytes do (an S3 ETag does; a local
    # file's mtime may not, within one tick of the file system's clock).
    versions_reliable = False

    def url(self, key: str) -> str:
        return f"{self.uri.rstrip('/')}/{key}"

    def _checked(self, key: str, *, prefix: bool = False) -> str:
        """``key`` when it names something under the root; a StoreError naming it otherwise."""
        problem = key_problem(key, prefix=prefix)
        if problem:
            raise StoreError(f"{self.uri}: refused the key {key!r}: it {problem}; keys stay inside the store")
        return key

    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def open(self, key: str) -> BinaryIO:
        """A readable binary stream over the object (not loaded into memory first)."""
        raise NotImplementedError

    def get_bytes(self, key: str) -> bytes:
        with self.open(key) as fh:
            return fh.read()

    def put_bytes(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def put_file(self, key: str, path: str | os.PathLike) -> None:
        raise NotImplementedError

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, recursively, in key order."""
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def get_text(self, key: str) -> str:
        return self.get_bytes(key).decode("utf-8")

    def put_text(self, key: str, text: str) -> None:
        self.put_bytes(key, text.encode("utf-8"))


class LocalStore(Store):
    """A directory. Writes go to a temporary file in the same folder, then ``os.replace``."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()
        self.uri = str(self.root)

    def path(self, key: str, *, prefix: bool = False) -> Path:
        """The file of ``key``. Checked without following symlinks: a dataset folder whose images/
        is a link to another disk is still read."""
        full = Path(os.path.normpath(self.root / self._checked(key, prefix=prefix)))
        if not full.is_relative_to(self.root):
            raise StoreError(f"{self.uri}: refused the key {key!r}: it resolves outside the store")
        return full

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self.path(key), "rb")
        except FileNotFoundError:
            raise NoSuchObject(f"{self.url(key)} does not exist") from None

    def _write(self, key: str, writer) -> None:
        target = self.path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
        except OSError as exc:  # a read-only file system, a file where a folder should be, permissions
            raise StoreError(
                f"the store {self.root} is not writable ({exc.strerror or exc} in {target.parent}): "
                "pass a folder you can write to as --store (or CXRSTUDY_STORE)"
            ) from None
        try:
            with os.fdopen(fd, "wb") as fh:
                writer(fh)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put_bytes(self, key: str, data: bytes) -> None:
        self._write(key, lambda fh: fh.write(data))

    def put_file(self, key: str, path: str | os.PathLike) -> None:
        def copy(fh):
            with open(path, "rb") as src:
                while chunk := src.read(1 << 20):
                    fh.write(chunk)

        self._write(key, copy)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        base = self.path(self._checked(prefix, prefix=True).rpartition("/")[0], prefix=True)
        if not base.is_dir():
            return
        found = []
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if name.endswith(".partial"):
                    continue
                full = os.path.join(dirpath, name)
                key = os.path.relpath(full, self.root).replace(os.sep, "/")
                if key.startswith(prefix):
                    try:
                        st = os.stat(full)
                    except FileNotFoundError:  # removed while listing
                        continue
                    found.append(ObjectInfo(key, st.st_size, f"{st.st_mtime_ns}-{st.st_size}-{st.st_ino}"))
        yield from sorted(found, key=lambda o: o.key)

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)


def s3_client():
    """A boto3 S3 client from the standard AWS variables; path-style when a custom endpoint is set."""
    import boto3
    from botocore.config import Config

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    attempts = os.environ.get("AWS_MAX_ATTEMPTS") or "5"
    if not attempts.isdigit() or int(attempts) < 1:
        raise StoreError(f"AWS_MAX_ATTEMPTS={attempts!r}: must be a whole number, at least 1 (attempts per S3 request)")
    config = Config(
        s3={"addressing_style": "path" if endpoint else "auto"},
        # boto3's standard mode: 5xx, throttling and timeouts are retried with backoff, per request;
        # what still fails fails the job's attempt, which its worker retries later (worker.settings).
        retries={"total_max_attempts": int(attempts), "mode": "standard"},  # the first try included
        connect_timeout=10,
        read_timeout=120,
    )
    # A session per client: the default session caches credentials and is not thread-safe.
    return boto3.session.Session().client("s3", endpoint_url=endpoint or None, config=config)


class S3Store(Store):
    """``s3://bucket/prefix`` through boto3."""

    versions_reliable = True

    def __init__(self, uri: str, client=None):
        rest = uri[len("s3://") :]
        self.bucket, _, prefix = rest.partition("/")
        if not self.bucket:
            raise StoreError(f"{uri}: an S3 store needs a bucket: s3://BUCKET[/PREFIX]")
        self.prefix = prefix.strip("/")
        self.uri = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        self.client = client or s3_client()

    def _key(self, key: str, *, prefix: bool = False) -> str:
        self._checked(key, prefix=prefix)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, what: str, key: str, fn, *args, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

        try:
            return fn(*args, **kwargs)
        except NoCredentialsError:
            raise StoreError(
                f"{what} {self.url(key)}: no S3 credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(or AWS_PROFILE / a workload identity)"
            ) from None
        except EndpointConnectionError as exc:
            raise StoreError(
                f"{what} {self.url(key)}: cannot reach the S3 endpoint {exc.kwargs.get('endpoint_url')}; "
                "check AWS_ENDPOINT_URL_S3 (or AWS_ENDPOINT_URL) and that the server is up"
            ) from None
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise NoSuchObject(f"{self.url(key)} does not exist") from None
            if code == "NoSuchBucket":
                raise StoreError(
                    f"{what} {self.url(key)}: bucket '{self.bucket}' does not exist; create it first"
                ) from None
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "Forbidden"):
                raise StoreError(
                    f"{what} {self.url(key)}: S3 refused the credentials ({code}); check AWS_ACCESS_KEY_ID, "
                    "AWS_SECRET_ACCESS_KEY and the bucket policy"
                ) from None
            raise StoreError(f"{what} {self.url(key)}: S3 error {code}: {exc}") from None
        except BotoCoreError as exc:
            raise StoreError(f"{what} {self.url(key)}: {exc}") from None

    def exists(self, key: str) -> bool:
        try:
            self._call("HEAD", key, self.client.head_object, Bucket=self.bucket, Key=self._key(key))
            return True
        except NoSuchObject:
            return False

    def open(self, key: str) -> BinaryIO:
        resp = self._call("GET", key, self.client.get_object, Bucket=self.bucket, Key=self._key(key))
        return resp["Body"]  # a StreamingBody: read() in chunks, never buffered whole

    def put_bytes(self, key: str, data: bytes) -> None:
        self._call("PUT", key, self.client.put_object, Bucket=self.bucket, Key=self._key(key), Body=data)

    def put_file(self, key: str, path: str | os.PathLike) -> None:
        # upload_file switches to multipart for large files; the object appears only on completion.
        self._call("PUT", key, self.client.upload_file, str(path), self.bucket, self._key(key))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        full = self._key(prefix, prefix=True)
        paginator = self.client.get_paginator("list_objects_v2")
        strip = len(self.prefix) + 1 if self.prefix else 0
        pages = self._call("LIST", prefix, lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=full)))
        for page in pages:
            for obj in page.get("Contents", []):
                yield ObjectInfo(obj["Key"][strip:], obj["Size"], str(obj.get("ETag", "")).strip('"'))

    def delete(self, key: str) -> None:
        self._call("DELETE", key, self.client.delete_object, Bucket=self.bucket, Key=self._key(key))


def open_store(uri: str | os.PathLike) -> Store:
    """``s3://bucket/prefix`` or a local directory path (``file://`` allowed)."""
    text = str(uri)
    if text.startswith("s3://"):
        return S3Store(text)
    if "://" in text and not text.startswith("file://"):
        raise StoreError(f"{text}: unsupported store; use s3://BUCKET/PREFIX or a local directory")
    return LocalStore(text.removeprefix("file://"))
