"""How a namespace's snapshots are laid out in Redis, and the low-level helpers the other
serving modules share (encoding rows and JSON, checking pipeline replies, redacting URLs).

**Key layout** (``ns`` = namespace; ``{...}`` is a Redis Cluster hash tag: only the part inside
the braces is hashed, so a version's keys share one slot and can be written in one pipeline to
one node, and the namespace's own keys share another)::

    {ns}:current            JSON pointer {"version", "seq", "rows", "dim", "offsets",
                            "watermark", "published_at"}; the only key readers start from
    {ns}:versions           sorted set: version -> creation time
    {ns}:counter            INCR source of version numbers
    {ns}:paused             present while publishing is paused (JSON: since, reason; the
                            quality guard adds by, its metric and the rollback target)
    {ns}:full-requested     set by ``request_full``; the engine's next publish is full
    {ns}:updates            pub/sub channel; the pointer JSON is published on every switch
    {ns:vV}:meta            JSON metadata of version V (see
                            :meth:`~streaming.serving.writer.SnapshotWriter.publish_full`;
                            with the quality guard on, ``quality``: its metric at publish
                            time, as in every delta's metadata and pointer)
    {ns:vV}:ids             JSON list of the item ids of rows 0..rows-1
    {ns:vV}:chunk:i         rows [i*chunk_rows, (i+1)*chunk_rows) as '<f4' bytes
    {ns:vV}:delta:s         hash {meta (JSON), rows ('<i4' row indices), vectors ('<f4')}
    {ns:vV}:head            the pointer JSON of V's newest delta (what a rollback restores)
    ns:user:U               hash {v ('<f4'), items, seen (JSON item ids), t, version}, TTL

Nothing read from Redis is unpickled or evaluated: metadata is JSON (:func:`load_json`), rows
are ``np.frombuffer`` of :data:`ROW_DTYPE` bytes. Auth and TLS come with the URL
(``redis://:password@host:6379/0``, ``rediss://...``; see
:func:`~streaming.serving.connection.connect`).

In a Redis Cluster the user keys (``ns:user:U``, no hash tag) spread over all slots; every
multi-key command of the serving code stays within one of the two tagged groups (one
version, or the namespace), and pipelines that span slots are non-transactional (redis-py
splits them per node).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from streaming.errors import StreamingError

_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
ROW_DTYPE = np.dtype("<f4")
INDEX_DTYPE = np.dtype("<i4")


class SnapshotError(StreamingError):
    """A snapshot could not be read or written consistently (missing keys, bad checksum,
    unknown version)."""


def redact(url: str) -> str:
    """The URL without its password, for log lines and errors."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


class Keys:
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


def sha256(*parts: bytes | memoryview) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return "sha256:" + h.hexdigest()


def as_rows(matrix: np.ndarray, *, check_finite: bool = True) -> np.ndarray:
    """``matrix`` as a C-contiguous little-endian float32 2-D array (no copy if it is one)."""
    m = np.asarray(matrix)
    if m.ndim != 2:
        raise ValueError(f"expected a 2-D (rows, dim) matrix, got shape {m.shape}")
    if check_finite and not np.all(np.isfinite(m)):
        raise ValueError("the matrix holds NaN or infinite values; refusing to publish it")
    return np.ascontiguousarray(m, dtype=ROW_DTYPE)


def dump_json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


def load_json(raw: bytes | None, what: str) -> Any:
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SnapshotError(f"{what} is not valid JSON ({exc})") from exc


def checked(results: Sequence[Any], what: str) -> None:
    """Raise if any reply of a pipeline is an error or a failed write."""
    for result in results:
        if isinstance(result, Exception):
            raise result
        if result is False or result is None:
            raise SnapshotError(f"{what}: Redis refused a write ({result!r})")
