"""The fenced store: every write asks first, reads never do."""

import pytest

from jobs.errors import LeaseLost
from jobs.store import LocalStore
from jobs.store.fencing import FencedStore


def test_reads_pass_through_and_every_kind_of_write_is_checked(tmp_path):
    store = LocalStore(tmp_path / "store")
    calls = []
    fenced = FencedStore(store, lambda: calls.append(1))
    (tmp_path / "f").write_text("x")
    fenced.put_file("k1", tmp_path / "f")
    fenced.put_text("k2", "y")
    fenced.delete("k1")
    assert len(calls) == 3
    assert fenced.get_text("k2") == "y" and fenced.exists("k2") and [o.key for o in fenced.list("k")] == ["k2"]
    assert len(calls) == 3 and fenced.uri == store.uri


def test_a_failed_check_stops_the_write(tmp_path):
    store = LocalStore(tmp_path / "store")
    store.put_text("k", "theirs")

    def lost():
        raise LeaseLost("lost")

    fenced = FencedStore(store, lost)
    for write in (lambda: fenced.put_text("k", "mine"), lambda: fenced.delete("k")):
        with pytest.raises(LeaseLost):
            write()
    assert store.get_text("k") == "theirs"
