"""Reading served embeddings: :class:`EmbeddingClient` (current version, item and user
vectors, dot-product top-k over the item matrix it caches, refreshed when the pointer changes).

**Why readers never see a torn or mixed snapshot.** Version keys are immutable once written
(a delta is a new key, never an edit of a chunk). The pointer is switched only after every
write of the version or delta was acknowledged, and a reader resolves everything from one
pointer read: version V's chunks plus deltas 1..seq. Every full snapshot carries the sha256
of its rows and every delta the sha256 of its payload; the client verifies both. A key that
vanished under a reader (an expired version) makes it re-read the pointer and start over.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from streaming.errors import StreamingError
from streaming.serving.admin import SnapshotStore
from streaming.serving.connection import RedisClient, connect
from streaming.serving.keys import (
    INDEX_DTYPE,
    ROW_DTYPE,
    SnapshotError,
    load_json,
    sha256,
)


class UnknownItemsError(StreamingError, KeyError):
    """Item ids that the served snapshot does not hold.

    Attributes:
        missing: the unknown ids, in request order.
    """

    def __init__(self, missing: Sequence[str], version: int | None) -> None:
        self.missing = list(missing)
        shown = ", ".join(repr(m) for m in self.missing[:5])
        more = f" and {len(self.missing) - 5} more" if len(self.missing) > 5 else ""
        super().__init__(
            f"{len(self.missing)} unknown item id(s) in version {version}: {shown}{more}"
        )

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0]


@dataclass(frozen=True)
class ServedSnapshot:
    """A consistent copy of what a client serves (:meth:`EmbeddingClient.snapshot`)."""

    pointer: dict[str, Any]
    item_ids: list[str]
    matrix: np.ndarray


@dataclass(frozen=True)
class Recommendation:
    """One recommended item."""

    item_id: str
    score: float


class EmbeddingClient:
    """Reads served embeddings from Redis (never unpickles anything).

    The item matrix of the current version is cached in memory and refreshed when the pointer
    changes: a new version is loaded whole (chunks verified against the checksum), a higher
    sequence number of the same version applies only the missing deltas. By default every
    call reads the pointer (one round trip); ``max_staleness_s > 0`` skips that check for
    calls within that many seconds of the last one.

    Args:
        redis_url: ``redis://[:password@]host:port/db`` or ``rediss://``; for a Redis Cluster
            the URL of any node (:func:`~streaming.serving.connection.connect`).
        namespace: the publisher's namespace.
        timeout_s: bound of each Redis command (in cluster mode each attempt; a failover is
            waited out, see :class:`~streaming.serving.connection.ClusterClient`).
        max_staleness_s: how long a cached pointer may be trusted without re-reading it.
        client: a Redis client to use instead of connecting to ``redis_url``.
    """

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        namespace: str = "sevo",
        timeout_s: float = 1.0,
        max_staleness_s: float = 0.0,
        client: RedisClient | None = None,
    ) -> None:
        if client is None:
            if redis_url is None:
                raise ValueError("give redis_url or client")
            client = connect(redis_url, timeout_s=timeout_s)
        self.store = SnapshotStore(client, namespace)
        self.redis = client
        self.keys = self.store.keys
        self.max_staleness_s = float(max_staleness_s)
        self._lock = threading.Lock()
        self._version: int | None = None
        self._uid: str | None = None
        self._seq = 0
        self._pointer: dict[str, Any] | None = None
        self._meta: dict[str, Any] | None = None
        self._matrix = np.zeros((0, 0), dtype=np.float32)
        self._n = 0
        self._ids: list[str] = []
        self._rows: dict[str, int] = {}
        self._checked_at = -math.inf

    # ------------------------------------------------------------------ refreshing
    def refresh(self, *, force: bool = False) -> dict[str, Any] | None:
        """Bring the cache up to the current pointer; returns the pointer (None: nothing
        published).

        Raises:
            SnapshotError: the snapshot stayed inconsistent over several attempts (keys
                missing, checksum mismatch).
        """
        with self._lock:
            now = time.monotonic()
            if (
                not force
                and self._pointer is not None
                and now - self._checked_at < self.max_staleness_s
            ):
                return self._pointer
            last_error: Exception | None = None
            for _attempt in range(5):
                pointer = self.store.pointer()
                self._checked_at = now
                if pointer is None:
                    self._pointer = None
                    return None
                version, seq = int(pointer["version"]), int(pointer["seq"])
                try:
                    if (
                        version != self._version
                        or pointer.get("uid") != self._uid
                        or seq < self._seq
                    ):
                        self._load_version(version, seq, pointer.get("uid"))
                    elif seq > self._seq:
                        self._apply_deltas(version, self._seq + 1, seq)
                except SnapshotError as exc:  # a version expired or switched under us: retry
                    last_error = exc
                    self._version = None
                    continue
                self._pointer = pointer
                return pointer
            raise SnapshotError(f"could not read a consistent snapshot: {last_error}")

    def _load_version(self, version: int, seq: int, uid: str | None) -> None:
        keys = self.keys
        meta = self.store.meta(version)
        if meta is None:
            raise SnapshotError(f"version {version} has no metadata (expired?)")
        if meta.get("uid") != uid:
            raise SnapshotError(f"version {version} was replaced while it was read")
        if meta.get("dtype") != ROW_DTYPE.str:
            raise SnapshotError(f"version {version} has dtype {meta.get('dtype')!r}, not <f4")
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(keys.ids(version))
        for i in range(int(meta["chunks"])):
            pipe.get(keys.chunk(version, i))
        replies = pipe.execute()
        if any(r is None for r in replies):
            raise SnapshotError(f"version {version} is missing keys (expired?)")
        ids = load_json(replies[0], f"ids of version {version}")
        if not isinstance(ids, list):
            raise SnapshotError(f"ids of version {version} are not a JSON list")
        data = b"".join(replies[1:])
        if sha256(data) != meta["checksum"]:
            raise SnapshotError(f"version {version}: checksum mismatch")
        n, dim = int(meta["rows"]), int(meta["dim"])
        if len(ids) != n or len(data) != n * dim * ROW_DTYPE.itemsize:
            raise SnapshotError(
                f"version {version}: {len(ids)} ids, {len(data)} bytes for {n} rows"
            )
        capacity = max(16, int(n * 1.25))
        matrix = np.zeros((capacity, dim), dtype=np.float32)
        matrix[:n] = np.frombuffer(data, dtype=ROW_DTYPE).reshape(n, dim)
        self._matrix, self._n, self._ids = matrix, n, ids
        self._rows = {item: row for row, item in enumerate(ids)}
        self._meta, self._version, self._seq = meta, version, 0
        self._uid = meta.get("uid")
        if seq:
            self._apply_deltas(version, 1, seq)

    def _apply_deltas(self, version: int, first: int, last: int) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for s in range(first, last + 1):
            pipe.hgetall(self.keys.delta(version, s))
        dim = self._matrix.shape[1]
        for s, fields in zip(range(first, last + 1), pipe.execute()):
            if not fields:
                raise SnapshotError(f"delta {s} of version {version} is missing")
            meta = load_json(fields.get(b"meta"), f"delta {s} of version {version}")
            index_bytes, vector_bytes = fields.get(b"rows", b""), fields.get(b"vectors", b"")
            if sha256(index_bytes, vector_bytes) != meta["checksum"]:
                raise SnapshotError(f"delta {s} of version {version}: checksum mismatch")
            if meta.get("uid") != self._uid:
                raise SnapshotError(f"delta {s} belongs to another snapshot {version}")
            if int(meta["rows_before"]) != self._n:
                raise SnapshotError(
                    f"delta {s} of version {version} does not follow {self._n} rows"
                )
            idx = np.frombuffer(index_bytes, dtype=INDEX_DTYPE)
            vecs = np.frombuffer(vector_bytes, dtype=ROW_DTYPE).reshape(idx.size, dim)
            n = int(meta["rows"])
            if n > self._matrix.shape[0]:
                grown = np.zeros((max(n, int(self._matrix.shape[0] * 1.5)), dim), np.float32)
                grown[: self._n] = self._matrix[: self._n]
                self._matrix = grown
            for item in meta["new_ids"]:
                self._rows[str(item)] = len(self._ids)
                self._ids.append(str(item))
            self._matrix[idx] = vecs
            self._n, self._seq = n, s

    # ------------------------------------------------------------------ queries
    def current_version(self) -> int | None:
        """The served version (None: nothing published)."""
        pointer = self.refresh()
        return None if pointer is None else int(pointer["version"])

    def pointer(self) -> dict[str, Any] | None:
        """The current pointer: version, seq (delta sequence), rows, dim, model, offsets,
        watermark, published_at."""
        return self.refresh()

    def metadata(self) -> dict[str, Any] | None:
        """The served version's metadata merged with the pointer's newest fields."""
        pointer = self.refresh()
        if pointer is None:
            return None
        return {**(self._meta or {}), **pointer}

    def snapshot(self) -> ServedSnapshot | None:
        """The served state as one consistent copy: pointer, ids and rows read under one
        refresh (``item_ids()`` and ``item_matrix()`` called one after the other may straddle
        a publish). None when nothing is published."""
        pointer = self.refresh()
        if pointer is None:
            return None
        with self._lock:
            return ServedSnapshot(
                dict(self._pointer), list(self._ids[: self._n]), self._matrix[: self._n].copy()
            )

    def item_ids(self) -> list[str]:
        """Item ids of the served matrix, in row order (a copy)."""
        self.refresh()
        return list(self._ids[: self._n])

    def item_matrix(self) -> np.ndarray:
        """The served ``(rows, dim)`` float32 item matrix (a read-only view)."""
        self.refresh()
        with self._lock:
            view = self._matrix[: self._n]
        view.flags.writeable = False
        return view

    def item_vectors(self, item_ids: Sequence[str], *, missing: str = "error") -> np.ndarray:
        """``(len(item_ids), dim)`` float32 vectors of the given items.

        Args:
            missing: ``"error"`` raises :class:`UnknownItemsError` naming unknown ids;
                ``"nan"`` fills their rows with NaN.
        """
        if missing not in ("error", "nan"):
            raise ValueError(f"missing must be 'error' or 'nan', got {missing!r}")
        self.refresh()
        ids = [str(i) for i in item_ids]
        with self._lock:
            table = self._rows
            rows = np.fromiter((table.get(i, -1) for i in ids), dtype=np.int64, count=len(ids))
            unknown = rows < 0
            if unknown.any() and missing == "error":
                raise UnknownItemsError([i for i, u in zip(ids, unknown) if u], self._version)
            dim = self._matrix.shape[1] if self._version is not None else 0
            out = np.full((len(ids), dim), np.nan, dtype=np.float32)
            out[~unknown] = self._matrix[rows[~unknown]]
        return out

    def user_state(self, user_id: str) -> dict[str, Any] | None:
        """``{"vector", "recent_items", "seen_items", "updated", "version"}`` of a user, or None
        when the user is unknown, expired, or its vector does not fit the served dimension.
        ``seen_items``: the distinct items the engine knew the user had interacted with, newest
        first (capped by the publisher's ``seen_per_user``)."""
        fields = self.redis.hgetall(self.keys.user(str(user_id)))
        if not fields or b"v" not in fields:
            return None
        vector = np.frombuffer(fields[b"v"], dtype=ROW_DTYPE)
        self.refresh()
        if self._version is None or vector.size != self._matrix.shape[1]:
            return None
        return {
            "vector": vector.copy(),
            "recent_items": [str(i) for i in load_json(fields.get(b"items"), "items") or []],
            "seen_items": [str(i) for i in load_json(fields.get(b"seen"), "seen") or []],
            "updated": float(fields.get(b"t", b"nan")),
            "version": int(fields.get(b"version", b"0")),
        }

    def user_vector(self, user_id: str) -> np.ndarray | None:
        """The user's served vector (float32 ``(dim,)``) or None when unknown/expired."""
        state = self.user_state(user_id)
        return None if state is None else state["vector"]

    def recommend(
        self,
        user_id: str,
        k: int = 10,
        *,
        exclude: Sequence[str] = (),
        exclude_seen: bool = True,
    ) -> list[Recommendation]:
        """Top-``k`` items by dot product with the user's vector, best first.

        Args:
            exclude: item ids never to return.
            exclude_seen: also exclude what the user has interacted with: its recent items and
                the seen items published with its vector. False for re-consumption domains.

        Returns:
            ``[]`` for an unknown or expired user (or an empty snapshot).
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        state = self.user_state(user_id)
        if state is None or self._n == 0:
            return []
        with self._lock:
            matrix, n, rows_of, ids = self._matrix, self._n, self._rows, self._ids
            # einsum stays on this thread: a multithreaded BLAS gemv competes with Redis and
            # the caller for the cores, which made the p99 7x worse on a busy 2-core machine.
            scores = np.einsum("ij,j->i", matrix[:n], state["vector"])
        banned = list(exclude)
        if exclude_seen:
            banned += state["recent_items"] + state["seen_items"]
        banned_rows = [rows_of[i] for i in banned if i in rows_of]
        if banned_rows:
            scores[banned_rows] = -np.inf
        kk = min(k, n - len(set(banned_rows)))
        if kk <= 0:
            return []
        top = np.argpartition(-scores, kk - 1)[:kk]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [Recommendation(ids[r], float(scores[r])) for r in top.tolist()]
