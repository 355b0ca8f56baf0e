"""Serving through a real redis-server: snapshots, deltas, users, retention, rollback, client."""

from __future__ import annotations

import time

import numpy as np
import pytest
import redis
from redis.crc import key_slot

from streaming.serving import (
    EmbeddingClient,
    SnapshotError,
    SnapshotStore,
    SnapshotWriter,
    UnknownItemsError,
    connect,
)


@pytest.fixture
def r(redis_server):
    client = connect(redis_server)
    yield client
    client.close()


def _table(n: int, dim: int = 8, seed: int = 0) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    return [f"item-{i}" for i in range(n)], rng.standard_normal((n, dim)).astype(np.float32)


def test_full_snapshot_roundtrip_with_metadata(r, redis_server, unique_name):
    ns = unique_name("ns")
    ids, m = _table(1000)
    writer = SnapshotWriter(r, ns, chunk_rows=128)
    res = writer.publish_full(ids, m, model="sasrec", watermark=123.5, offsets={"events:0": 42})
    assert (res.kind, res.version, res.seq, res.rows) == ("full", 1, 0, 1000)

    client = EmbeddingClient(redis_server, namespace=ns)
    assert client.current_version() == 1
    np.testing.assert_array_equal(client.item_matrix(), m)
    assert client.item_ids() == ids
    meta = client.metadata()
    assert meta["chunks"] == 8 and meta["rows"] == 1000 and meta["dim"] == 8
    assert meta["dtype"] == "<f4" and meta["model"] == "sasrec"
    assert meta["watermark"] == 123.5 and meta["offsets"] == {"events:0": 42}
    assert meta["checksum"].startswith("sha256:")
    np.testing.assert_array_equal(client.item_vectors(["item-7", "item-3"]), m[[7, 3]])


def test_version_keys_share_one_cluster_slot(r, unique_name):
    ns = unique_name("ns")
    ids, m = _table(300)
    writer = SnapshotWriter(r, ns, chunk_rows=64)
    writer.publish_full(ids, m)
    m2 = m.copy()
    m2[5] += 1
    writer.publish_delta(ids, m2)
    keys = writer.keys.version_keys(1, 5, 1)
    assert r.exists(*keys) == len(keys)
    assert len({key_slot(k.encode()) for k in keys}) == 1
    globals_ = [writer.keys.current, writer.keys.versions, writer.keys.counter]
    assert len({key_slot(k.encode()) for k in globals_}) == 1


def test_corrupt_chunk_is_detected_not_served(r, redis_server, unique_name):
    ns = unique_name("ns")
    ids, m = _table(200)
    writer = SnapshotWriter(r, ns, chunk_rows=50)
    writer.publish_full(ids, m)
    key = writer.keys.chunk(1, 2)
    raw = bytearray(r.get(key))
    raw[10] ^= 0xFF
    r.set(key, bytes(raw))
    with pytest.raises(SnapshotError, match="checksum"):
        EmbeddingClient(redis_server, namespace=ns).refresh()


def test_delta_holds_only_changed_and_new_rows(r, redis_server, unique_name):
    ns = unique_name("ns")
    ids, m = _table(500)
    writer = SnapshotWriter(r, ns, delta_tolerance=0.0)
    writer.publish_full(ids, m)
    client = EmbeddingClient(redis_server, namespace=ns)
    client.refresh()

    m2 = np.vstack([m, np.full((3, 8), 2.0, np.float32)])
    m2[[4, 99]] += 0.5
    ids2 = [*ids, "new-a", "new-b", "new-c"]
    res = writer.publish_delta(ids2, m2)
    assert (res.kind, res.version, res.seq, res.rows) == ("delta", 1, 1, 5)
    fields = r.hgetall(writer.keys.delta(1, 1))
    rows = np.frombuffer(fields[b"rows"], dtype="<i4")
    assert sorted(rows.tolist()) == [4, 99, 500, 501, 502]

    # the cached client applies the delta; a fresh client loads base + delta
    pointer = client.refresh()
    assert pointer["seq"] == 1
    np.testing.assert_array_equal(client.item_matrix(), m2)
    fresh = EmbeddingClient(redis_server, namespace=ns)
    np.testing.assert_array_equal(fresh.item_matrix(), m2)
    assert fresh.item_ids() == ids2
    np.testing.assert_array_equal(fresh.item_vectors(["new-b"]), m2[[501]])

    # nothing changed: no new delta, pointer untouched
    assert writer.publish_delta(ids2, m2).kind == "none"
    assert SnapshotStore(r, ns).pointer()["seq"] == 1


