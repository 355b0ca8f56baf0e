"""Reading and administering a namespace's snapshots: :class:`SnapshotStore` (``sevo snapshots``).

**Rollback and publishing.** ``rollback`` switches the pointer back to an older version (its
rows and deltas as they were). The publisher keeps training from the live model, so its next
publish (a delta on its own version, or a full snapshot) supersedes the rollback — unless
publishing is paused (``pause``, or ``rollback(..., pause=True)``); after ``resume`` the
publisher writes a full snapshot.

**Rolling back to a moment.** The quality guard (:mod:`streaming.serving.guard`) does not roll
back to a version but to a moment: :meth:`SnapshotStore.state_before` finds the newest state
readers were served (a version at one of its deltas) that was published before a given time,
and :meth:`SnapshotStore.restore` points readers at it. A state is a version's chunks plus
deltas ``1..seq``, all immutable keys, so an older state of a version is served exactly as it
was, without the deltas written after it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from streaming.serving.connection import RedisClient, replicated_pipeline
from streaming.serving.keys import Keys, SnapshotError, dump_json, load_json

log = logging.getLogger("streaming.serving")  # one logger for the whole serving package


class SnapshotStore:
    """Read and administer a namespace's snapshots (``sevo snapshots``).

    Args:
        client: a bytes-returning Redis client (:func:`~streaming.serving.connection.connect`;
            standalone or cluster).
        namespace: the key namespace (letters, digits, ``_.:-``).
    """

    def __init__(self, client: RedisClient, namespace: str) -> None:
        self.redis = client
        self.keys = Keys(namespace)
        self.namespace = namespace

    # ------------------------------------------------------------------ reading
    def pointer(self) -> dict[str, Any] | None:
        """The current-version pointer, or ``None`` when nothing was published."""
        return load_json(self.redis.get(self.keys.current), "the current pointer")

    def meta(self, version: int) -> dict[str, Any] | None:
        """Metadata of ``version`` (``None`` if it does not exist, e.g. expired)."""
        return load_json(self.redis.get(self.keys.meta(version)), f"metadata of version {version}")

    def head(self, version: int) -> dict[str, Any] | None:
        """The pointer of ``version``'s newest delta (``None`` if the version is gone)."""
        return load_json(self.redis.get(self.keys.head(version)), f"head of version {version}")

    def paused(self) -> dict[str, Any] | None:
        """``{"since", "reason"}`` while publishing is paused, else ``None``."""
        return load_json(self.redis.get(self.keys.paused), "the pause marker")

    def versions(self) -> list[dict[str, Any]]:
        """Known versions, newest first: ``{"version", "created", "rows", "dim", "model",
        "seq", "current", "expires_in_s", "quality"}`` (``expires_in_s`` is None while
        retained; ``quality`` is the quality guard's record of the newest state, or None)."""
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
                    # the quality guard's record when the newest state was published
                    "quality": head.get("quality"),
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
                load_json(replies[3 * i], f"metadata of version {v}"),
                load_json(replies[3 * i + 1], f"head of version {v}"),
                replies[3 * i + 2],
            )
            for i, v in enumerate(versions)
        ]

    def _write_version(self, version: int, fill: Callable[[Any], None], what: str) -> list[Any]:
        """Run the writes ``fill(pipe)`` queues on ``version``'s keys in one pipeline; in a
        Redis Cluster on the master of the version's slot, followed by ``WAIT`` for its
        replicas (:func:`~streaming.serving.connection.replicated_pipeline`), so the pointer
        may then name the version."""
        return replicated_pipeline(self.redis, self.keys.meta(version), fill, what=what)

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
        pointer = self.restore(head)
        log.info("namespace %s rolled back to version %d", self.namespace, version)
        return pointer

    def restore(self, pointer: dict[str, Any]) -> dict[str, Any]:
        """Point readers at ``pointer`` (a state of a retained version: its head, or one from
        :meth:`state_before`); returns the pointer written (``rolled_back_at`` added).

        Every key of the version (all its deltas) loses its expiry first, so retention keeps
        the version while it is served, and must still exist, so no reader fails on it.

        Raises:
            SnapshotError: the version is gone or incomplete (some keys already expired).
        """
        version = int(pointer["version"])
        meta, head = self.meta(version), self.head(version)
        if meta is None or head is None or meta.get("uid") != pointer.get("uid"):
            raise SnapshotError(f"version {version} no longer exists")
        keys = self.keys.version_keys(version, int(meta["chunks"]), int(head["seq"]))

        def persist(pipe: Any) -> None:
            for key in keys:
                pipe.persist(key)
            pipe.exists(*keys)  # one slot: the version's

        replies = self._write_version(version, persist, f"rollback to version {version}")
        # The persisted keys must all still be there, or readers would fail on this version.
        if replies[-1] != len(keys):
            raise SnapshotError(f"version {version} is incomplete (some keys already expired)")
        restored = dict(pointer, rolled_back_at=time.time())
        self._switch(dump_json(restored))
        return restored

    def state_before(self, t: float) -> dict[str, Any] | None:
        """The pointer of the newest state published before ``t`` (unix s) among the retained
        versions: a version's full snapshot or one of its deltas, whichever came last before
        ``t``. None when every retained version is newer. Read only.

        The pointer is rebuilt from the version's metadata and the delta's metadata (rows,
        offsets, watermark, publish time and quality as they were then).
        """
        entries = self.redis.zrevrange(self.keys.versions, 0, -1, withscores=True)
        older = [int(member) for member, created in entries if float(created) < t]
        for v, meta, head, _pttl in self._version_records(older):
            if meta is None or head is None or not float(meta.get("created", t)) < t:
                continue
            state = self._state_of(v, meta, head, t)
            if state is not None:
                return state
        return None

    def _state_of(
        self, version: int, meta: dict[str, Any], head: dict[str, Any], t: float
    ) -> dict[str, Any] | None:
        """The pointer of ``version``'s newest state published before ``t``."""
        seq = int(head.get("seq", 0))
        if seq and float(head.get("published_at", t)) < t:
            return dict(head)  # its newest delta already precedes t
        seq_meta: dict[str, Any] = meta
        if seq:
            pipe = self.redis.pipeline(transaction=False)
            for s in range(1, seq + 1):
                pipe.hget(self.keys.delta(version, s), "meta")
            deltas = [
                load_json(raw, f"delta {s} of version {version}")
                for s, raw in enumerate(pipe.execute(), 1)
            ]
            if any(d is None for d in deltas):
                return None  # expiring: incomplete
            # Deltas are published in sequence order, so their times increase.
            before = [d for d in deltas if float(d.get("created", t)) < t]
            if before:
                seq_meta = before[-1]
        s = int(seq_meta.get("seq", 0)) if seq_meta is not meta else 0
        pointer = {
            "version": version,
            "uid": meta.get("uid"),
            "seq": s,
            "rows": int(seq_meta["rows"]),
            "dim": int(meta["dim"]),
            "model": meta.get("model"),
            "offsets": dict(seq_meta.get("offsets") or {}),
            "watermark": seq_meta.get("watermark"),
            "published_at": float(seq_meta["created"]),
        }
        if seq_meta.get("quality") is not None:
            pointer["quality"] = seq_meta["quality"]
        return pointer

    def pause(self, reason: str = "", **details: Any) -> None:
        """Pause publishing: engines keep training but write nothing until :meth:`resume`.
        ``details`` (JSON values) are stored with the marker, e.g. the quality guard's ``by``,
        metric and rollback target."""
        marker = {**details, "since": time.time(), "reason": reason}
        self.redis.set(self.keys.paused, dump_json(marker))

    def resume(self) -> bool:
        """Resume publishing (the engine's next publish is a full snapshot); True if it was
        paused."""
        return bool(self.redis.delete(self.keys.paused))

    def request_full(self) -> None:
        """Ask the publishing engine for a full snapshot at its next publish (on demand)."""
        self.redis.set(self.keys.full_requested, dump_json({"since": time.time()}))

    def _publish_controls(self) -> tuple[dict[str, Any] | None, bool]:
        """(the pause marker, whether a full snapshot was requested — consumed) in one trip."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(self.keys.paused)
        pipe.getdel(self.keys.full_requested)
        paused_raw, requested = pipe.execute()
        return load_json(paused_raw, "the pause marker"), requested is not None
