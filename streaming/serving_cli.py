"""Command-line parts of serving: publishing options of ``sevo run`` / ``sevo replay``,
``sevo recommend`` and ``sevo snapshots`` (wired into :mod:`streaming.cli`).

The Redis URL defaults to ``$SEVO_REDIS_URL`` and the namespace to ``$SEVO_NAMESPACE`` (else
``sevo``), so a password need not appear on a command line. The URL of any node of a Redis
Cluster works as well (:func:`streaming.serving.connect` detects cluster mode).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

__all__ = [
    "add_publish_args",
    "add_recommend",
    "add_snapshots",
    "publisher_from_args",
    "quality_guard_from_args",
]

log = logging.getLogger("streaming.cli")


def _add_location_args(
    p: argparse.ArgumentParser | argparse._ArgumentGroup, *, required_url: bool
) -> None:
    """``--redis-url`` (default ``$SEVO_REDIS_URL``; required only where it is the command's
    purpose and the variable is unset) and ``--namespace`` (default ``$SEVO_NAMESPACE``)."""
    env_url = os.environ.get("SEVO_REDIS_URL")
    p.add_argument(
        "--redis-url",
        default=env_url,
        required=required_url and env_url is None,
        help="redis://[:PASSWORD@]HOST:PORT/DB or rediss:// for TLS; for a Redis Cluster the URL "
        "of any node, detected by itself (default $SEVO_REDIS_URL"
        + ("" if required_url else "; unset: no publishing")
        + ")",
    )
    p.add_argument(
        "--namespace",
        default=os.environ.get("SEVO_NAMESPACE", "sevo"),
        help="key namespace: several models/environments can share one Redis "
        "(default $SEVO_NAMESPACE or 'sevo')",
    )


def add_publish_args(p: argparse.ArgumentParser) -> None:
    """Options of ``sevo run`` and ``sevo replay`` that publish embeddings to Redis."""
    g = p.add_argument_group(
        "publishing to Redis",
        "With --redis-url the item table (full snapshots and deltas) and the touched users' "
        "vectors are published to Redis from a background thread; training never waits for "
        "Redis, and a Redis outage is caught up with a full snapshot.",
    )
    _add_location_args(g, required_url=False)
    g.add_argument(
        "--publish-every",
        type=float,
        default=1.0,
        help="seconds between publishes (deltas; default 1)",
    )
    g.add_argument(
        "--full-every",
        type=float,
        default=300.0,
        help="seconds between full snapshots (default 300)",
    )
    g.add_argument(
        "--keep-versions", type=int, default=5, help="versions kept without expiry (default 5)"
    )
    g.add_argument(
        "--grace",
        type=float,
        default=60.0,
        help="seconds before an old version expires (default 60)",
    )
    g.add_argument(
        "--user-ttl",
        type=float,
        default=7 * 86_400.0,
        help="seconds a user vector lives (default 7 days)",
    )
    g.add_argument(
        "--seen-per-user",
        type=int,
        default=1000,
        help="distinct items a user has interacted with, published with its vector for "
        "`sevo recommend` to leave out (newest first; default 1000; 0: only the recent window)",
    )
    g.add_argument(
        "--delta-tolerance",
        type=float,
        default=1e-3,
        help="relative change below which a row is not republished (default 1e-3; 0: every change)",
    )
    from streaming.config import QualityGuardConfig

    q = QualityGuardConfig(drop=0.5)  # only its defaults are read
    g = p.add_argument_group(
        "quality guard (needs --prequential and --redis-url)",
        "Judges the prequential NDCG@10 of consecutive windows of events against a reference "
        "(a moving average of healthy windows). When it falls more than the given fraction "
        "below it for --quality-guard-patience windows, publishing pauses and readers are "
        "pointed back at the newest snapshot published before the fall began; training goes "
        "on. `sevo snapshots resume` publishes again and restarts the reference.",
    )
    g.add_argument(
        "--quality-guard-drop",
        type=float,
        default=None,
        metavar="FRACTION",
        help="relative fall of the windowed NDCG@10 below the reference that pauses publishing "
        "and rolls serving back, in (0, 1); unset: no guard",
    )
    g.add_argument(
        "--quality-guard-window",
        type=int,
        default=q.window_events,
        metavar="EVENTS",
        help="events per judged window",
    )
    g.add_argument(
        "--quality-guard-patience",
        type=int,
        default=q.patience,
        metavar="N",
        help="bad windows that trip the guard (and good ones that count as a recovery)",
    )
    g.add_argument(
        "--quality-guard-auto-resume",
        action="store_true",
        help="resume publishing by itself once the metric has recovered, instead of waiting "
        "for `sevo snapshots resume`",
    )


def publisher_from_args(args: argparse.Namespace, metrics: Any = None, *, items: bool = True):
    """An :class:`~streaming.serving.EmbeddingPublisher`, or None without ``--redis-url``;
    ``items=False`` publishes user vectors only (the ranks of a data-parallel group but 0).

    Raises:
        ValueError: ``--quality-guard-drop`` without ``--prequential`` (the guard judges the
            prequential metric) or without ``--redis-url`` (it guards publishing).
    """
    guard = quality_guard_from_args(args)
    if not args.redis_url:
        if guard is not None:
            raise ValueError(
                "--quality-guard-drop guards publishing to Redis: add --redis-url "
                "(or set $SEVO_REDIS_URL)"
            )
        return None
    from streaming.serving import EmbeddingPublisher, PublishConfig

    config = PublishConfig(
        redis_url=args.redis_url,
        namespace=args.namespace,
        publish_every_s=args.publish_every,
        full_every_s=args.full_every,
        keep_versions=args.keep_versions,
        grace_s=args.grace,
        user_ttl_s=args.user_ttl,
        seen_per_user=args.seen_per_user,
        delta_tolerance=args.delta_tolerance,
        quality_guard=guard if items else None,
        items=items,
    )
    return EmbeddingPublisher(config, metrics=metrics)


def quality_guard_from_args(args: argparse.Namespace):
    """The :class:`~streaming.config.QualityGuardConfig` of ``--quality-guard-*``, or None
    without ``--quality-guard-drop``."""
    drop = getattr(args, "quality_guard_drop", None)
    if drop is None:
        return None
    if not getattr(args, "prequential", False):
        raise ValueError(
            "--quality-guard-drop judges the prequential NDCG@10: add --prequential "
            "(without it there is nothing to judge)"
        )
    from streaming.config import QualityGuardConfig

    return QualityGuardConfig(
        drop=drop,
        window_events=args.quality_guard_window,
        patience=args.quality_guard_patience,
        auto_resume=args.quality_guard_auto_resume,
    )


def _one_line_errors(command: Callable[[argparse.Namespace], int]):
    """Redis being unreachable or a snapshot being inconsistent ends a command with one log
    line and exit code 1, not a trace."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        import redis

        from streaming.serving import SnapshotError

        try:
            return command(args)
        except (redis.RedisError, OSError) as exc:
            log.error("Redis unavailable: %s", exc)
        except SnapshotError as exc:
            log.error("%s", exc)
        return 1

    return run


