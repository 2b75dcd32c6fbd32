import os

import pytest

from jobs.errors import StoreError
from jobs.store import LocalStore, S3Store, open_store


def test_local_store_round_trip_and_listing(tmp_path):
    store = LocalStore(tmp_path)
    store.put_text("a/b/c.txt", "hello")
    store.put_bytes("a/d.bin", b"\x00\x01")
    store.put_text("z.txt", "top")
    assert store.get_text("a/b/c.txt") == "hello" and store.exists("a/d.bin") and not store.exists("a/x")
    assert [(o.key, o.size) for o in store.list("a/")] == [("a/b/c.txt", 5), ("a/d.bin", 2)]
    assert [o.key for o in store.list()] == ["a/b/c.txt", "a/d.bin", "z.txt"]
    assert [o.key for o in store.list("a/b")] == ["a/b/c.txt"]
    with pytest.raises(StoreError, match="a/missing.txt does not exist"):
        store.get_bytes("a/missing.txt")


def test_local_write_is_all_or_nothing(tmp_path):
    store = LocalStore(tmp_path)
    store.put_text("k.txt", "old")

    def broken(fh):
        fh.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        store._write("k.txt", broken)
    assert store.get_text("k.txt") == "old"
    assert os.listdir(tmp_path) == ["k.txt"]  # no temporary file left behind


def test_open_store_rejects_unknown_schemes():
    with pytest.raises(StoreError, match="unsupported store; use s3://BUCKET/PREFIX or a local directory"):
        open_store("gs://bucket/x")


def test_s3_store_against_a_real_server(s3_env):
    store = open_store("s3://cxrstudy-test/unit")
    assert isinstance(store, S3Store) and store.uri == "s3://cxrstudy-test/unit"
    payload = os.urandom(3 << 20)  # larger than one read: the body streams
    store.put_bytes("x/big.bin", payload)
    store.put_text("x/small.txt", "hi")
    assert store.exists("x/big.bin") and not store.exists("x/none")
    with store.open("x/big.bin") as fh:
        assert fh.read(1000) == payload[:1000]
        assert fh.read() == payload[1000:]
    assert [(o.key, o.size) for o in store.list("x/")] == [("x/big.bin", len(payload)), ("x/small.txt", 2)]
    with pytest.raises(StoreError, match=r"s3://cxrstudy-test/unit/x/none does not exist"):
        store.get_bytes("x/none")
    store.delete("x/small.txt")
    assert not store.exists("x/small.txt")


def test_s3_wrong_credentials_name_the_settings(s3_env, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(
        StoreError, match="S3 refused the credentials .* check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY"
    ):
        open_store("s3://cxrstudy-test/unit").put_text("k", "v")


def test_s3_unreachable_endpoint_names_the_setting(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(StoreError, match=r"cannot reach the S3 endpoint http://127.0.0.1:9.*AWS_ENDPOINT_URL_S3"):
        S3Store("s3://b/p").get_bytes("k")


def test_s3_missing_bucket_is_explained(s3_env):
    with pytest.raises(StoreError, match="bucket 'no-such-bucket' does not exist"):
        open_store("s3://no-such-bucket").get_bytes("k")
