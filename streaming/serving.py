"""Serving embeddings through Redis: versioned snapshots, deltas, rollback, a client (DESIGN §5).

Three parts share one key layout:

* :class:`SnapshotWriter` writes a **full snapshot** of the item table (raw little-endian
  float32 rows in chunks, JSON metadata, the id map) under version-specific keys and then
  switches the current-version pointer with one ``SET``; between full snapshots it writes
  **deltas** (only the rows that changed since the last publish, plus appended new items) and
  bumps the pointer's sequence number. It also writes **user vectors** with a TTL.
* :class:`EmbeddingPublisher` runs a writer on a background thread for the engine's run
  loops (``sevo run`` / ``sevo replay --redis-url``): the loop hands it the trainer's outputs
  every ``publish_every_s`` and never waits for Redis. When Redis is down or slow, training
  continues; the publisher retries with backoff and catches up with a full snapshot.
* :class:`EmbeddingClient` reads: the current version, item vectors, user vectors and a
  dot-product top-k over the item matrix it caches (refreshed when the pointer changes).
  :class:`SnapshotStore` lists, shows, rolls back and pauses (``sevo snapshots``).

**Key layout** (``ns`` = namespace; ``{...}`` is a Redis Cluster hash tag, so a version's keys
share one slot and can be written in one pipeline)::

    {ns}:current            JSON pointer {"version", "seq", "rows", "dim", "offsets",
                            "watermark", "published_at"}; the only key readers start from
    {ns}:versions           sorted set: version -> creation time
    {ns}:counter            INCR source of version numbers
    {ns}:paused             present while publishing is paused (JSON: since, reason)
    {ns}:full-requested     set by ``request_full``; the engine's next publish is full
    {ns}:updates            pub/sub channel; the pointer JSON is published on every switch
    {ns:vV}:meta            JSON metadata of version V (see :meth:`SnapshotWriter.publish_full`)
    {ns:vV}:ids             JSON list of the item ids of rows 0..rows-1
    {ns:vV}:chunk:i         rows [i*chunk_rows, (i+1)*chunk_rows) as '<f4' bytes
    {ns:vV}:delta:s         hash {meta (JSON), rows ('<i4' row indices), vectors ('<f4')}
    {ns:vV}:head            the pointer JSON of V's newest delta (what a rollback restores)
    ns:user:U               hash {v ('<f4'), items (JSON recent item ids), t, version}, TTL

**Why readers never see a torn or mixed snapshot.** Version keys are immutable once written
(a delta is a new key, never an edit of a chunk). The pointer is switched only after every
write of the version or delta was acknowledged, and a reader resolves everything from one
pointer read: version V's chunks plus deltas 1..seq. Every full snapshot carries the sha256
of its rows and every delta the sha256 of its payload; the client verifies both. A key that
vanished under a reader (an expired version) makes it re-read the pointer and start over.

**Rollback and publishing.** ``rollback`` switches the pointer back to an older version (its
rows and deltas as they were). The publisher keeps training from the live model, so its next
publish (a delta on its own version, or a full snapshot) supersedes the rollback — unless
publishing is paused (``pause``, or ``rollback(..., pause=True)``); after ``resume`` the
publisher writes a full snapshot. One publisher per namespace: two engines publishing into
one namespace would flip the pointer between their models.

**Retention.** After each full snapshot the newest ``keep_versions`` versions (and whatever
the pointer names) stay; older ones get a TTL of ``grace_s`` so readers still loading them
can finish; they disappear from ``list`` once their keys have expired.

Nothing read from Redis is unpickled or evaluated: metadata is JSON, rows are ``np.frombuffer``.
Auth and TLS come with the URL (``redis://:password@host:6379/0``, ``rediss://...``).

Example:
    >>> writer = SnapshotWriter(redis.Redis(), "demo")  # doctest: +SKIP
    >>> writer.publish_full(["a", "b"], np.eye(2, dtype=np.float32), model="mf")  # doctest: +SKIP
    >>> EmbeddingClient("redis://localhost:6379/0", namespace="demo").item_vectors(["b"])
    ... # doctest: +SKIP
    array([[0., 1.]], dtype=float32)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import redis

from streaming.errors import StreamingError, describe_error
from streaming.retry import Backoff, ExponentialBackoff

__all__ = [
    "EmbeddingClient",
    "EmbeddingPublisher",
    "PublishConfig",
    "PublishResult",
    "Recommendation",
    "ServedSnapshot",
    "SnapshotError",
    "SnapshotStore",
    "SnapshotWriter",
    "UnknownItemsError",
    "connect",
]

log = logging.getLogger(__name__)

_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_ROW_DTYPE = np.dtype("<f4")
_INDEX_DTYPE = np.dtype("<i4")


class SnapshotError(StreamingError):
    """A snapshot could not be read or written consistently (missing keys, bad checksum,
    unknown version)."""


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


def connect(url: str, *, timeout_s: float = 1.0, **kwargs: Any) -> redis.Redis:
    """A Redis client for ``url`` (``redis://``, ``rediss://`` for TLS, ``unix://``; password
    and db in the URL) that returns bytes and bounds every command by ``timeout_s``."""
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        decode_responses=False,
        **kwargs,
    )


def _redact(url: str) -> str:
    """The URL without its password, for log lines and errors."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


