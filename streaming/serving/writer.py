"""Writing snapshots: :class:`SnapshotWriter` (full snapshots, deltas, user vectors, retention).

A full snapshot writes the item table (raw little-endian float32 rows in chunks, JSON
metadata, the id map) under version-specific keys and then switches the current-version
pointer with one ``SET``; between full snapshots a delta holds only the rows that changed since
the last publish, plus appended new items, and bumps the pointer's sequence number. User
vectors are written with a TTL.

**Redis Cluster.** A version's keys share one slot (hash tag ``{ns:vV}``), so its writes go in
one pipeline to one master; in cluster mode that pipeline ends with ``WAIT`` for the master's
replicas, and the pointer (another slot, ``{ns}``) is switched only once they all acknowledged
(:func:`~streaming.serving.connection.replicated_pipeline`): a failover of the version's master
after the switch cannot lose keys that readers were pointed at.

**Retention.** After each full snapshot the newest ``keep_versions`` versions (and whatever
the pointer names) stay; older ones get a TTL of ``grace_s`` so readers still loading them
can finish; they disappear from ``list`` once their keys have expired. While the quality guard
suspects a regression (:attr:`SnapshotWriter.protect_before`), the newest version created before
the suspect streak began stays too, so a rollback to it remains possible however many full
snapshots the streak lasts.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from streaming.serving.admin import SnapshotStore
from streaming.serving.connection import RedisClient
from streaming.serving.keys import (
    INDEX_DTYPE,
    ROW_DTYPE,
    SnapshotError,
    as_rows,
    checked,
    dump_json,
    load_json,
    sha256,
)

log = logging.getLogger("streaming.serving")  # one logger for the whole serving package


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


class SnapshotWriter(SnapshotStore):
    """Writes full snapshots, deltas and user vectors of one namespace (synchronously).

    The writer remembers the rows as readers see them (its last publish), so a delta holds
    exactly the rows that differ from what is served. Rows whose change since then is at most
    ``delta_tolerance`` of their norm (L2, relative) are not rewritten; the served row then
    lags the live one by less than that, and the difference is carried until it grows past it.

    Args:
        client: a bytes-returning Redis client (:func:`~streaming.serving.connection.connect`;
            standalone or cluster).
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
        client: RedisClient,
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
        self._newest_version = 0  # the highest version this writer created (not forgotten)
        self.seq = 0
        self._published: np.ndarray | None = None  # rows as readers see them
        self._sq_norms: np.ndarray | None = None  # squared L2 norms of _published rows
        self._scratch: np.ndarray | None = None
        self._ids: list[str] = []
        self._id_set: set[str] = set()
        self._model = ""
        self._uid = ""
        # Set by the quality guard while it suspects a regression that began at this time.
        self.protect_before: float | None = None

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
        pointer = {
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
        if extra.get("quality") is not None:  # the quality guard's record, see publish_full
            pointer["quality"] = extra["quality"]
        return dump_json(pointer)

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
        quality: Mapping[str, Any] | None = None,
    ) -> PublishResult:
        """Write ``matrix`` (row ``i`` is item ``item_ids[i]``) as a new version and point
        readers at it.

        Metadata (``{ns:vV}:meta``): ``version, model, dim, dtype ("<f4"), rows, chunk_rows,
        chunks, ids_key, watermark`` (newest event time reflected), ``offsets`` (source
        positions reflected), ``checksum`` (sha256 of the row bytes), ``created``, plus
        ``extra_meta``, plus ``quality`` when given: the quality guard's trailing prequential
        NDCG@10 at publish time (also in the pointer, and in each delta's metadata), so an
        operator and a rollback can see how good each published state was.

        Raises:
            ValueError: mismatched ids/rows, duplicate ids, or non-finite values.
            redis.RedisError: Redis failed; the pointer still names the previous version.
        """
        t0 = time.perf_counter()
        rows = as_rows(matrix)
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
        if version <= self._newest_version:
            # The counter went back under this writer (a cluster failover lost its newest
            # increments, or a Redis restarted without its data): skip past every version this
            # writer made, so that version keys readers may hold are never rewritten.
            step = self._newest_version + 1 - version
            version = int(self.redis.incrby(self.keys.counter, step))
        self._newest_version = version
        # A Redis that lost its data restarts the counter: the uid tells a reader that a
        # reused version number is another snapshot.
        self._uid = uuid.uuid4().hex
        data = memoryview(rows).cast("B")  # no copy: rows is C-contiguous '<f4'
        chunk_bytes = self.chunk_rows * dim * ROW_DTYPE.itemsize
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
            "dtype": ROW_DTYPE.str,
            "rows": n,
            "chunk_rows": self.chunk_rows,
            "chunks": chunks,
            "ids_key": self.keys.ids(version),
            "watermark": watermark,
            "offsets": dict(offsets or {}),
            "checksum": sha256(data),
            "created": created,
            **dict(extra_meta or {}),
        }
        if quality is not None:
            meta["quality"] = dict(quality)
        pointer = self._pointer(version, 0, n, dim, meta)

        def write(pipe: Any) -> None:  # one slot: the version's
            for i in range(chunks):
                chunk = data[i * chunk_bytes : (i + 1) * chunk_bytes]
                pipe.set(self.keys.chunk(version, i), chunk)
            pipe.set(self.keys.ids(version), dump_json(ids))
            pipe.set(self.keys.meta(version), dump_json(meta))
            pipe.set(self.keys.head(version), pointer)

        what = f"full snapshot {version}"
        checked(self._write_version(version, write, what), what)
        self.redis.zadd(self.keys.versions, {str(version): created})
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
        entries = self.redis.zrevrange(self.keys.versions, 0, -1, withscores=True)
        members = [int(m) for m, _created in entries]
        pointer = self.pointer() or {}
        keep = set(members[: self.keep_versions]) | {current, pointer.get("version")}
        if self.protect_before is not None:  # what a quality-guard rollback would restore
            keep.update([int(m) for m, c in entries if c < self.protect_before][:1])
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
        quality: Mapping[str, Any] | None = None,
    ) -> PublishResult:
        """Publish the rows that changed since the last publish, and new items appended at the
        end; falls back to :meth:`publish_full` when there is no base version, the dimension
        changed, earlier rows were reordered, or the delta would be too large.

        ``item_ids`` must extend the published ids (online training only appends items).
        Returns a result with ``kind="none"`` when nothing changed. ``quality``: see
        :meth:`publish_full`.
        """
        t0 = time.perf_counter()
        model = self._model if model is None else model
        rows_all = as_rows(matrix, check_finite=False)  # checked below, rows published only
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
                ids,
                rows_all,
                model=model,
                watermark=watermark,
                offsets=offsets,
                reason=reason,
                quality=quality,
            )
        n_old, n = self._published.shape[0], rows_all.shape[0]
        changed = self.changed_rows(rows_all)
        idx = np.concatenate([changed, np.arange(n_old, n)]).astype(INDEX_DTYPE)
        if self._chain_rows + idx.size > self.max_chain_factor * max(n, 1):
            return self.publish_full(
                ids,
                rows_all,
                model=model,
                watermark=watermark,
                offsets=offsets,
                reason=f"delta chain of {self._chain_rows + idx.size} rows for {n}",
                quality=quality,
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
        extra = {"offsets": offsets, "watermark": watermark, "quality": quality}
        pointer = self._pointer(self.version, seq, n, dim, extra)
        meta = {
            "seq": seq,
            "uid": self._uid,
            "count": int(idx.size),
            "rows_before": n_old,
            "rows": n,
            "new_ids": new_ids,
            "checksum": sha256(index_bytes, vector_bytes),
            "watermark": watermark,
            "offsets": dict(offsets or {}),
            "created": time.time(),
        }
        if quality is not None:
            meta["quality"] = dict(quality)
        meta_key, delta_key = self.keys.meta(self.version), self.keys.delta(self.version, seq)

        def write(pipe: Any) -> None:  # one slot: the version's
            pipe.get(meta_key)
            pipe.hset(
                delta_key,
                mapping={"meta": dump_json(meta), "rows": index_bytes, "vectors": vector_bytes},
            )
            pipe.set(self.keys.head(self.version), pointer)

        replies = self._write_version(self.version, write, f"delta {seq} of version {self.version}")
        base = load_json(replies[0], f"metadata of version {self.version}")
        if base is None or base.get("uid") != self._uid:
            # Redis lost the base version (restarted without persistence, and redis-py
            # reconnected under us): never point readers at a delta without its base.
            self.redis.delete(delta_key, self.keys.head(self.version))
            log.warning("version %d vanished from Redis; writing a full snapshot", self.version)
            self.forget()
            return self.publish_full(
                ids,
                rows_all,
                model=model,
                watermark=watermark,
                offsets=offsets,
                reason="lost",
                quality=quality,
            )
        checked(replies[1:], f"delta {seq} of version {self.version}")
        self._switch(pointer)
        self.seq = seq
        self._chain_rows += int(idx.size)
        if n > n_old:
            grown = np.empty((n, dim), dtype=ROW_DTYPE)
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
        seen_items: Sequence[Sequence[str]] | None = None,
    ) -> int:
        """Write user vectors (with each user's recent item ids, oldest first, and the distinct
        items it has interacted with, newest first) with the TTL; returns how many were
        written. Users with all-zero vectors (no state) are skipped."""
        vecs = as_rows(vectors)
        if len(user_ids) != vecs.shape[0]:
            raise ValueError(f"{len(user_ids)} user ids for {vecs.shape[0]} vectors")
        recent = recent_items if recent_items is not None else [[]] * len(user_ids)
        seen = seen_items if seen_items is not None else [[]] * len(user_ids)
        ttl_ms = int(self.user_ttl_s * 1000)
        now = time.time()
        pipe = self.redis.pipeline(transaction=False)
        written = 0
        for uid, vec, items, consumed in zip(user_ids, vecs, recent, seen):
            if not vec.any():
                continue
            key = self.keys.user(str(uid))
            pipe.hset(
                key,
                mapping={
                    "v": vec.tobytes(),
                    "items": dump_json([str(i) for i in items]),
                    "seen": dump_json([str(i) for i in consumed]),
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
