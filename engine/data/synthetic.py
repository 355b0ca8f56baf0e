"""A seeded synthetic interaction stream whose item co-occurrence drifts over time.

:func:`drifting_stream` generates a log for experiments where the *age* of what the live item
graph has learned matters (edge decay): early co-occurrence can be made stale at a chosen rate,
with ``drift_rate=0`` as the stationary control. The model:

* **Items and clusters.** ``n_items`` items (ids ``"i0" ..``) in ``n_clusters`` latent clusters
  of equal size (item ``i`` belongs to cluster ``i % n_clusters``; ``n_items`` is rounded down to
  a multiple of ``n_clusters``).
* **Users.** ``n_users`` users (ids ``"u0" ..``), each with a home cluster drawn uniformly and a
  log-normal activity weight (a few heavy users, many light ones).
* **Sessions.** The stream is a sequence of sessions. A session belongs to a user drawn by
  activity, starts at a uniformly random time (about one event per second overall) and holds a
  geometric number of events (mean ``mean_session``, at most ``max_session``) spaced by
  ``1 + Exp(gap_seconds)`` seconds, so sessions of different users interleave. Its cluster is
  the user's home cluster with probability ``p_home``, else uniform.
* **Items of a session.** The first item is drawn from the cluster by *popularity*: the item of
  within-cluster rank ``r`` has probability ∝ ``(r + 1) ** -zipf``. Each later item is, with
  probability ``p_follow``, the *successor* of the previous item (a per-item table; the successor
  of an item is another item of its cluster), else again a popularity draw. Consecutive items
  therefore carry signal: the item–item graph of a user's consecutive items concentrates on
  ``item → successor(item)`` edges.
* **Drift.** The stream's time span is cut into ``n_phases`` phases of equal length; a session
  uses the tables (popularity ranks, successors) of the phase it starts in. At every phase
  boundary each item independently, with probability ``drift_rate``, gets a new successor
  (uniform over the other items of its cluster), and within each cluster the popularity ranks of
  the items so chosen are shuffled among themselves. With ``drift_rate=0`` the tables never
  change (stationary control); with ``drift_rate=1`` they are re-drawn entirely every phase, so
  co-occurrence learned a phase ago is noise. After ``k`` phases a fraction ``(1 - drift_rate)**k``
  of the successor table is unchanged (half-life ``ln 2 / -ln(1 - drift_rate)`` phases).

Everything is drawn from one ``numpy.random.Generator`` seeded by ``seed`` and vectorised over
sessions (the only Python loops run over phases, clusters and positions within a session), so a
seed gives the same log on every machine. Exactly ``n_events`` events are returned: the sessions
are generated with some slack, sorted by time, and the earliest ``n_events`` kept.

Example:
    >>> inter = drifting_stream(0.2, seed=1, n_events=2000, n_users=50, n_items=100)
    >>> inter.num_interactions, inter.num_users <= 50, inter.num_items <= 100
    (2000, True, True)
"""

from __future__ import annotations

import math

import numpy as np

from engine.data.interactions import Interactions, build_interactions

__all__ = ["SYNTHETIC_PREFIX", "drifting_stream", "parse_synthetic_name"]

SYNTHETIC_PREFIX = "synthetic-drift"
"""Data set names ``synthetic-drift:RATE[:SEED[:EVENTS]]`` load :func:`drifting_stream`."""

#: The epoch of the first second of the stream (2020-01-01T00:00:00Z).
_EPOCH = 1_577_836_800.0