# ---------------------------------------------------------------------- sevo recommend
@_one_line_errors
def _cmd_recommend(args: argparse.Namespace) -> int:
    from streaming.serving import EmbeddingClient

    client = EmbeddingClient(args.redis_url, namespace=args.namespace, timeout_s=args.timeout)
    pointer = client.refresh()
    if pointer is None:
        log.error("nothing is published in namespace %r", args.namespace)
        return 1
    recs = client.recommend(
        args.user, args.k, exclude=args.exclude or (), exclude_seen=not args.include_seen
    )
    found = bool(recs) or client.user_state(args.user) is not None
    if args.json:
        print(
            json.dumps(
                {
                    "user": args.user,
                    "known": found,
                    "version": int(pointer["version"]),
                    "seq": int(pointer["seq"]),
                    "items": [{"item": r.item_id, "score": r.score} for r in recs],
                },
                indent=1,
            )
        )
    else:
        if not found:
            print(f"user {args.user!r} has no served vector (unknown, or its TTL expired)")
        for rank, r in enumerate(recs, 1):
            print(f"{rank:>3}  {r.item_id:<24} {r.score:.4f}")
        print(f"(version {pointer['version']}, delta {pointer['seq']}, namespace {args.namespace})")
    return 0 if found else 1


def add_recommend(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "recommend",
        help="top-k items for a user from the embeddings served in Redis",
        description="Reads the user's vector and the current item matrix from Redis and ranks "
        "items by dot product, excluding the user's recent items. Exit code 1 when the user "
        "has no served vector.",
    )
    _add_location_args(p, required_url=True)
    p.add_argument("--user", required=True, help="external user id")
    p.add_argument("-k", type=int, default=10, help="how many items")
    p.add_argument("--exclude", nargs="*", help="item ids never to return")
    p.add_argument(
        "--include-seen",
        "--include-recent",
        dest="include_seen",
        action="store_true",
        help="also recommend items the user has interacted with (re-consumption domains); "
        "by default they are left out",
    )
    p.add_argument("--timeout", type=float, default=2.0, help="seconds per Redis command")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_recommend)


# ---------------------------------------------------------------------- sevo snapshots
def _fmt_time(t: float | None) -> str:
    if t is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