class _Keys:
    """Key names of one namespace (see the module docstring)."""

    def __init__(self, namespace: str) -> None:
        if not isinstance(namespace, str) or not _NAMESPACE_RE.match(namespace):
            raise ValueError(
                f"namespace must be 1-128 characters of letters, digits and _.:- "
                f"(no braces), got {namespace!r}"
            )
        ns = namespace
        self.namespace = ns
        self.current = f"{{{ns}}}:current"
        self.versions = f"{{{ns}}}:versions"
        self.counter = f"{{{ns}}}:counter"
        self.paused = f"{{{ns}}}:paused"
        self.full_requested = f"{{{ns}}}:full-requested"
        self.updates = f"{{{ns}}}:updates"
        self._user_prefix = f"{ns}:user:"

    def _v(self, version: int) -> str:
        return f"{{{self.namespace}:v{int(version)}}}"

    def meta(self, version: int) -> str:
        return f"{self._v(version)}:meta"

    def ids(self, version: int) -> str:
        return f"{self._v(version)}:ids"

    def head(self, version: int) -> str:
        return f"{self._v(version)}:head"

    def chunk(self, version: int, index: int) -> str:
        return f"{self._v(version)}:chunk:{int(index)}"

    def delta(self, version: int, seq: int) -> str:
        return f"{self._v(version)}:delta:{int(seq)}"

    def user(self, user_id: str) -> str:
        return f"{self._user_prefix}{user_id}"

    def version_keys(self, version: int, chunks: int, seq: int) -> list[str]:
        """Every key of a version with ``chunks`` chunks and deltas ``1..seq``."""
        return (
            [self.meta(version), self.ids(version), self.head(version)]
            + [self.chunk(version, i) for i in range(chunks)]
            + [self.delta(version, s) for s in range(1, seq + 1)]
        )


def _sha256(*parts: bytes | memoryview) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return "sha256:" + h.hexdigest()


def _as_rows(matrix: np.ndarray, *, check_finite: bool = True) -> np.ndarray:
    """``matrix`` as a C-contiguous little-endian float32 2-D array (no copy if it is one)."""
    m = np.asarray(matrix)
    if m.ndim != 2:
        raise ValueError(f"expected a 2-D (rows, dim) matrix, got shape {m.shape}")
    if check_finite and not np.all(np.isfinite(m)):
        raise ValueError("the matrix holds NaN or infinite values; refusing to publish it")
    return np.ascontiguousarray(m, dtype=_ROW_DTYPE)


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


def _load_json(raw: bytes | None, what: str) -> Any:
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SnapshotError(f"{what} is not valid JSON ({exc})") from exc


def _checked(results: Sequence[Any], what: str) -> None:
    """Raise if any reply of a pipeline is an error or a failed write."""
    for result in results:
        if isinstance(result, Exception):
            raise result
        if result is False or result is None:
            raise SnapshotError(f"{what}: Redis refused a write ({result!r})")


@dataclass(frozen=True)
class PublishResult:
    """What one publish wrote.

    Attributes:
        kind: ``"full"``, ``"delta"`` or ``"none"`` (nothing changed, pointer untouched).
        version, seq: the pointer after the publish.
        rows: rows written (all rows for a full snapshot; changed + new rows for a delta).
        users: user vectors written.
        seconds: wall time of the Redis writes and the preparation.
        reason: why a full snapshot was written (``"first"``, ``"interval"``, ...) or ``""``.
    """

    kind: str
    version: int
    seq: int
    rows: int
    users: int
    seconds: float
    reason: str = ""