def test_delta_tolerance_skips_tiny_changes_but_carries_them(r, redis_server, unique_name):
    ns = unique_name("ns")
    ids = ["a", "b"]
    m = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    writer = SnapshotWriter(r, ns, delta_tolerance=0.01)
    writer.publish_full(ids, m)
    step = np.array([[0.004, 0.0], [0.0, 0.0]], np.float32)
    assert writer.publish_delta(ids, m + step).kind == "none"  # 0.4% < 1%
    res = writer.publish_delta(ids, m + 3 * step)  # 1.2% since the served row: published
    assert res.kind == "delta" and res.rows == 1
    served = EmbeddingClient(redis_server, namespace=ns).item_matrix()
    np.testing.assert_allclose(served, m + 3 * step)


def test_long_delta_chain_becomes_a_full_snapshot(r, unique_name):
    ns = unique_name("ns")
    ids, m = _table(100)
    writer = SnapshotWriter(r, ns, delta_tolerance=0.0, max_chain_factor=1.0)
    writer.publish_full(ids, m)
    kinds = []
    for _step in range(4):
        m = m.copy()
        m[:60] += 1.0  # 60 rows per delta: the second delta would exceed 1.0 x 100 rows
        kinds.append(writer.publish_delta(ids, m).kind)
    assert kinds == ["delta", "full", "delta", "full"]
    assert writer.version == 3


def test_delta_after_reordered_ids_or_new_dim_is_full(r, unique_name):
    ns = unique_name("ns")
    ids, m = _table(50)
    writer = SnapshotWriter(r, ns)
    writer.publish_full(ids, m)
    res = writer.publish_delta(list(reversed(ids)), m)
    assert (res.kind, res.reason) == ("full", "item ids reordered")
    res = writer.publish_delta(ids, np.zeros((50, 4), np.float32))
    assert (res.kind, res.reason) == ("full", "dimension changed")