@_one_line_errors
def _cmd_snapshots(args: argparse.Namespace) -> int:
    from streaming.serving import SnapshotStore, connect
    from streaming.serving.guard import GUARD

    store = SnapshotStore(connect(args.redis_url, timeout_s=args.timeout), args.namespace)
    action = args.snapshots_command
    if action == "list":
        versions = store.versions()
        paused = store.paused()
        if args.json:
            print(json.dumps({"versions": versions, "paused": paused}, indent=1))
            return 0
        if not versions:
            print(f"no versions in namespace {args.namespace!r}")
        for v in versions:
            expiry = "" if v["expires_in_s"] is None else f"  expires in {v['expires_in_s']:.0f} s"
            ndcg = (v.get("quality") or {}).get("ndcg10")
            quality = "" if ndcg is None else f"  NDCG@10 {ndcg:.4f}"
            print(
                f"{'*' if v['current'] else ' '} v{v['version']:<6} {_fmt_time(v['created'])}"
                f"  {v['rows']:>8} rows x {v['dim']:<4} {v['model'] or '-':<8}"
                f" deltas {v['seq']}{quality}{expiry}"
            )
        pointer = store.pointer()
        if pointer and "rolled_back_at" in pointer:
            print(
                f"serving version {pointer['version']} at delta {pointer['seq']} "
                f"(rolled back {_fmt_time(pointer['rolled_back_at'])})"
            )
        if paused:
            print(f"publishing paused since {_fmt_time(paused['since'])}: {paused['reason']}")
        return 0
    if action == "show":
        version = args.version
        if version is None:
            pointer = store.pointer()
            if pointer is None:
                log.error("nothing is published in namespace %r", args.namespace)
                return 1
            version = int(pointer["version"])
        meta, head = store.meta(version), store.head(version)
        if meta is None:
            log.error("version %s does not exist (never published, or expired)", version)
            return 1
        shown = dict(meta, head=head, current_pointer=store.pointer())
        print(json.dumps(shown, indent=1))
        return 0
    if action == "rollback":
        pointer = store.rollback(args.version, pause=args.pause)
        if args.json:
            print(json.dumps(pointer, indent=1))
        else:
            note = (
                "publishing is paused: `sevo snapshots resume` lets the engine publish again"
                if args.pause
                else "a running engine's next publish supersedes this (use --pause to hold it)"
            )
            print(f"serving version {pointer['version']} (delta {pointer['seq']}); {note}")
        return 0
    if action == "pause":
        store.pause(args.reason)
        print(f"publishing to namespace {args.namespace!r} paused")
        return 0
    if action == "publish-full":
        store.request_full()
        print(f"requested a full snapshot in namespace {args.namespace!r} (next publish)")
        return 0
    if action == "resume":
        marker = store.paused() or {}
        was = store.resume()
        by_guard = marker.get("by") == GUARD
        print(
            (
                f"publishing to namespace {args.namespace!r} resumed"
                + (" (paused by the quality guard; it restarts its reference)" if by_guard else "")
            )
            if was
            else f"namespace {args.namespace!r} was not paused"
        )
        return 0
    raise AssertionError(action)


def add_snapshots(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "snapshots",
        help="list, show, roll back or pause the embedding snapshots served in Redis",
        description="Administers the versioned snapshots in one namespace. A rollback switches "
        "the pointer readers use; a running engine keeps training from its live model and its "
        "next publish supersedes the rollback unless publishing is paused (rollback --pause, "
        "or pause); after resume the engine writes a full snapshot.",
    )
    ssub = p.add_subparsers(dest="snapshots_command", metavar="ACTION", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        _add_location_args(q, required_url=True)
        q.add_argument("--timeout", type=float, default=2.0, help="seconds per Redis command")
        q.set_defaults(func=_cmd_snapshots)

    q = ssub.add_parser("list", help="versions, newest first (* = served)")
    common(q)
    q.add_argument("--json", action="store_true")
    q = ssub.add_parser("show", help="metadata of a version (default: the served one)")
    common(q)
    q.add_argument("version", type=int, nargs="?", default=None)
    q = ssub.add_parser("rollback", help="serve an older version (default: the previous one)")
    common(q)
    q.add_argument("version", type=int, nargs="?", default=None)
    q.add_argument(
        "--pause", action="store_true", help="also pause publishing so the rollback holds"
    )
    q.add_argument("--json", action="store_true")
    q = ssub.add_parser("pause", help="stop engines publishing into this namespace")
    common(q)
    q.add_argument("--reason", default="", help="shown by `sevo snapshots list`")
    q = ssub.add_parser(
        "resume",
        help="let engines publish again (next publish is full; the quality guard restarts "
        "its reference)",
    )
    common(q)
    q = ssub.add_parser(
        "publish-full", help="ask the publishing engine for a full snapshot at its next publish"
    )
    common(q)
