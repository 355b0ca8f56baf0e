"""Serving embeddings through Redis: versioned snapshots, deltas, a pointer switch, user vectors.

A **full snapshot** writes the item table (raw little-endian float32 rows in chunks, JSON
metadata with a sha256 checksum, the id map) under the keys of a new version, then points
readers at it by switching the namespace's current-version pointer with one ``SET``. Between
full snapshots a **delta** writes only the rows that changed since the last publish, plus
appended new items, as a new key of the same version, and bumps the pointer's sequence number.
**User vectors** are written after the rows, with a TTL. Version keys are never edited once
written and the pointer moves only after every write was acknowledged (in a Redis Cluster also
by the replicas of the master holding the version), so a reader that resolves everything from
one pointer read (version V's chunks plus deltas 1..seq, checksums verified) never sees a torn
or mixed snapshot. A rollback moves the pointer back to an older version; older versions expire
after a grace period. The same URL works for a standalone Redis and for any node of a Redis
Cluster (:func:`connect` tells them apart).

The modules, each importing only modules listed before it:

* :mod:`~streaming.serving.keys`: the key layout, :class:`SnapshotError` and the encoding
  helpers.
* :mod:`~streaming.serving.connection`: :func:`connect`, the one client factory: a standalone
  client, or a cluster client when the URL names a node of a Redis Cluster (which waits out
  failovers), and the replicated write (``WAIT``) that precedes a pointer switch in a cluster.
* :mod:`~streaming.serving.admin`: :class:`SnapshotStore` reads pointers and metadata; lists,
  rolls back, pauses and resumes publishing (``sevo snapshots``).
* :mod:`~streaming.serving.writer`: :class:`SnapshotWriter`, a store that also writes full
  snapshots, deltas and user vectors, and applies retention.
* :mod:`~streaming.serving.guard`: :class:`QualityGuard`, the state machine of the quality
  guard on publishing (when a prequential regression pauses publishing and rolls back).
* :mod:`~streaming.serving.publisher`: :class:`EmbeddingPublisher` runs a writer on a
  background thread for the engine's run loops (:class:`PublishConfig`).
* :mod:`~streaming.serving.client`: :class:`EmbeddingClient` reads the current version, item
  and user vectors, and a top-k.

Example:
    >>> writer = SnapshotWriter(connect("redis://localhost:6379/0"), "demo")  # doctest: +SKIP
    >>> writer.publish_full(["a", "b"], np.eye(2, dtype=np.float32), model="mf")  # doctest: +SKIP
    >>> EmbeddingClient("redis://localhost:6379/0", namespace="demo").item_vectors(["b"])
    ... # doctest: +SKIP
    array([[0., 1.]], dtype=float32)
"""

from streaming.serving.admin import SnapshotStore
from streaming.serving.client import (
    EmbeddingClient,
    Recommendation,
    ServedSnapshot,
    UnknownItemsError,
)
from streaming.serving.connection import ReplicationError, connect, is_cluster
from streaming.serving.guard import QualityGuard
from streaming.serving.keys import SnapshotError
from streaming.serving.publisher import EmbeddingPublisher, PublishConfig
from streaming.serving.writer import PublishResult, SnapshotWriter

__all__ = [
    "EmbeddingClient",
    "EmbeddingPublisher",
    "PublishConfig",
    "PublishResult",
    "QualityGuard",
    "Recommendation",
    "ReplicationError",
    "ServedSnapshot",
    "SnapshotError",
    "SnapshotStore",
    "SnapshotWriter",
    "UnknownItemsError",
    "connect",
    "is_cluster",
]