def _drift_tables(
    rng: np.random.Generator, n_clusters: int, per_cluster: int, n_phases: int, drift_rate: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per-phase tables: ``rank_items`` ``(P, K, m)`` (the item of each within-cluster rank) and
    ``successor`` ``(P, M)`` (each item's successor, in its cluster, never itself)."""
    K, m = n_clusters, per_cluster
    M = K * m
    members = np.arange(M).reshape(m, K).T  # members[c] = items of cluster c (i % K == c)

    def new_successors(items: np.ndarray) -> np.ndarray:
        # A uniform other member of the item's cluster: offset 1..m-1 positions along it.
        pos = items // K
        off = rng.integers(1, m, size=items.shape[0]) if m > 1 else np.zeros_like(items)
        return (items % K) + ((pos + off) % m) * K

    ranks = np.empty((n_phases, K, m), dtype=np.int64)
    succ = np.empty((n_phases, M), dtype=np.int64)
    ranks[0] = np.take_along_axis(members, rng.permuted(np.tile(np.arange(m), (K, 1)), axis=1), 1)
    succ[0] = new_successors(np.arange(M))
    for p in range(1, n_phases):
        succ[p] = succ[p - 1]
        moved = np.flatnonzero(rng.random(M) < drift_rate)
        succ[p, moved] = new_successors(moved)
        ranks[p] = ranks[p - 1]
        chosen = rng.random((K, m)) < drift_rate  # rank slots whose items are reshuffled
        for c in range(K):
            slots = np.flatnonzero(chosen[c])
            ranks[p, c, slots] = ranks[p, c, rng.permutation(slots)]
    return ranks, succ


def drifting_stream(
    drift_rate: float,
    *,
    seed: int = 0,
    n_events: int = 100_000,
    n_users: int = 2_000,
    n_items: int = 2_000,
    n_clusters: int = 20,
    n_phases: int = 20,
    p_home: float = 0.8,
    p_follow: float = 0.7,
    zipf: float = 1.0,
    mean_session: float = 8.0,
    max_session: int = 50,
    gap_seconds: float = 30.0,
) -> Interactions:
    """A drifting interaction stream (see the module docstring for the model).

    Args:
        drift_rate: probability per item and phase boundary that its successor is re-drawn and
            its popularity rank joins the reshuffle, in ``[0, 1]``; ``0`` = stationary.
        seed: seeds every draw.
        n_events: events returned (exactly).
        n_users, n_items, n_clusters: catalogue sizes (``n_items`` rounded down to a multiple of
            ``n_clusters``; users and items that draw no event are absent from the log).
        n_phases: phases of equal time length over the stream.
        p_home: probability that a session stays in the user's home cluster.
        p_follow: probability that an event is its previous item's successor.
        zipf: exponent of the within-cluster popularity ``(rank + 1) ** -zipf``.
        mean_session, max_session: mean (>= 1) and cap of the events per session.
        gap_seconds: mean extra gap between a session's events (each gap is ``1 + Exp``).

    Returns:
        :class:`Interactions` named ``synthetic-drift:RATE:SEED`` (items ``"i<n>"``, users
        ``"u<n>"``, unix-second times from 2020-01-01).

    Raises:
        ValueError: on a parameter out of range.
    """
    if not (isinstance(drift_rate, (int, float)) and 0.0 <= drift_rate <= 1.0):
        raise ValueError(f"drift_rate must be in [0, 1], got {drift_rate!r}")
    for name, value, low in (
        ("n_events", n_events, 1),
        ("n_users", n_users, 1),
        ("n_clusters", n_clusters, 1),
        ("n_phases", n_phases, 1),
        ("max_session", max_session, 1),
        ("seed", seed, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    per_cluster = n_items // n_clusters
    if per_cluster < 2:
        raise ValueError(f"n_items ({n_items}) must be at least 2 * n_clusters ({n_clusters})")
    for name, value in (("p_home", p_home), ("p_follow", p_follow)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    if not (mean_session >= 1.0 and math.isfinite(mean_session)):
        raise ValueError(f"mean_session must be >= 1, got {mean_session!r}")
    if not (zipf >= 0.0 and gap_seconds >= 0.0):
        raise ValueError("zipf and gap_seconds must be >= 0")

    rng = np.random.default_rng(seed)
    K, m = n_clusters, per_cluster
    ranks, succ = _drift_tables(rng, K, m, n_phases, float(drift_rate))
    pop_cdf = np.cumsum((np.arange(1, m + 1, dtype=np.float64)) ** -float(zipf))
    pop_cdf /= pop_cdf[-1]

    home = rng.integers(0, K, size=n_users)
    activity = rng.lognormal(0.0, 1.0, size=n_users)
    activity /= activity.sum()

    # Sessions: who, when, how long, which cluster, and every event's time. Enough of them (six
    # standard deviations of slack) that the earliest n_events events are all generated.
    q = 1.0 - 1.0 / mean_session
    mean_len = (1.0 - q**max_session) * mean_session  # E[min(Geometric, max_session)]
    base = n_events / mean_len
    n_sessions = math.ceil(base * (1.0 + 6.0 / math.sqrt(base))) + 2
    user = rng.choice(n_users, size=n_sessions, p=activity)
    start = np.sort(rng.uniform(0.0, n_sessions * mean_len, size=n_sessions))
    cluster = np.where(rng.random(n_sessions) < p_home, home[user], rng.integers(0, K, n_sessions))
    length = np.minimum(rng.geometric(1.0 / mean_session, size=n_sessions), max_session)
    L = int(length.max())
    pos = np.arange(L)
    valid = pos[None, :] < length[:, None]
    gaps = 1.0 + rng.exponential(gap_seconds, size=(n_sessions, L))
    gaps[:, 0] = 0.0
    times = np.round(start[:, None] + np.cumsum(gaps, axis=1), 3)
    if int(valid.sum()) < n_events:  # not expected with six standard deviations of slack
        raise RuntimeError("drifting_stream generated too few events; please report")
    # The kept stream ends at its n_events-th event; the phases cut [0, end] into equal parts.
    t_end = np.partition(times[valid], n_events - 1)[n_events - 1]
    phase = np.minimum((start / max(t_end, 1e-9) * n_phases).astype(np.int64), n_phases - 1)

    def popular(rows: np.ndarray) -> np.ndarray:
        r = np.minimum(np.searchsorted(pop_cdf, rng.random(rows.size), side="right"), m - 1)
        return ranks[phase[rows], cluster[rows], r]

    items = np.full((n_sessions, L), -1, dtype=np.int64)
    rows = np.arange(n_sessions)
    items[:, 0] = popular(rows)
    for j in range(1, L):
        live = rows[length > j]
        follow = rng.random(live.size) < p_follow
        nxt = popular(live)
        nxt[follow] = succ[phase[live[follow]], items[live[follow], j - 1]]
        items[live, j] = nxt

    flat_items, flat_times = items[valid], times[valid]
    flat_users = np.broadcast_to(user[:, None], items.shape)[valid]
    keep = np.sort(np.argsort(flat_times, kind="stable")[:n_events])
    t = _EPOCH + flat_times[keep]
    name = f"{SYNTHETIC_PREFIX}:{float(drift_rate):g}:{seed}"
    return build_interactions(
        np.char.add("u", flat_users[keep].astype(str)),
        np.char.add("i", flat_items[keep].astype(str)),
        t,
        name=name,
    )


def parse_synthetic_name(name: str) -> dict | None:
    """``{"drift_rate", "seed"[, "n_events"]}`` for ``synthetic-drift:RATE[:SEED[:EVENTS]]``
    (case-insensitive), ``None`` for any other name; ``ValueError`` on a malformed one."""
    parts = str(name).lower().split(":")
    if parts[0] != SYNTHETIC_PREFIX or len(parts) == 1:
        return None
    if not 2 <= len(parts) <= 4:
        raise ValueError(f"expected {SYNTHETIC_PREFIX}:RATE[:SEED[:EVENTS]], got {name!r}")
    try:
        out: dict = {"drift_rate": float(parts[1])}
        if len(parts) > 2:
            out["seed"] = int(parts[2])
        if len(parts) > 3:
            out["n_events"] = int(parts[3])
    except ValueError:
        raise ValueError(
            f"expected {SYNTHETIC_PREFIX}:RATE[:SEED[:EVENTS]] with numbers, got {name!r}"
        ) from None
    if not 0.0 <= out["drift_rate"] <= 1.0:
        raise ValueError(f"drift rate must be in [0, 1], got {name!r}")
    return out