class SnapshotStore:
    """Read and administer a namespace's snapshots (``sevo snapshots``).

    Args:
        client: a bytes-returning Redis client (:func:`connect`).
        namespace: the key namespace (letters, digits, ``_.:-``).
    """

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.redis = client
        self.keys = _Keys(namespace)
        self.namespace = namespace

    # ------------------------------------------------------------------ reading
    def pointer(self) -> dict[str, Any] | None:
        """The current-version pointer, or ``None`` when nothing was published."""
        return _load_json(self.redis.get(self.keys.current), "the current pointer")

    def meta(self, version: int) -> dict[str, Any] | None:
        """Metadata of ``version`` (``None`` if it does not exist, e.g. expired)."""
        return _load_json(self.redis.get(self.keys.meta(version)), f"metadata of version {version}")

    def head(self, version: int) -> dict[str, Any] | None:
        """The pointer of ``version``'s newest delta (``None`` if the version is gone)."""
        return _load_json(self.redis.get(self.keys.head(version)), f"head of version {version}")

    def paused(self) -> dict[str, Any] | None:
        """``{"since", "reason"}`` while publishing is paused, else ``None``."""
        return _load_json(self.redis.get(self.keys.paused), "the pause marker")

    def versions(self) -> list[dict[str, Any]]:
        """Known versions, newest first: ``{"version", "created", "rows", "dim", "model",
        "seq", "current", "expires_in_s"}`` (``expires_in_s`` is None while retained)."""
        entries = self.redis.zrevrange(self.keys.versions, 0, -1, withscores=True)
        if not entries:
            return []
        current = self.pointer() or {}
        records = self._version_records([int(member) for member, _score in entries])
        out = []
        for (v, meta, head, pttl), (_member, score) in zip(records, entries):
            if meta is None:
                continue  # expired; pruned from the index by the next publish
            head = head or {}
            out.append(
                {
                    "version": v,
                    "created": float(score),
                    "rows": int(head.get("rows", meta["rows"])),
                    "dim": int(meta["dim"]),
                    "model": meta.get("model"),
                    "seq": int(head.get("seq", 0)),
                    "current": current.get("version") == v,
                    "expires_in_s": None if pttl is None or pttl < 0 else pttl / 1000.0,
                }
            )
        return out

    def _version_records(
        self, versions: Sequence[int]
    ) -> list[tuple[int, dict[str, Any] | None, dict[str, Any] | None, int | None]]:
        """``(version, meta, head, meta's PTTL in ms)`` of each version in one round trip;
        meta is None for a version whose keys are gone."""
        pipe = self.redis.pipeline(transaction=False)
        for v in versions:
            pipe.get(self.keys.meta(v))
            pipe.get(self.keys.head(v))
            pipe.pttl(self.keys.meta(v))
        replies = pipe.execute()
        return [
            (
                v,
                _load_json(replies[3 * i], f"metadata of version {v}"),
                _load_json(replies[3 * i + 1], f"head of version {v}"),
                replies[3 * i + 2],
            )
            for i, v in enumerate(versions)
        ]

    def _switch(self, pointer: bytes) -> None:
        """Point readers at ``pointer`` (one SET) and tell subscribers."""
        self.redis.set(self.keys.current, pointer)
        self.redis.publish(self.keys.updates, pointer)

    # ------------------------------------------------------------------ administration
    def rollback(self, version: int | None = None, *, pause: bool = False) -> dict[str, Any]:
        """Point readers at ``version`` (default: the newest version older than the current
        one) as it was at its newest delta; returns the new pointer.

        The version's keys lose any expiry, so retention keeps it while it is current. With
        ``pause=True`` publishing is paused first, so the engine does not supersede the
        rollback with its next publish (see the module docstring).

        Raises:
            SnapshotError: no such version (or none older than the current one), or its keys
                are already gone.
        """
        current = self.pointer()
        if version is None:
            older = [
                v["version"]
                for v in self.versions()
                if current is None or v["version"] < int(current["version"])
            ]
            if not older:
                raise SnapshotError(
                    f"namespace {self.namespace!r} has no version older than the current one "
                    "to roll back to"
                )
            version = older[0]
        version = int(version)
        meta, head = self.meta(version), self.head(version)
        if meta is None or head is None:
            raise SnapshotError(
                f"version {version} does not exist in namespace {self.namespace!r} "
                "(never published, or expired); see `sevo snapshots list`"
            )
        if pause:
            self.pause(reason=f"rollback to version {version}")
        keys = self.keys.version_keys(version, int(meta["chunks"]), int(head["seq"]))
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.persist(key)
        pipe.execute()
        # The persisted keys must all still be there, or readers would fail on this version.
        if self.redis.exists(*keys) != len(keys):
            raise SnapshotError(f"version {version} is incomplete (some keys already expired)")
        pointer = dict(head, rolled_back_at=time.time())
        self._switch(_json(pointer))
        log.info("namespace %s rolled back to version %d", self.namespace, version)
        return pointer

    def pause(self, reason: str = "") -> None:
        """Pause publishing: engines keep training but write nothing until :meth:`resume`."""
        self.redis.set(self.keys.paused, _json({"since": time.time(), "reason": reason}))

    def resume(self) -> bool:
        """Resume publishing (the engine's next publish is a full snapshot); True if it was
        paused."""
        return bool(self.redis.delete(self.keys.paused))

    def request_full(self) -> None:
        """Ask the publishing engine for a full snapshot at its next publish (on demand)."""
        self.redis.set(self.keys.full_requested, _json({"since": time.time()}))

    def _publish_controls(self) -> tuple[dict[str, Any] | None, bool]:
        """(the pause marker, whether a full snapshot was requested — consumed) in one trip."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(self.keys.paused)
        pipe.getdel(self.keys.full_requested)
        paused_raw, requested = pipe.execute()
        return _load_json(paused_raw, "the pause marker"), requested is not None


class SnapshotWriter(SnapshotStore):
    """Writes full snapshots, deltas and user vectors of one namespace (synchronously).

    The writer remembers the rows as readers see them (its last publish), so a delta holds
    exactly the rows that differ from what is served. Rows whose change since then is at most
    ``delta_tolerance`` of their norm (L2, relative) are not rewritten; the served row then
    lags the live one by less than that, and the difference is carried until it grows past it.

    Args:
        client: a bytes-returning Redis client (:func:`connect`).
        namespace: the key namespace.
        chunk_rows: rows per chunk key of a full snapshot.
        keep_versions: versions kept without expiry (the newest ones and the current one).
        grace_s: TTL given to versions that fall out of retention.
        user_ttl_s: TTL of user vectors.
        delta_tolerance: relative L2 change below which a row is not republished (0: any
            change is published).
        max_chain_factor: the deltas of one version hold at most this many times its rows in
            total; a delta that would exceed it is written as a full snapshot instead. This
            bounds what a reader loading the version reads and what a version occupies in
            Redis (a trainer whose Adam moments move every row makes every delta the whole
            table: then every ``max_chain_factor``-th publish is full).
        max_deltas: deltas per version before the next publish is a full snapshot.
    """

    def __init__(
        self,
        client: redis.Redis,
        namespace: str,
        *,
        chunk_rows: int = 4096,
        keep_versions: int = 5,
        grace_s: float = 60.0,
        user_ttl_s: float = 7 * 86_400.0,
        delta_tolerance: float = 1e-3,
        max_chain_factor: float = 2.0,
        max_deltas: int = 1000,
    ) -> None:
        super().__init__(client, namespace)
        if chunk_rows < 1 or keep_versions < 1 or max_deltas < 1:
            raise ValueError("chunk_rows, keep_versions and max_deltas must be >= 1")
        if not grace_s > 0 or not user_ttl_s > 0:
            raise ValueError("grace_s and user_ttl_s must be > 0")
        if not delta_tolerance >= 0 or not max_chain_factor >= 0:
            raise ValueError("delta_tolerance and max_chain_factor must be >= 0")
        self.chunk_rows = int(chunk_rows)
        self.keep_versions = int(keep_versions)
        self.grace_s = float(grace_s)
        self.user_ttl_s = float(user_ttl_s)
        self.delta_tolerance = float(delta_tolerance)
        self.max_chain_factor = float(max_chain_factor)
        self._chain_rows = 0  # rows in the current version's deltas
        self.max_deltas = int(max_deltas)
        self.version: int | None = None
        self.seq = 0
        self._published: np.ndarray | None = None  # rows as readers see them
        self._sq_norms: np.ndarray | None = None  # squared L2 norms of _published rows
        self._scratch: np.ndarray | None = None
        self._ids: list[str] = []
        self._id_set: set[str] = set()
        self._model = ""
        self._uid = ""

    # ------------------------------------------------------------------ state
    @property
    def published_rows(self) -> np.ndarray | None:
        """The item rows as readers of the current version see them (read-only view)."""
        if self._published is None:
            return None
        view = self._published.view()
        view.flags.writeable = False
        return view

    def forget(self) -> None:
        """Drop what the writer knows of Redis' contents, so the next publish is full (after
        a Redis failure, whose writes may have been lost)."""
        self.version, self.seq, self._published, self._sq_norms = None, 0, None, None

    def _pointer(self, version: int, seq: int, rows: int, dim: int, extra: Mapping) -> bytes:
        return _json(
            {
                "version": version,
                "uid": self._uid,
                "seq": seq,
                "rows": rows,
                "dim": dim,
                "model": self._model,
                "offsets": dict(extra.get("offsets") or {}),
                "watermark": extra.get("watermark"),
                "published_at": time.time(),
            }
        )

    # ------------------------------------------------------------------ full snapshots
    def publish_full(
        self,
        item_ids: Sequence[str],
        matrix: np.ndarray,
        *,
        model: str | None = None,
        watermark: float | None = None,
        offsets: Mapping[str, int] | None = None,
        extra_meta: Mapping[str, Any] | None = None,
        reason: str = "manual",
    ) -> PublishResult:
        """Write ``matrix`` (row ``i`` is item ``item_ids[i]``) as a new version and point
        readers at it.

        Metadata (``{ns:vV}:meta``): ``version, model, dim, dtype ("<f4"), rows, chunk_rows,
        chunks, ids_key, watermark`` (newest event time reflected), ``offsets`` (source
        positions reflected), ``checksum`` (sha256 of the row bytes), ``created``, plus
        ``extra_meta``.

        Raises:
            ValueError: mismatched ids/rows, duplicate ids, or non-finite values.
            redis.RedisError: Redis failed; the pointer still names the previous version.
        """
        t0 = time.perf_counter()
        rows = _as_rows(matrix)
        known = self._ids
        if (
            known
            and isinstance(item_ids, list)
            and len(item_ids) >= len(known)
            and all(isinstance(i, str) for i in item_ids[len(known) :])
            and item_ids[: len(known)] == known
        ):
            # The published ids (already unique) plus appended ones: check only the new ones.
            ids = list(item_ids)
            new = ids[len(known) :]
            if len(set(new)) != len(new) or not self._id_set.isdisjoint(new):
                raise ValueError("item ids must be unique")
        else:
            ids = list(map(str, item_ids))
            if len(set(ids)) != len(ids):
                raise ValueError("item ids must be unique")
        if len(ids) != rows.shape[0]:
            raise ValueError(f"{len(ids)} item ids for {rows.shape[0]} rows")
        n, dim = rows.shape
        version = int(self.redis.incr(self.keys.counter))
        # A Redis that lost its data restarts the counter: the uid tells a reader that a
        # reused version number is another snapshot.
        self._uid = uuid.uuid4().hex
        data = memoryview(rows).cast("B")  # no copy: rows is C-contiguous '<f4'
        chunk_bytes = self.chunk_rows * dim * _ROW_DTYPE.itemsize
        chunks = max(1, math.ceil(data.nbytes / chunk_bytes)) if n else 0
        created = time.time()
        if model is not None:
            self._model = model
        model = self._model
        meta = {
            "version": version,
            "uid": self._uid,
            "model": model,
            "dim": dim,
            "dtype": _ROW_DTYPE.str,
            "rows": n,
            "chunk_rows": self.chunk_rows,
            "chunks": chunks,
            "ids_key": self.keys.ids(version),
            "watermark": watermark,
            "offsets": dict(offsets or {}),
            "checksum": _sha256(data),
            "created": created,
            **dict(extra_meta or {}),
        }
        pointer = self._pointer(version, 0, n, dim, meta)
        pipe = self.redis.pipeline(transaction=False)
        for i in range(chunks):
            pipe.set(self.keys.chunk(version, i), data[i * chunk_bytes : (i + 1) * chunk_bytes])
        pipe.set(self.keys.ids(version), _json(ids))
        pipe.set(self.keys.meta(version), _json(meta))
        pipe.set(self.keys.head(version), pointer)
        pipe.zadd(self.keys.versions, {str(version): created})
        _checked(pipe.execute(), f"full snapshot {version}")
        self._switch(pointer)
        self.version, self.seq, self._ids, self._chain_rows = version, 0, ids, 0
        self._id_set = set(ids)
        self._published = rows.copy()  # the caller's array may change after we return
        self._sq_norms = np.einsum("ij,ij->i", self._published, self._published)
        self._apply_retention(version)
        return PublishResult("full", version, 0, n, 0, time.perf_counter() - t0, reason)

    def _apply_retention(self, current: int) -> None:
        """Give versions outside the newest ``keep_versions`` (and not current) a TTL; drop
        index entries whose keys are gone."""
        members = [int(m) for m in self.redis.zrevrange(self.keys.versions, 0, -1)]
        pointer = self.pointer() or {}
        keep = set(members[: self.keep_versions]) | {current, pointer.get("version")}
        old = [v for v in members if v not in keep]
        if not old:
            return
        pipe = self.redis.pipeline(transaction=False)
        gone = []
        for v, meta, head, pttl in self._version_records(old):
            if meta is None:
                gone.append(str(v))
                continue
            if pttl is not None and pttl >= 0:
                continue  # already expiring
            head = head or {"seq": 0}
            for key in self.keys.version_keys(v, int(meta["chunks"]), int(head["seq"])):
                pipe.expire(key, max(1, math.ceil(self.grace_s)))
        if gone:
            pipe.zrem(self.keys.versions, *gone)
        pipe.execute()

    # ------------------------------------------------------------------ deltas
    def changed_rows(self, matrix: np.ndarray) -> np.ndarray:
        """Rows of ``matrix`` (among those already published) that differ from the served
        ones by more than ``delta_tolerance`` (int64 indices). Rows holding NaN never count
        as changed (they are never published)."""
        if self._published is None:
            raise SnapshotError("nothing published yet")
        old = self._published
        if self.delta_tolerance == 0:
            # Exact: rows with any differing element (one comparison pass), minus rows that
            # hold NaN (checked on the candidates only).
            differs = np.not_equal(matrix[: old.shape[0]], old)
            if differs.shape[1] % 8 == 0:  # 8 bools at a time
                candidates = np.flatnonzero(differs.view(np.uint64).any(axis=1))
            else:
                candidates = np.flatnonzero(differs.any(axis=1))
            return candidates[~np.isnan(matrix[candidates]).any(axis=1)]
        if self._scratch is None or self._scratch.shape != old.shape:
            self._scratch = np.empty_like(old)
        diff = np.subtract(matrix[: old.shape[0]], old, out=self._scratch)
        moved_sq = np.einsum("ij,ij->i", diff, diff)
        limit_sq = self.delta_tolerance**2 * np.maximum(self._sq_norms, 1e-24)
        return np.flatnonzero(moved_sq > limit_sq)

    def publish_delta(
        self,
        item_ids: Sequence[str],
        matrix: np.ndarray,
        *,
        watermark: float | None = None,
        offsets: Mapping[str, int] | None = None,
        model: str | None = None,
    ) -> PublishResult:
        """Publish the rows that changed since the last publish, and new items appended at the
        end; falls back to :meth:`publish_full` when there is no base version, the dimension
        changed, earlier rows were reordered, or the delta would be too large.

        ``item_ids`` must extend the published ids (online training only appends items).
        Returns a result with ``kind="none"`` when nothing changed.
        """
        t0 = time.perf_counter()
        model = self._model if model is None else model
        rows_all = _as_rows(matrix, check_finite=False)  # checked below, rows published only
        ids = item_ids
        if len(ids) != rows_all.shape[0]:
            raise ValueError(f"{len(ids)} item ids for {rows_all.shape[0]} rows")
        known = self._ids
        reason = ""
        if self._published is None or self.version is None:
            reason = "first"
        elif rows_all.shape[1] != self._published.shape[1]:
            reason = "dimension changed"
        elif len(ids) < len(known) or (
            known and (str(ids[0]) != known[0] or str(ids[len(known) - 1]) != known[-1])
        ):
            # O(1) guard: online training only appends items, so the published ids must be
            # a prefix; a different first or last one means the table was rebuilt.
            reason = "item ids reordered"
        elif self.seq >= self.max_deltas:
            reason = "delta chain limit"
        if reason:
            return self.publish_full(
                ids, rows_all, model=model, watermark=watermark, offsets=offsets, reason=reason
            )
        n_old, n = self._published.shape[0], rows_all.shape[0]
        changed = self.changed_rows(rows_all)
        idx = np.concatenate([changed, np.arange(n_old, n)]).astype(_INDEX_DTYPE)
        if self._chain_rows + idx.size > self.max_chain_factor * max(n, 1):
            return self.publish_full(
                ids,
                rows_all,
                model=model,
                watermark=watermark,
                offsets=offsets,
                reason=f"delta chain of {self._chain_rows + idx.size} rows for {n}",
            )
        if idx.size == 0:
            return PublishResult("none", self.version, self.seq, 0, 0, time.perf_counter() - t0)
        vectors = rows_all[idx]
        if not np.all(np.isfinite(vectors)):
            raise ValueError("changed rows hold NaN or infinite values; refusing to publish them")
        new_ids = [str(i) for i in ids[n_old:]]
        index_bytes, vector_bytes = idx.tobytes(), vectors.tobytes()
        seq = self.seq + 1
        dim = rows_all.shape[1]
        extra = {"offsets": offsets, "watermark": watermark}
        pointer = self._pointer(self.version, seq, n, dim, extra)
        meta = {
            "seq": seq,
            "uid": self._uid,
            "count": int(idx.size),
            "rows_before": n_old,
            "rows": n,
            "new_ids": new_ids,
            "checksum": _sha256(index_bytes, vector_bytes),
            "watermark": watermark,
            "offsets": dict(offsets or {}),
            "created": time.time(),
        }
        meta_key, delta_key = self.keys.meta(self.version), self.keys.delta(self.version, seq)
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(meta_key)
        pipe.hset(
            delta_key,
            mapping={"meta": _json(meta), "rows": index_bytes, "vectors": vector_bytes},
        )
        pipe.set(self.keys.head(self.version), pointer)
        replies = pipe.execute()
        base = _load_json(replies[0], f"metadata of version {self.version}")
        if base is None or base.get("uid") != self._uid:
            # Redis lost the base version (restarted without persistence, and redis-py
            # reconnected under us): never point readers at a delta without its base.
            self.redis.delete(delta_key, self.keys.head(self.version))
            log.warning("version %d vanished from Redis; writing a full snapshot", self.version)
            self.forget()
            return self.publish_full(
                ids, rows_all, model=model, watermark=watermark, offsets=offsets, reason="lost"
            )
        _checked(replies[1:], f"delta {seq} of version {self.version}")
        self._switch(pointer)
        self.seq = seq
        self._chain_rows += int(idx.size)
        if n > n_old:
            grown = np.empty((n, dim), dtype=_ROW_DTYPE)
            grown[:n_old] = self._published
            self._published = grown
            self._sq_norms = np.concatenate([self._sq_norms, np.zeros(n - n_old, np.float32)])
            self._ids.extend(new_ids)
            self._id_set.update(new_ids)
        self._published[idx] = vectors
        self._sq_norms[idx] = np.einsum("ij,ij->i", vectors, vectors)
        return PublishResult("delta", self.version, seq, int(idx.size), 0, time.perf_counter() - t0)

    # ------------------------------------------------------------------ users
    def publish_users(
        self,
        user_ids: Sequence[str],
        vectors: np.ndarray,
        recent_items: Sequence[Sequence[str]] | None = None,
    ) -> int:
        """Write user vectors (and each user's recent item ids) with the TTL; returns how
        many were written. Users with all-zero vectors (no state) are skipped."""
        vecs = _as_rows(vectors)
        if len(user_ids) != vecs.shape[0]:
            raise ValueError(f"{len(user_ids)} user ids for {vecs.shape[0]} vectors")
        recent = recent_items if recent_items is not None else [[]] * len(user_ids)
        ttl_ms = int(self.user_ttl_s * 1000)
        now = time.time()
        pipe = self.redis.pipeline(transaction=False)
        written = 0
        for uid, vec, items in zip(user_ids, vecs, recent):
            if not vec.any():
                continue
            key = self.keys.user(str(uid))
            pipe.hset(
                key,
                mapping={
                    "v": vec.tobytes(),
                    "items": _json([str(i) for i in items]),
                    "t": repr(now),
                    "version": str(self.version or 0),
                },
            )
            pipe.pexpire(key, ttl_ms)
            written += 1
        if written:
            for result in pipe.execute():
                if isinstance(result, Exception):
                    raise result
        return written


# ---------------------------------------------------------------------- background publishing
@dataclass(frozen=True)
class PublishConfig:
    """How the engine publishes to Redis (``--redis-url`` and friends).

    Args:
        redis_url: ``redis://[:password@]host:port/db`` or ``rediss://`` (TLS).
        namespace: key namespace (several models/environments can share one Redis).
        publish_every_s: seconds between publishes (a delta, or a full snapshot when due).
        full_every_s: seconds between full snapshots.
        keep_versions, grace_s, user_ttl_s, delta_tolerance, max_chain_factor, chunk_rows:
            see :class:`SnapshotWriter`.
        timeout_s: bound of each Redis command (connect, read, write).
        max_users_per_publish: user vectors encoded per hand-over at most (bounds the run
            loop's work in :meth:`EmbeddingPublisher.observe`); the others follow with the next.
        close_timeout_s: how long the final publish at shutdown may take.
        backoff: delay between attempts while Redis is unavailable.
    """

    redis_url: str
    namespace: str = "sevo"
    publish_every_s: float = 1.0
    full_every_s: float = 300.0
    keep_versions: int = 5
    grace_s: float = 60.0
    user_ttl_s: float = 7 * 86_400.0
    delta_tolerance: float = 1e-3
    max_chain_factor: float = 2.0
    chunk_rows: int = 4096
    timeout_s: float = 1.0
    close_timeout_s: float = 10.0
    max_users_per_publish: int = 5000
    backoff: Backoff = field(default_factory=lambda: ExponentialBackoff(0.2, 2.0, 5.0, jitter=0.2))

    def __post_init__(self) -> None:
        _Keys(self.namespace)  # validates
        if not isinstance(self.redis_url, str) or "://" not in self.redis_url:
            raise ValueError(
                f"redis_url must look like redis://host:port/db, got {self.redis_url!r}"
            )
        if isinstance(self.max_users_per_publish, bool) or self.max_users_per_publish < 1:
            raise ValueError(
                f"max_users_per_publish must be >= 1, got {self.max_users_per_publish!r}"
            )
        for name in ("publish_every_s", "full_every_s", "timeout_s", "close_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")


@dataclass
class _Request:
    """Trainer outputs handed from the run loop to the publishing thread."""

    item_ids: list[str]
    matrix: np.ndarray
    users: dict[str, tuple[np.ndarray, list[str]]]
    watermark: float | None
    offsets: dict[str, int]
    model: str

    def absorb(self, older: _Request) -> None:
        """Take over the user vectors of an older hand-over not written yet (ours win)."""
        self.users = {**older.users, **self.users}


class EmbeddingPublisher:
    """Publishes a trainer's embeddings to Redis from a background thread.

    The run loop calls :meth:`observe` after every micro-batch (cheap: it remembers the
    touched users) and, every ``publish_every_s``, :meth:`observe` copies the item table and
    encodes the touched users (the only work on the loop's thread) and hands them over; a
    newer hand-over replaces an older one not yet written (user vectors merge). The thread
    writes a delta, or a full snapshot when one is due (the first, every ``full_every_s``,
    after a Redis failure, after a pause). While Redis is unavailable the thread backs off
    and retries with the newest outputs; a warning is logged once per outage and once on
    recovery; ``sevo_redis_up`` and ``sevo_publishes_total{outcome="error"}`` say so.

    Args:
        config: the settings.
        metrics: an :class:`~streaming.metrics.EngineMetrics` to record into (optional).
        client: a Redis client to use instead of connecting to ``config.redis_url``.
        clock: monotonic clock, injectable.
    """

    def __init__(
        self,
        config: PublishConfig,
        *,
        metrics: Any = None,
        client: redis.Redis | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self._clock = clock
        self.writer = SnapshotWriter(
            client if client is not None else connect(config.redis_url, timeout_s=config.timeout_s),
            config.namespace,
            chunk_rows=config.chunk_rows,
            keep_versions=config.keep_versions,
            grace_s=config.grace_s,
            user_ttl_s=config.user_ttl_s,
            delta_tolerance=config.delta_tolerance,
            max_chain_factor=config.max_chain_factor,
        )
        self._touched: set[str] = set()
        self._dirty = False
        self._last_observe = -math.inf
        self._last_full = -math.inf
        self._pending: _Request | None = None
        self._busy = False
        self._cond = threading.Condition()
        self._stopping = False
        self._failures = 0
        self._retry_at = -math.inf
        self._was_paused = False
        self._full_requested = False
        self.results: list[PublishResult] = []  # newest last, at most 1000
        self.errors = 0
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name="sevo-publisher", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the loop's side
    def observe(
        self,
        trainer: Any,
        users: Sequence[str] | np.ndarray = (),
        *,
        watermark: float | None = None,
        offsets: Mapping[str, int] | None = None,
        learned: bool | None = None,
        force: bool = False,
    ) -> bool:
        """Note a micro-batch; when a publish is due (``publish_every_s`` since the last hand-
        over, and something was learned since) or ``force``d, hand the trainer's outputs to
        the publishing thread. Returns True when it handed over. Never waits for Redis.

        Args:
            trainer: the :class:`~engine.online.OnlineTrainer` (read on this thread only).
            users: the users of the batch (their vectors are published with the next publish).
            watermark: the newest event time the trainer reflects.
            offsets: the source positions the trainer reflects (``{"topic:partition": next}``).
            learned: whether the trainer changed (default: ``users`` is not empty).
            force: hand over now even if nothing changed or it is not due.
        """
        users_a = np.asarray(users, dtype=object).reshape(-1)
        self._touched.update(map(str, users_a))
        self._dirty |= bool(users_a.size) if learned is None else learned
        now = self._clock()
        if not force and (
            not self._dirty or now - self._last_observe < self.config.publish_every_s
        ):
            return False
        self._last_observe = now
        # Encoding users is the loop's only per-user cost here: bound it per hand-over; the
        # rest stay touched and go with the next one.
        touched = sorted(self._touched)[: self.config.max_users_per_publish]
        self._touched.difference_update(touched)
        self._dirty = bool(self._touched)
        ids, matrix = trainer.item_matrix()
        users_out: dict[str, tuple[np.ndarray, list[str]]] = {}
        if touched:
            vecs = trainer.user_vectors(touched)
            recent = trainer.recent_items(touched)
            users_out = {u: (vecs[i], recent[i]) for i, u in enumerate(touched)}
        request = _Request(
            ids,
            matrix,
            users_out,
            watermark,
            dict(offsets or {}),
            str(getattr(getattr(trainer, "config", None), "model", "")),
        )
        with self._cond:
            if self._pending is not None:  # not written yet: keep its users, newest wins
                request.absorb(self._pending)
            self._pending = request
            self._cond.notify_all()
        return True

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until everything handed over is written (or the timeout); True if done."""
        deadline = None if timeout_s is None else self._clock() + timeout_s
        with self._cond:
            while self._pending is not None or self._busy:
                remaining = None if deadline is None else deadline - self._clock()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(0.05 if remaining is None else min(0.05, remaining))
        return True

    def close(
        self,
        trainer: Any = None,
        *,
        watermark: float | None = None,
        offsets: Mapping[str, int] | None = None,
    ) -> bool:
        """Publish the final state (if ``trainer`` is given), wait up to
        ``close_timeout_s`` for it, and stop the thread. True if everything was written."""
        while trainer is not None and (self._dirty or self._touched):
            self.observe(trainer, watermark=watermark, offsets=offsets, force=True)
        done = self.flush(self.config.close_timeout_s)
        if not done:
            log.warning(
                "publisher: final publish to %s not written within %.1f s (Redis unavailable?)",
                _redact(self.config.redis_url),
                self.config.close_timeout_s,
            )
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(self.config.timeout_s * 4 + 1)
        with contextlib.suppress(Exception):  # a broken connection must not mask the result
            self.writer.redis.close()
        return done

    def __enter__(self) -> EmbeddingPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ the thread's side
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and (
                    self._pending is None or self._clock() < self._retry_at
                ):
                    wait = None if self._pending is None else self._retry_at - self._clock()
                    self._cond.wait(0.5 if wait is None else max(0.001, min(wait, 0.5)))
                if self._stopping:
                    return
                request, self._pending = self._pending, None
                self._busy = True
            try:
                self._publish(request)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _publish(self, request: _Request) -> None:
        writer = self.writer
        try:
            paused, requested = writer._publish_controls()
            if requested:
                self._full_requested = True
            if paused is not None:
                if not self._was_paused:
                    log.warning("publisher: publishing to namespace %s is paused", writer.namespace)
                self._was_paused = True
                self._record("paused", None)
                return
            resumed = self._was_paused
            if resumed:
                log.info(
                    "publisher: namespace %s resumed; writing a full snapshot", writer.namespace
                )
                self._was_paused = False
            now = self._clock()
            extra = {"watermark": request.watermark, "offsets": request.offsets}
            user_ids = list(request.users)
            if self._failures:
                reason = "recovery"
            elif resumed:
                reason = "resumed"
            elif writer.version is None:
                reason = "first"
            elif self._full_requested:
                reason = "requested"
            elif now - self._last_full >= self.config.full_every_s:
                reason = "interval"
            else:
                reason = ""
            if reason:
                result = writer.publish_full(
                    request.item_ids, request.matrix, model=request.model, reason=reason, **extra
                )
            else:
                result = writer.publish_delta(
                    request.item_ids, request.matrix, model=request.model, **extra
                )
            if result.kind == "full":
                self._last_full = now
                self._full_requested = False
            # User vectors after the rows: a reader that sees a user's new vector can also see
            # the rows it was computed with (the pointer switched first).
            n_users = 0
            if user_ids:
                vecs = np.stack([request.users[u][0] for u in user_ids])
                recent = [request.users[u][1] for u in user_ids]
                n_users = writer.publish_users(user_ids, vecs, recent)
            result = replace(result, users=n_users)
        except (redis.RedisError, OSError, SnapshotError) as exc:
            self._failures += 1
            self.errors += 1
            self.last_error = describe_error(exc)
            delay = self.config.backoff.compute(self._failures)
            self._retry_at = self._clock() + delay
            # The newest outputs are retried (unless a newer hand-over arrives), as a full
            # snapshot (reason "recovery"): a failed or restarted Redis may have lost earlier
            # writes, so the writer forgets what it published.
            writer.forget()
            with self._cond:
                if self._pending is None:
                    self._pending = request
                else:
                    self._pending.absorb(request)
            if self._failures == 1:
                log.warning(
                    "publisher: Redis %s unavailable (%s); training continues, retrying in "
                    "%.1f s and catching up with a full snapshot",
                    _redact(self.config.redis_url),
                    self.last_error,
                    delay,
                )
            self._record("error", None)
            return
        except Exception as exc:  # e.g. NaN rows: not retriable; keep the thread alive
            self.errors += 1
            self.last_error = describe_error(exc)
            log.error("publisher: dropped a publish that cannot succeed: %s", self.last_error)
            self._record("error", None)
            return
        if self._failures:
            log.info(
                "publisher: Redis %s back after %d failed attempts; wrote full snapshot %d",
                _redact(self.config.redis_url),
                self._failures,
                result.version,
            )
        self._failures = 0
        self._retry_at = -math.inf
        self.results.append(result)
        del self.results[:-1000]
        self._record("ok", result)

    def _record(self, outcome: str, result: PublishResult | None) -> None:
        m = self.metrics
        if m is None or not hasattr(m, "record_publish"):
            return
        m.record_publish(outcome, result)


# ---------------------------------------------------------------------- reading
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
        redis_url: ``redis://[:password@]host:port/db`` or ``rediss://``.
        namespace: the publisher's namespace.
        timeout_s: bound of each Redis command.
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
        client: redis.Redis | None = None,
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
        if meta.get("dtype") != _ROW_DTYPE.str:
            raise SnapshotError(f"version {version} has dtype {meta.get('dtype')!r}, not <f4")
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(keys.ids(version))
        for i in range(int(meta["chunks"])):
            pipe.get(keys.chunk(version, i))
        replies = pipe.execute()
        if any(r is None for r in replies):
            raise SnapshotError(f"version {version} is missing keys (expired?)")
        ids = _load_json(replies[0], f"ids of version {version}")
        if not isinstance(ids, list):
            raise SnapshotError(f"ids of version {version} are not a JSON list")
        data = b"".join(replies[1:])
        if _sha256(data) != meta["checksum"]:
            raise SnapshotError(f"version {version}: checksum mismatch")
        n, dim = int(meta["rows"]), int(meta["dim"])
        if len(ids) != n or len(data) != n * dim * _ROW_DTYPE.itemsize:
            raise SnapshotError(
                f"version {version}: {len(ids)} ids, {len(data)} bytes for {n} rows"
            )
        capacity = max(16, int(n * 1.25))
        matrix = np.zeros((capacity, dim), dtype=np.float32)
        matrix[:n] = np.frombuffer(data, dtype=_ROW_DTYPE).reshape(n, dim)
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
            meta = _load_json(fields.get(b"meta"), f"delta {s} of version {version}")
            index_bytes, vector_bytes = fields.get(b"rows", b""), fields.get(b"vectors", b"")
            if _sha256(index_bytes, vector_bytes) != meta["checksum"]:
                raise SnapshotError(f"delta {s} of version {version}: checksum mismatch")
            if meta.get("uid") != self._uid:
                raise SnapshotError(f"delta {s} belongs to another snapshot {version}")
            if int(meta["rows_before"]) != self._n:
                raise SnapshotError(
                    f"delta {s} of version {version} does not follow {self._n} rows"
                )
            idx = np.frombuffer(index_bytes, dtype=_INDEX_DTYPE)
            vecs = np.frombuffer(vector_bytes, dtype=_ROW_DTYPE).reshape(idx.size, dim)
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
        """``{"vector", "recent_items", "updated", "version"}`` of a user, or None when the
        user is unknown, expired, or its vector does not fit the served dimension."""
        fields = self.redis.hgetall(self.keys.user(str(user_id)))
        if not fields or b"v" not in fields:
            return None
        vector = np.frombuffer(fields[b"v"], dtype=_ROW_DTYPE)
        self.refresh()
        if self._version is None or vector.size != self._matrix.shape[1]:
            return None
        return {
            "vector": vector.copy(),
            "recent_items": [str(i) for i in _load_json(fields.get(b"items"), "items") or []],
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
        exclude_recent: bool = True,
    ) -> list[Recommendation]:
        """Top-``k`` items by dot product with the user's vector, best first.

        Args:
            exclude: item ids never to return.
            exclude_recent: also exclude the user's recent items (published with its vector).

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
        banned = list(exclude) + (state["recent_items"] if exclude_recent else [])
        banned_rows = [rows_of[i] for i in banned if i in rows_of]
        if banned_rows:
            scores[banned_rows] = -np.inf
        kk = min(k, n - len(set(banned_rows)))
        if kk <= 0:
            return []
        top = np.argpartition(-scores, kk - 1)[:kk]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [Recommendation(ids[r], float(scores[r])) for r in top.tolist()]
