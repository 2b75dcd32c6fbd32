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


BAD_KEYS = [
    ("../../outside.txt", "has a '..' segment"),
    ("datasets/../../../outside.txt", "has a '..' segment"),
    ("/etc/hostname", "is absolute (starts with '/')"),
    ("a//b.txt", "has an empty segment ('//' or a '/' at the end)"),
    ("a/./b.txt", "has a '.' segment"),
    ("", "is empty"),
]
OPERATIONS = {
    "put_bytes": lambda store, key: store.put_bytes(key, b"x"),
    "put_file": lambda store, key: store.put_file(key, __file__),
    "get_bytes": lambda store, key: store.get_bytes(key),
    "exists": lambda store, key: store.exists(key),
    "delete": lambda store, key: store.delete(key),
}


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("key, problem", BAD_KEYS)
def test_local_store_refuses_keys_that_leave_it(tmp_path, operation, key, problem):
    root = tmp_path / "a" / "b" / "store"
    root.mkdir(parents=True)
    store = LocalStore(root)
    (tmp_path / "a" / "outside.txt").write_text("secret")
    before = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    with pytest.raises(StoreError) as info:
        OPERATIONS[operation](store, key)
    assert str(info.value) == f"{root}: refused the key {key!r}: it {problem}; keys stay inside the store"
    assert (tmp_path / "a" / "outside.txt").read_text() == "secret"
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == before


def test_local_store_refuses_listings_that_leave_it(tmp_path):
    store = LocalStore(tmp_path / "store")
    (tmp_path / "outside.txt").write_text("secret")
    with pytest.raises(StoreError, match=r"refused the key '\.\./': it has a '\.\.' segment"):
        list(store.list("../"))
    with pytest.raises(StoreError, match=r"refused the key '/etc/': it is absolute"):
        list(store.list("/etc/"))


def test_local_store_reads_through_a_symlinked_folder(tmp_path):
    """Keys are checked as text, not by following links: a dataset whose images/ is a link still reads."""
    (tmp_path / "disk" / "images").mkdir(parents=True)
    (tmp_path / "disk" / "images" / "x.png").write_bytes(b"png")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "images").symlink_to(tmp_path / "disk" / "images")
    store = LocalStore(tmp_path / "data")
    assert store.get_bytes("images/x.png") == b"png" and [o.key for o in store.list("images/")] == ["images/x.png"]
    with pytest.raises(StoreError, match="it has a '..' segment"):  # the text still may not climb out
        store.get_bytes("images/../../disk/images/x.png")


class RecordingClient:
    """Stands in for boto3: records what would have been sent to S3."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *args, **kwargs: self.calls.append((name, kwargs.get("Key", args[2] if len(args) > 2 else None)))


@pytest.mark.parametrize("operation", ["put_bytes", "get_bytes", "exists", "delete", "put_file"])
@pytest.mark.parametrize("key, problem", BAD_KEYS)
def test_s3_store_refuses_keys_that_leave_its_prefix(operation, key, problem):
    client = RecordingClient()
    store = S3Store("s3://bucket/a/b/store", client=client)
    with pytest.raises(StoreError) as info:
        OPERATIONS[operation](store, key)
    assert (
        str(info.value) == f"s3://bucket/a/b/store: refused the key {key!r}: it {problem}; keys stay inside the store"
    )
    assert client.calls == []  # nothing reached S3


def test_s3_store_sends_good_keys_under_its_prefix():
    client = RecordingClient()
    store = S3Store("s3://bucket/a/b/store", client=client)
    store.put_bytes("datasets/nih/abc/manifest.json", b"{}")
    store.delete("studies/.probe/study.json")
    assert client.calls == [
        ("put_object", "a/b/store/datasets/nih/abc/manifest.json"),
        ("delete_object", "a/b/store/studies/.probe/study.json"),
    ]
    with pytest.raises(StoreError, match=r"refused the key '\.\./x/': it has a '\.\.' segment"):
        list(store.list("../x/"))
    assert len(client.calls) == 2


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


def test_a_local_store_that_cannot_be_written_is_one_line_naming_it(tmp_path, monkeypatch):
    (tmp_path / "file.txt").write_text("")
    for root, why in ((tmp_path / "file.txt" / "store", "Not a directory"), ("/proc/self/store", "No such file")):
        store = LocalStore(root)  # /proc refuses new folders even to root
        with pytest.raises(StoreError) as caught:
            store.put_text("studies/s/study.json", "{}")
        assert str(caught.value).startswith(f"the store {store.root} is not writable ({why}")
        assert str(caught.value).endswith("pass a folder you can write to as --store (or CXRSTUDY_STORE)")

    def read_only(*args, **kwargs):  # a read-only mount, which root cannot write either
        raise OSError(30, "Read-only file system")

    store = LocalStore(tmp_path / "ro")
    monkeypatch.setattr("tempfile.mkstemp", read_only)
    with pytest.raises(StoreError, match=r"the store .*/ro is not writable \(Read-only file system in .*/ro/a\)"):
        store.put_bytes("a/b.bin", b"x")
