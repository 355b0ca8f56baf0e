"""Serving against a real Redis Cluster (``redis-server --cluster-enabled yes`` on loopback,
3 masters with a replica each; no mocks):

* the URL of any node gives a cluster client, a standalone server a plain one, and a server
  that is down at connect time a client that decides at its first command;
* a version's keys share one slot (one master), and readers hammering the cluster while a
  writer publishes full snapshots and deltas only ever see states that were published;
* the pointer is not switched before the replicas of the version's master acknowledged its
  keys: with that replica frozen (SIGSTOP) the publish fails with ``ReplicationError`` and
  readers keep the previous state;
* SIGKILL of the master holding the current version's slot, then of the master holding the
  pointer, mid-publishing: the replicas take over and the writer and two readers go on without
  an error, and read the versions published after each failover;
* ``sevo replay --redis-url`` (the background publisher), ``sevo recommend`` and every
  ``sevo snapshots`` action work with the URL of one node.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time

import numpy as np
import pytest
import redis
from redis.cluster import RedisCluster

from devtools.services import RedisClusterService, ServiceStartError
from streaming.cli import main
from streaming.serving import (
    EmbeddingClient,
    ReplicationError,
    SnapshotStore,
    SnapshotWriter,
    connect,
    is_cluster,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """3 masters + 1 replica each. A 5 s node timeout: a replica frozen for a second or two
    (the WAIT test) is not declared failed meanwhile."""
    service = RedisClusterService(
        tmp_path_factory.mktemp("redis-cluster"), masters=3, replicas=1, node_timeout_ms=5000
    )
    service.start()
    try:
        yield service
    finally:
        service.stop()


def _digest(matrix: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(matrix, dtype="<f4").tobytes()).hexdigest()


def _table(n: int, dim: int = 8, seed: int = 0) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    return [f"i{k}" for k in range(n)], rng.standard_normal((n, dim)).astype(np.float32)


def _wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if predicate():
                return
        except (redis.RedisError, ServiceStartError):
            pass  # a node just killed, a slot without a master for a moment: ask again
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_any_node_url_gives_a_cluster_client_and_a_standalone_url_a_plain_one(
    cluster, redis_server, make_redis_service, unique_name
):
    for port in cluster.ports:  # masters and replicas alike
        client = connect(cluster.url_of(port))
        assert isinstance(client, RedisCluster) and is_cluster(client)
        client.close()
    plain = connect(redis_server)
    assert type(plain) is redis.Redis and not is_cluster(plain)

    # Down at connect time: the first command decides (and fails while it is still down).
    later = make_redis_service(start=False)
    deferred = connect(later.url, timeout_s=0.3)
    with pytest.raises(redis.ConnectionError):
        deferred.get("k")
    later.start()
    assert deferred.set("k", b"v") and deferred.get("k") == b"v"
    assert not is_cluster(deferred)

    # One version's keys: one slot, one master; the namespace's keys another slot.
    ns = unique_name("ns")
    ids, m = _table(300)
    writer = SnapshotWriter(connect(cluster.url), ns, chunk_rows=64)
    writer.publish_full(ids, m)
    m2 = m.copy()
    m2[5] += 1
    assert writer.publish_delta(ids, m2).kind == "delta"
    keys = writer.keys.version_keys(1, 5, 1)
    assert writer.redis.exists(*keys) == len(keys)
    assert len({cluster.master_of(k) for k in keys}) == 1
    assert cluster.master_of(writer.keys.current) == cluster.master_of(writer.keys.counter)
    served = EmbeddingClient(cluster.url_of(cluster.ports[-1]), namespace=ns).snapshot()
    assert served.item_ids == ids and np.array_equal(served.matrix, m2)


def _publish_while_reading(writer, ids, matrix, rng, steps, readers_url, ns, *, pause=0.0):
    """Publish ``steps`` fulls and deltas while two readers read; returns (published states
    {(uid, seq): digest}, observed [(uid, seq, digest)], reader errors, the versions used)."""
    published: dict[tuple[str, int], str] = {}
    stop = threading.Event()
    observed: list[tuple[str, int, str]] = []
    errors: list[BaseException] = []

    def read() -> None:
        client = EmbeddingClient(readers_url, namespace=ns)
        try:
            while not stop.is_set():
                snap = client.snapshot()
                if snap is None:
                    continue
                assert len(snap.item_ids) == snap.matrix.shape[0]
                observed.append((snap.pointer["uid"], snap.pointer["seq"], _digest(snap.matrix)))
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)

    writer.publish_full(ids, matrix)
    published[(writer._uid, 0)] = _digest(matrix)
    versions = {writer.version}
    threads = [threading.Thread(target=read) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for step in range(steps):
            matrix = matrix.copy()
            if step % 10 == 9:  # new items appended, as online training does
                ids = ids + [f"i{len(ids) + k}" for k in range(5)]
                matrix = np.vstack([matrix, rng.standard_normal((5, 8)).astype(np.float32)])
            rows = rng.choice(matrix.shape[0], size=int(rng.integers(1, 200)), replace=False)
            matrix[rows] += rng.standard_normal((rows.size, 8)).astype(np.float32)
            if step % 10 == 4:
                result = writer.publish_full(ids, matrix)
            else:
                result = writer.publish_delta(ids, matrix)
            published[(writer._uid, result.seq)] = _digest(matrix)
            versions.add(result.version)
            time.sleep(pause)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    return published, observed, errors, versions


def test_concurrent_readers_never_see_a_mixed_snapshot(cluster, unique_name):
    ns = unique_name("ns")
    rng = np.random.default_rng(1)
    writer = SnapshotWriter(
        connect(cluster.url), ns, chunk_rows=64, keep_versions=2, grace_s=1.0,
        delta_tolerance=0.0, max_chain_factor=3.0,
    )  # fmt: skip
    ids, matrix = _table(400, seed=1)
    published, observed, errors, versions = _publish_while_reading(
        writer, ids, matrix, rng, 80, cluster.url, ns
    )
    assert not errors, errors
    mixed = [o for o in observed if published.get((o[0], o[1])) != o[2]]
    assert not mixed, f"{len(mixed)} of {len(observed)} reads saw a state never published"
    assert len({(o[0], o[1]) for o in observed}) >= 10, "readers were not concurrent"
    # The versions lived on several masters, apart from the pointer's.
    assert len({cluster.master_of(writer.keys.meta(v)) for v in versions}) >= 2


def test_pointer_waits_until_the_replica_of_the_version_has_its_keys(cluster, unique_name):
    ns = unique_name("ns")
    client = connect(cluster.url, failover_timeout_s=1.0)
    writer = SnapshotWriter(client, ns, delta_tolerance=0.0)
    ids, m = _table(200)
    writer.publish_full(ids, m)
    master = cluster.master_of(writer.keys.meta(writer.version))
    [replica] = cluster.replicas_of(master)
    before = writer.pointer()
    m2 = m.copy()
    m2[7] += 1
    cluster.pause(replica)  # connected, but acknowledges nothing
    try:
        t0 = time.monotonic()
        with pytest.raises(ReplicationError, match=r"0 of 1 replica\(s\).*not pointed at it"):
            writer.publish_delta(ids, m2)
        assert time.monotonic() - t0 >= 1.0  # retried for the failover budget first
        assert writer.pointer() == before  # readers were not pointed at the delta
    finally:
        cluster.resume(replica)
    client.failover_timeout_s = 10.0
    result = writer.publish_delta(ids, m2)  # acknowledged now: switched
    assert (result.kind, result.seq) == ("delta", 1)
    served = EmbeddingClient(client=connect(cluster.url), namespace=ns).snapshot()
    assert served.pointer["seq"] == 1 and np.array_equal(served.matrix, m2)


def test_failover_of_the_version_master_then_the_pointer_master(tmp_path, unique_name, caplog):
    caplog.set_level(logging.INFO, logger="streaming.serving")
    with RedisClusterService(tmp_path / "cluster", replicas=1, node_timeout_ms=1000) as cluster:
        ns = unique_name("ns")
        writer = SnapshotWriter(
            connect(cluster.url), ns, chunk_rows=64, keep_versions=3, grace_s=2.0,
            delta_tolerance=0.0, max_chain_factor=3.0,
        )  # fmt: skip
        rng = np.random.default_rng(2)
        ids, matrix = _table(300, seed=2)
        order: dict[tuple[str, int], int] = {}  # published state -> publish number
        published: dict[tuple[str, int], str] = {}
        stop = threading.Event()
        errors: list[BaseException] = []
        observed: list[tuple[str, int, str]] = []

        def write() -> None:
            nonlocal ids, matrix
            step = 0
            try:
                while not stop.is_set():
                    matrix = matrix.copy()
                    if step % 10 == 9:
                        ids = ids + [f"i{len(ids) + k}" for k in range(3)]
                        matrix = np.vstack([matrix, rng.standard_normal((3, 8)).astype("f4")])
                    rows = rng.choice(matrix.shape[0], size=20, replace=False)
                    matrix[rows] += rng.standard_normal((20, 8)).astype(np.float32)
                    if step % 8 == 0:
                        result = writer.publish_full(ids, matrix)
                    else:
                        result = writer.publish_delta(ids, matrix)
                    published[(writer._uid, result.seq)] = _digest(matrix)
                    order[(writer._uid, result.seq)] = step
                    step += 1
                    time.sleep(0.01)
            except BaseException as exc:
                errors.append(exc)

        def read() -> None:
            client = EmbeddingClient(cluster.url, namespace=ns)
            try:
                while not stop.is_set():
                    snap = client.snapshot()
                    if snap is not None:
                        state = (snap.pointer["uid"], snap.pointer["seq"], _digest(snap.matrix))
                        observed.append(state)
                    time.sleep(0.005)
            except BaseException as exc:
                errors.append(exc)

        def published_since(n: int) -> int:
            if errors:  # fail now, not after a timeout
                raise AssertionError(f"a client failed: {errors!r}")
            return len(order) - n

        threads = [threading.Thread(target=write)] + [threading.Thread(target=read) for _ in "ab"]
        for t in threads:
            t.start()
        try:
            _wait_for(lambda: published_since(0) >= 10, 30, "first publishes")
            pointer_master = cluster.master_of(writer.keys.current)
            # A moment when the current version lives on another master than the pointer.
            _wait_for(
                lambda: cluster.master_of(writer.keys.meta(writer.version)) != pointer_master,
                30,
                "a version on another master than the pointer",
            )
            version_slot_key = writer.keys.meta(writer.version)
            version_master = cluster.master_of(version_slot_key)
            for victim, slot_key in (
                (version_master, version_slot_key),
                (pointer_master, writer.keys.current),
            ):
                assert cluster.replicas_of(victim)  # someone to take over
                killed_at = len(order)
                cluster.kill(victim)
                _wait_for(
                    lambda k=slot_key, v=victim: cluster.master_of(k) != v, 30, "the failover"
                )
                # The writer goes on: later publishes, a full snapshot among them.
                _wait_for(lambda n=killed_at: published_since(n) >= 25, 60, "publishes after it")
            last_kill = killed_at
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        assert not errors, errors
        mixed = [o for o in observed if published.get((o[0], o[1])) != o[2]]
        assert not mixed, f"{len(mixed)} of {len(observed)} reads saw a state never published"
        late = {o[:2] for o in observed if order[o[:2]] > last_kill}
        assert late, "the readers read nothing published after the second failover"
        # The failovers did interrupt the clients, which waited them out.
        interrupted = [r for r in caplog.records if "(failover?)" in r.getMessage()]
        recovered = [r for r in caplog.records if "done after" in r.getMessage()]
        assert interrupted and recovered
        # A fresh reader (through a surviving node) serves exactly the newest state.
        final = EmbeddingClient(cluster.url, namespace=ns).snapshot()
        assert final.item_ids == ids and np.array_equal(final.matrix, matrix)


def test_replay_publishes_and_the_cli_reads_and_administers_a_cluster(
    cluster, unique_name, tmp_path, capsys
):
    ns = unique_name("ns")
    rng = np.random.default_rng(3)
    n = 1500
    users = rng.integers(0, 30, n).astype(str)
    items = rng.integers(0, 80, n).astype(str)
    times = 1e9 + np.arange(n, dtype=np.float64)
    log = tmp_path / "events.jsonl"
    log.write_text(
        "\n".join(
            json.dumps({"user_id": u, "item_id": i, "timestamp": float(t)})
            for u, i, t in zip(users.tolist(), items.tolist(), times.tolist())
        )
        + "\n"
    )
    url = cluster.url_of(cluster.ports[1])  # any node
    args = ["replay", str(log), "--model", "mf", "--dim", "8", "--maxlen", "5", "--no-progress"]
    args += ["--redis-url", url, "--namespace", ns, "--publish-every", "0.05"]
    assert main(args) == 0
    capsys.readouterr()
    client = EmbeddingClient(url, namespace=ns)
    pointer = client.pointer()
    assert list(pointer["offsets"].values()) == [n]
    assert sorted(client.item_ids()) == sorted(set(items.tolist()))

    loc = ["--redis-url", url, "--namespace", ns]
    user = str(users[-1])
    assert main(["recommend", *loc, "--user", user, "-k", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["known"] and len(out["items"]) == 3
    assert not {x["item"] for x in out["items"]} & set(client.user_state(user)["seen_items"])

    # Two more versions, so there is something to roll back to.
    writer = SnapshotWriter(connect(url), ns)
    ids, matrix = client.item_ids(), client.item_matrix().copy()
    first = writer.publish_full(ids, matrix).version
    second = writer.publish_full(ids, matrix + 1).version
    assert main(["snapshots", "list", *loc, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["versions"]
    assert [v["version"] for v in listed][:2] == [second, first] and listed[0]["current"]
    assert main(["snapshots", "show", *loc]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == second
    assert main(["snapshots", "rollback", *loc, "--pause", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == first
    np.testing.assert_array_equal(client.item_matrix(), matrix)
    store = SnapshotStore(connect(url), ns)
    assert store.paused() is not None
    assert main(["snapshots", "pause", *loc, "--reason", "test"]) == 0
    assert main(["snapshots", "resume", *loc]) == 0
    assert "resumed" in capsys.readouterr().out and store.paused() is None
    assert main(["snapshots", "publish-full", *loc]) == 0
    assert store._publish_controls() == (None, True)
    assert main(["snapshots", "list", *loc]) == 0
    assert f"v{first}" in capsys.readouterr().out
