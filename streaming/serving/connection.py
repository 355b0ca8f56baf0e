"""Connecting to Redis: :func:`connect`, the one factory of the serving clients, for a standalone
server and a Redis Cluster alike, and the replicated write that precedes every pointer switch.

**One URL for both.** ``connect("redis://host:port/0")`` asks that server ``INFO cluster``: a
standalone server gives a :class:`redis.Redis`; a node of a cluster (any node, master or
replica) gives a :class:`ClusterClient`, a :class:`redis.cluster.RedisCluster` that discovers the
other nodes from it. A server that does not answer yet gives a client that decides at its first
command (which raises :class:`redis.ConnectionError` while the server is still down), so an
engine can start before its Redis, as with a plain client.

**Failover.** In cluster mode a master that dies is replaced by its replica once the cluster
has declared it failed (``cluster-node-timeout`` plus an election). redis-py refreshes its
slot map on a connection error or a ``MOVED`` reply, but retries at once, so a command would
fail during the election. :class:`ClusterClient` retries every command and pipeline that
fails that way with a short exponential backoff for up to ``failover_timeout_s`` (30 s by
default; it should exceed the cluster's node timeout plus a few seconds), then raises the last
error. Every serving write is idempotent or harmless when repeated (a retried ``INCR`` skips a
version number), and reads only read immutable keys or the pointer.

**Replicated writes before a pointer switch** (:func:`replicated_pipeline`). In a cluster the
pointer (``{ns}:current``) and a version's keys (``{ns:vV}:...``) live in different slots,
usually on different masters, and replication is asynchronous: a master could acknowledge a
version, the pointer could move to it, and the master could die before its replica received
the version, which would then point readers at keys that no longer exist. So the version's
writes go in one pipeline to the master owning its slot, followed on the same connection by
``WAIT n`` (``WAIT`` waits for the writes of its own connection), where ``n`` is the number of
replicas that master has and the cluster does not consider failed. Only when all ``n``
acknowledged does the caller switch the pointer; fewer is retried, and after
``failover_timeout_s`` raised as :class:`ReplicationError` with the pointer left alone.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import (
    AskError,
    AuthenticationError,
    ClusterDownError,
    ReadOnlyError,
    RedisClusterException,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.retry import Retry

from streaming.errors import describe_error
from streaming.retry import ExponentialBackoff
from streaming.serving.keys import SnapshotError, redact

__all__ = [
    "ClusterClient",
    "RedisClient",
    "ReplicationError",
    "connect",
    "is_cluster",
    "replicated_pipeline",
]

log = logging.getLogger("streaming.serving")  # one logger for the whole serving package

T = TypeVar("T")

#: What :func:`connect` returns: a standalone client or a cluster client (same commands).
RedisClient = redis.Redis | RedisCluster


class ReplicationError(SnapshotError):
    """The replicas of the master holding a version's slot did not all acknowledge its keys
    (``WAIT``) within the failover budget; readers were not pointed at the version.
    Retriable: a replica that is slow or restarting catches up, a dead one is declared failed.

    Attributes:
        acked, expected: replicas that acknowledged, and replicas the master has.
        node: ``host:port`` of the master.
    """

    retriable = True

    def __init__(self, what: str, acked: int, expected: int, node: str, wait_ms: int) -> None:
        self.acked, self.expected, self.node = acked, expected, node
        super().__init__(
            f"{what}: {acked} of {expected} replica(s) of {node} acknowledged its keys within "
            f"{wait_ms} ms (WAIT); readers were not pointed at it"
        )


class _NotAMaster(redis.ConnectionError):
    """The node the slot map names for a slot is no longer its master (a failover happened
    since the map was read): refresh the map and try again."""


def _is_failover_error(exc: BaseException) -> bool:
    """Errors a failover (or a node restart) causes and a later attempt can overcome."""
    if isinstance(exc, AuthenticationError):
        return False
    if isinstance(
        exc,
        (
            redis.ConnectionError,
            redis.TimeoutError,
            ClusterDownError,
            TryAgainError,
            AskError,  # and MovedError
            ReadOnlyError,  # a write that reached a master just demoted to replica
            SlotNotCoveredError,
            ReplicationError,
        ),
    ):
        return True
    # The slot map could not be rebuilt: every known node unreachable, nodes disagreeing
    # during an election, slots without a master for a moment.
    return isinstance(exc, RedisClusterException) and any(
        words in str(exc) for words in ("cannot be connected", "not covered", "agree")
    )


class ClusterClient(RedisCluster):
    """A :class:`~redis.cluster.RedisCluster` that rides through failovers (see the module
    docstring): commands and pipelines failing with a connection error, ``MOVED``/``ASK``,
    ``CLUSTERDOWN``, ``TRYAGAIN`` or an unknown slot are retried with backoff for up to
    :attr:`failover_timeout_s`. Made by :func:`connect`.

    Attributes:
        failover_timeout_s: how long one command may keep retrying.
        replica_wait_s: the ``WAIT`` timeout of :func:`replicated_pipeline` (below the socket
            timeout, so a slow replica is reported as such rather than as a timeout).
    """

    failover_timeout_s: float = 30.0
    replica_wait_s: float = 0.5

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # redis-py's own retries happen back to back (each after a slot-map refresh); a
        # couple suffice for a MOVED, the backoff below covers an election.
        kwargs.setdefault("retry", Retry(NoBackoff(), 2))
        super().__init__(*args, **kwargs)
        self._failover_backoff = ExponentialBackoff(0.05, 2.0, 0.5, jitter=0.2)

    def ride(self, attempt: Callable[[], T], what: str) -> T:
        """``attempt()``, retried on failover errors for up to :attr:`failover_timeout_s`."""
        failures, deadline = 0, 0.0
        while True:
            try:
                result = attempt()
            except Exception as exc:
                if not _is_failover_error(exc):
                    raise
                now = time.monotonic()
                if not failures:
                    deadline = now + self.failover_timeout_s
                failures += 1
                if now >= deadline:
                    if isinstance(exc, RedisClusterException):  # not a redis.RedisError
                        raise redis.ConnectionError(f"Redis Cluster: {exc}") from exc
                    raise
                if failures == 1:
                    log.warning(
                        "redis cluster: %s failed (%s); retrying for up to %.0f s (failover?)",
                        what,
                        describe_error(exc),
                        self.failover_timeout_s,
                    )
                time.sleep(min(self._failover_backoff.compute(failures), deadline - now))
            else:
                if failures:
                    log.info("redis cluster: %s done after %d failed attempt(s)", what, failures)
                return result

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        parent = super().execute_command
        if kwargs.get("target_nodes") is not None:
            return parent(*args, **kwargs)  # an explicit node may be gone: no retry
        return self.ride(lambda: parent(*args, **kwargs), str(args[0]))

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> _ReplayPipeline:
        """A non-transactional pipeline that is replayed whole when a failover interrupts it
        (the serving code queues only idempotent commands). Transactions are not offered:
        the serving code needs none, and a cluster allows them only within one slot."""
        if transaction or shard_hint:
            raise ValueError("ClusterClient pipelines are non-transactional")
        return _ReplayPipeline(self)


class _ReplayPipeline:
    """Records commands (``pipe.set(...)``, ``pipe.hgetall(...)``, ...) and runs them in a fresh
    :class:`~redis.cluster.ClusterPipeline` per attempt (redis-py splits it per node)."""

    def __init__(self, client: ClusterClient) -> None:
        self._client = client
        self._calls: list[tuple[str, tuple, dict]] = []

    def __getattr__(self, name: str) -> Callable[..., _ReplayPipeline]:
        if name.startswith("_"):
            raise AttributeError(name)

        def queue(*args: Any, **kwargs: Any) -> _ReplayPipeline:
            self._calls.append((name, args, kwargs))
            return self

        return queue

    def __len__(self) -> int:
        return len(self._calls)

    def __enter__(self) -> _ReplayPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.reset()

    def reset(self) -> None:
        self._calls = []

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        calls, self._calls = self._calls, []
        if not calls:
            return []

        def attempt() -> list[Any]:
            pipe = RedisCluster.pipeline(self._client)
            for name, args, kwargs in calls:
                getattr(pipe, name)(*args, **kwargs)
            replies = pipe.execute(raise_on_error=False)
            for reply in replies:
                if isinstance(reply, Exception) and (raise_on_error or _is_failover_error(reply)):
                    raise reply
            return replies

        return self._client.ride(attempt, f"a pipeline of {len(calls)} command(s)")


class _Deferred:
    """The client of a URL whose server did not answer at :func:`connect`: every attribute
    access first tries to make the real client (standalone or cluster, whichever the server
    turns out to be), raising :class:`redis.ConnectionError` while it is still unreachable."""

    def __init__(self, make: Callable[[], RedisClient], url: str) -> None:
        self._make = make
        self._url = url
        self._client: RedisClient | None = None
        self._lock = threading.Lock()

    def resolve(self) -> RedisClient:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._make()
        return self._client

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.resolve(), name)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def __repr__(self) -> str:
        state = "not connected yet" if self._client is None else repr(self._client)
        return f"<client of {redact(self._url)}: {state}>"


def _cluster_enabled(probe: redis.Redis) -> bool:
    """Whether the server runs in cluster mode (``INFO cluster``; ``CLUSTER INFO`` where
    ``INFO`` is not allowed)."""
    try:
        return bool(probe.info("cluster").get("cluster_enabled"))
    except (redis.ConnectionError, redis.TimeoutError):
        raise
    except redis.ResponseError:
        try:
            probe.execute_command("CLUSTER", "INFO")
        except (redis.ConnectionError, redis.TimeoutError):
            raise
        except redis.ResponseError:
            return False  # "cluster support disabled", or not allowed to ask: standalone
        return True


def connect(
    url: str, *, timeout_s: float = 1.0, failover_timeout_s: float = 30.0, **kwargs: Any
) -> RedisClient:
    """A client for ``url`` (``redis://``, ``rediss://`` for TLS, ``unix://``; password and db
    in the URL) that returns bytes and bounds every command by ``timeout_s``: a
    :class:`redis.Redis` for a standalone server, a :class:`ClusterClient` when the server is
    a node of a Redis Cluster (any node; db must be 0), see the module docstring.

    Args:
        url: the server, or any node of the cluster.
        timeout_s: socket connect and read timeout of each command (per node).
        failover_timeout_s: cluster mode: how long a command keeps retrying while a master
            fails over (:attr:`ClusterClient.failover_timeout_s`).
        kwargs: more client options (redis-py's keyword arguments).
    """
    options = dict(
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        decode_responses=False,
        **kwargs,
    )

    def make() -> RedisClient:
        probe = redis.Redis.from_url(url, **options)
        try:
            cluster = _cluster_enabled(probe)
        except BaseException:
            probe.close()
            raise
        if not cluster:
            return probe
        probe.close()
        try:
            client = ClusterClient.from_url(url, **options)
        except RedisClusterException as exc:
            if _is_failover_error(exc):  # the cluster is not serving every slot yet
                raise redis.ConnectionError(f"Redis Cluster at {redact(url)}: {exc}") from exc
            raise
        client.failover_timeout_s = float(failover_timeout_s)
        client.replica_wait_s = max(0.001, min(0.5, timeout_s / 2))
        return client

    try:
        return make()
    except (redis.ConnectionError, redis.TimeoutError):
        return _Deferred(make, url)  # type: ignore[return-value]


def is_cluster(client: Any) -> bool:
    """Whether ``client`` talks to a Redis Cluster (resolves a client made while its server
    was down, which raises :class:`redis.ConnectionError` if it still is)."""
    if isinstance(client, _Deferred):
        client = client.resolve()
    return isinstance(client, RedisCluster)


def _replicas_of(node: redis.Redis) -> int:
    """The replicas of the master ``node`` that the cluster does not consider failed, from
    its own ``CLUSTER NODES``; raises :class:`_NotAMaster` if it is not a master (any more)."""
    raw = node.execute_command("CLUSTER", "NODES")
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    rows = [line.split() for line in text.splitlines() if len(line.split()) >= 8]
    me = next((r for r in rows if "myself" in r[2].split(",")), None)
    if me is None or "master" not in me[2].split(","):
        raise _NotAMaster("the slot's node is not a master any more")
    return sum(
        1
        for r in rows
        if r[3] == me[0] and not {"fail", "handshake", "noaddr"} & set(r[2].split(","))
    )


def replicated_pipeline(
    client: Any, key: str, fill: Callable[[Any], None], *, what: str
) -> list[Any]:
    """Run the writes ``fill(pipe)`` queues, all in ``key``'s slot, in one pipeline and return
    the replies; in cluster mode on the master owning that slot and followed by ``WAIT`` for
    all its replicas (see the module docstring), so the caller may then point readers at
    them. ``what`` names the writes in errors and log lines.

    Raises:
        ReplicationError: cluster mode, replicas missing past the failover budget.
        redis.RedisError: Redis failed (in cluster mode after the failover budget).
    """
    if not is_cluster(client):
        pipe = client.pipeline(transaction=False)
        fill(pipe)
        return pipe.execute()
    cluster: ClusterClient = client.resolve() if isinstance(client, _Deferred) else client
    wait_ms = max(1, int(getattr(cluster, "replica_wait_s", 0.5) * 1000))

    def attempt() -> list[Any]:
        node = cluster.get_node_from_key(key)
        try:
            redis_node = cluster.get_redis_connection(node)
            expected = _replicas_of(redis_node)
            pipe = redis_node.pipeline(transaction=False)
            fill(pipe)
            if expected:
                pipe.wait(expected, wait_ms)  # same connection: waits for these writes
            replies = pipe.execute()
        except Exception as exc:
            if _is_failover_error(exc):
                # The slot may have moved: read the map again before the next attempt (if
                # that fails too, so does the next attempt, which is retried).
                with contextlib.suppress(Exception):
                    cluster.nodes_manager.initialize()
            raise
        if expected:
            acked = int(replies.pop())
            if acked < expected:
                raise ReplicationError(what, acked, expected, node.name, wait_ms)
        return replies

    if not isinstance(cluster, ClusterClient):  # a RedisCluster made elsewhere: one attempt
        return attempt()
    return cluster.ride(attempt, what)