def test_bad_input_is_refused_before_anything_is_written(r, unique_name):
    ns = unique_name("ns")
    writer = SnapshotWriter(r, ns)
    m = np.ones((3, 2), np.float32)
    m[1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        writer.publish_full(["a", "b", "c"], m)
    with pytest.raises(ValueError, match="unique"):
        writer.publish_full(["a", "a", "c"], np.ones((3, 2)))
    with pytest.raises(ValueError, match="2 item ids for 3 rows"):
        writer.publish_full(["a", "b"], np.ones((3, 2)))
    assert SnapshotStore(r, ns).pointer() is None
    for bad in ("", "a{b}", "x" * 129, "sp ace"):
        with pytest.raises(ValueError, match="namespace"):
            SnapshotWriter(r, bad)


def test_users_recommend_and_unknowns(r, redis_server, unique_name):
    ns = unique_name("ns")
    ids = ["a", "b", "c", "d"]
    m = np.diag([4.0, 3.0, 2.0, 1.0]).astype(np.float32)
    writer = SnapshotWriter(r, ns, user_ttl_s=100)
    writer.publish_full(ids, m)
    written = writer.publish_users(
        ["u1", "u0"],
        np.array([[1, 1, 1, 1], [0, 0, 0, 0]], np.float32),
        [["a"], []],
        [["a", "d"], []],
    )
    assert written == 1  # a zero vector (no state) is not served
    assert 0 < r.pttl(writer.keys.user("u1")) <= 100_000

    client = EmbeddingClient(redis_server, namespace=ns)
    state = client.user_state("u1")
    np.testing.assert_array_equal(state["vector"], [1, 1, 1, 1])
    assert state["recent_items"] == ["a"] and state["seen_items"] == ["a", "d"]
    recs = client.recommend("u1", k=2)
    assert [x.item_id for x in recs] == ["b", "c"]  # "a" is recent: excluded
    assert [x.item_id for x in client.recommend("u1", k=2, exclude_seen=False)] == ["a", "b"]
    # "d" was seen earlier (not in the recent window): excluded too
    assert [x.item_id for x in client.recommend("u1", k=9, exclude=["c"])] == ["b"]
    assert [x.item_id for x in client.recommend("u1", k=9, exclude_seen=False)] == [
        "a",
        "b",
        "c",
        "d",
    ]
    assert client.recommend("u0") == [] and client.recommend("nobody") == []
    assert client.user_vector("nobody") is None

    with pytest.raises(UnknownItemsError, match="'zz'") as info:
        client.item_vectors(["a", "zz"])
    assert info.value.missing == ["zz"]
    vecs = client.item_vectors(["a", "zz"], missing="nan")
    assert np.isnan(vecs[1]).all() and vecs[0, 0] == 4.0


def test_nothing_published_reads_cleanly(r, redis_server, unique_name):
    client = EmbeddingClient(redis_server, namespace=unique_name("ns"))
    assert client.current_version() is None
    assert client.recommend("u") == []
    assert client.item_ids() == []


def test_retention_keeps_newest_and_expires_older(r, unique_name):
    ns = unique_name("ns")
    ids, m = _table(20)
    writer = SnapshotWriter(r, ns, keep_versions=2, grace_s=1.0)
    for step in range(4):
        writer.publish_full(ids, m + step)
    store = SnapshotStore(r, ns)
    listed = {v["version"]: v for v in store.versions()}
    assert sorted(listed) == [1, 2, 3, 4]
    assert listed[4]["current"] and listed[4]["expires_in_s"] is None
    assert listed[3]["expires_in_s"] is None
    assert 0 < listed[2]["expires_in_s"] <= 1.0 and 0 < listed[1]["expires_in_s"] <= 1.0
    time.sleep(1.3)
    assert [v["version"] for v in store.versions()] == [4, 3]
    writer.publish_full(ids, m)  # prunes the index of expired versions
    assert r.zrange(writer.keys.versions, 0, -1) == [b"3", b"4", b"5"]


def test_rollback_and_pause(r, redis_server, unique_name):
    ns = unique_name("ns")
    ids, m = _table(30)
    writer = SnapshotWriter(r, ns, delta_tolerance=0.0)
    writer.publish_full(ids, m)
    m1 = m.copy()
    m1[0] = 9.0
    writer.publish_delta(ids, m1)  # version 1 ends at delta 1
    writer.publish_full(ids, m + 1)  # version 2
    client = EmbeddingClient(redis_server, namespace=ns)
    assert client.current_version() == 2

    store = SnapshotStore(r, ns)
    pointer = store.rollback()  # default: the previous version, at its newest delta
    assert (pointer["version"], pointer["seq"]) == (1, 1)
    assert client.current_version() == 1
    np.testing.assert_array_equal(client.item_matrix(), m1)
    store.rollback(2)
    np.testing.assert_array_equal(client.item_matrix(), m + 1)
    with pytest.raises(SnapshotError, match="version 77 does not exist"):
        store.rollback(77)

    store.rollback(1, pause=True)
    assert store.paused()["reason"] == "rollback to version 1"
    assert store.resume() is True and store.paused() is None
    assert store.resume() is False


def test_rollback_rescues_an_expiring_version(r, redis_server, unique_name):
    ns = unique_name("ns")
    ids, m = _table(10)
    writer = SnapshotWriter(r, ns, keep_versions=1, grace_s=2.0)
    writer.publish_full(ids, m)
    writer.publish_full(ids, m + 1)
    assert r.pttl(writer.keys.meta(1)) > 0
    SnapshotStore(r, ns).rollback(1)
    assert r.pttl(writer.keys.meta(1)) == -1  # persisted while it is served
    assert SnapshotWriter(r, ns, keep_versions=1).versions()[0]["version"] == 2
    writer.publish_full(ids, m + 2)  # supersedes the rollback: version 1 expires again
    assert 0 < r.pttl(writer.keys.meta(1)) <= 2000


def test_password_url(make_redis_service, unique_name):
    service = make_redis_service(start=False)
    service.password = "s3cr:t/pw"  # characters that need URL quoting
    service.start()
    assert "s3cr%3At%2Fpw" in service.url
    ns = unique_name("ns")
    ids, m = _table(40)
    SnapshotWriter(connect(service.url), ns).publish_full(ids, m)
    np.testing.assert_array_equal(EmbeddingClient(service.url, namespace=ns).item_matrix(), m)
    anonymous = f"redis://{service.address}/0"
    with pytest.raises(redis.AuthenticationError):
        EmbeddingClient(anonymous, namespace=ns).refresh()
    wrong = f"redis://:nope@{service.address}/0"
    with pytest.raises(redis.AuthenticationError):
        EmbeddingClient(wrong, namespace=ns).refresh()


def test_reused_version_number_after_data_loss_is_reloaded(make_redis_service, unique_name):
    service = make_redis_service()  # no persistence: a restart loses everything
    ns = unique_name("ns")
    ids, m = _table(20)
    SnapshotWriter(connect(service.url), ns).publish_full(ids, m)
    client = EmbeddingClient(service.url, namespace=ns)
    np.testing.assert_array_equal(client.item_matrix(), m)
    service.restart()
    SnapshotWriter(connect(service.url), ns).publish_full(ids, m + 5)  # version 1 again
    assert client.current_version() == 1
    np.testing.assert_array_equal(client.item_matrix(), m + 5)


def test_delta_never_points_at_a_lost_base(make_redis_service, unique_name):
    service = make_redis_service()
    ns = unique_name("ns")
    ids, m = _table(20)
    writer = SnapshotWriter(connect(service.url), ns, delta_tolerance=0.0)
    writer.publish_full(ids, m)
    service.restart()  # the base version is gone; redis-py reconnects transparently
    m2 = m.copy()
    m2[3] += 1
    for _attempt in range(3):  # the first command after the restart may fail
        try:
            res = writer.publish_delta(ids, m2)
            break
        except redis.ConnectionError:
            writer.forget()
    assert res.kind == "full"
    np.testing.assert_array_equal(EmbeddingClient(service.url, namespace=ns).item_matrix(), m2)


def test_full_snapshot_after_growth_checks_only_new_ids(r, redis_server, unique_name):
    ns = unique_name("ns")
    ids, m = _table(30)
    writer = SnapshotWriter(r, ns)
    writer.publish_full(ids, m)
    grown = np.vstack([m, np.ones((2, 8), np.float32)])
    with pytest.raises(ValueError, match="unique"):
        writer.publish_full([*ids, "item-3", "z"], grown)  # a new id repeats a published one
    with pytest.raises(ValueError, match="unique"):
        writer.publish_full([*ids, "z", "z"], grown)
    writer.publish_full(np.array([*ids, "y", "z"]), grown)  # any sequence of ids
    client = EmbeddingClient(redis_server, namespace=ns)
    assert client.item_ids()[-2:] == ["y", "z"]
    np.testing.assert_array_equal(client.item_vectors(["z"]), grown[[31]])
