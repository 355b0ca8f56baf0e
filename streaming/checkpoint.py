"""Durable checkpoints: trainer state + source offsets, written atomically, verified on load.

A checkpoint is the source of truth for offsets: it stores the next offset of every
source partition together with the model, optimizer, graph and user state, so a restart resumes
exactly where the state left off.

Layout of a checkpoint directory::

    ckpt-00000007.pt     torch.save({"state", "offsets", "meta", "version"}) — tensors and plain
                         Python values only, loaded with torch.load(weights_only=True)
    ckpt-00000007.json   sidecar: {"version", "sha256", "size", "created", "offsets", "meta"}

Each file is written to a temporary file, fsynced, renamed into place and the directory fsynced.
The ``.pt`` goes first, the sidecar last: a checkpoint exists once its sidecar does, and
:meth:`CheckpointStore.latest` only accepts a payload whose SHA-256 matches the sidecar. A torn or
corrupted newest checkpoint is skipped with a warning and the previous valid one is used.

Example:
    >>> import tempfile
    >>> store = CheckpointStore(tempfile.mkdtemp())
    >>> path = store.save({"w": torch.zeros(2)}, {"file:log.jsonl": 10}, {"note": "x"})
    >>> state, offsets, meta = store.latest()
    >>> offsets, meta["note"], store.latest_version()
    ({'file:log.jsonl': 10}, 'x', 1)
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sevo_common.atomic import atomic_write_bytes
from streaming.errors import CheckpointWriteError

__all__ = ["Checkpoint", "CheckpointError", "CheckpointStore", "describe_checkpoint"]

log = logging.getLogger(__name__)

_NAME = re.compile(r"^ckpt-(\d{8,})\.(pt|json)$")
_FORMAT = 1


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupted or not a checkpoint."""


@dataclass(frozen=True)
class Checkpoint:
    """One loaded checkpoint."""

    version: int
    state: dict[str, Any]
    offsets: dict[str, int]
    meta: dict[str, Any]
    path: Path


class CheckpointStore:
    """Versioned, atomically written checkpoints in one directory.

    Args:
        directory: where checkpoints live (created if missing).
        keep: how many of the newest checkpoints to keep (>= 1); older ones are deleted after
            each successful save.

    Only one writer may use a directory at a time.
    """

    def __init__(self, directory: str | os.PathLike[str], keep: int = 3) -> None:
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep must be a positive integer, got {keep!r}")
        self.directory = Path(directory)
        self.keep = keep
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CheckpointWriteError(self.directory, _os_reason(exc)) from exc

    def check_writable(self) -> None:
        """Write, fsync and remove a small probe file: fail before any work is done when the
        directory cannot hold a checkpoint (read-only mount, no space, no permission).

        Raises:
            CheckpointWriteError: with the operating system's reason.
        """
        probe = self.directory / ".ckpt-probe"
        try:
            atomic_write_bytes(probe, b"probe")
            probe.unlink()
        except OSError as exc:
            raise CheckpointWriteError(self.directory, _os_reason(exc)) from exc

    # ------------------------------------------------------------------ listing
    def versions(self) -> list[int]:
        """Versions that have any file here (valid or not), ascending."""
        found = set()
        for path in self.directory.iterdir():
            m = _NAME.match(path.name)
            if m:
                found.add(int(m.group(1)))
        return sorted(found)

    def _paths(self, version: int) -> tuple[Path, Path]:
        stem = f"ckpt-{version:08d}"
        return self.directory / f"{stem}.pt", self.directory / f"{stem}.json"

    # ------------------------------------------------------------------ writing
    def save(self, state: dict[str, Any], offsets: dict[str, int], meta: dict[str, Any]) -> Path:
        """Write a new checkpoint atomically and return the path of its ``.pt`` file.

        Args:
            state: tensors and plain Python values (e.g. ``OnlineTrainer.state_dict()``).
            offsets: next offset per source (``"topic:partition"`` or ``"file:<name>"``).
            meta: JSON-serialisable information (counters, metrics); also kept in the sidecar.

        Raises:
            ValueError: if ``offsets`` or ``meta`` is not JSON-serialisable, or an offset is not
                a non-negative integer.
            CheckpointWriteError: the directory did not take the write (full, read-only); no
                file of the new version is left behind and the newest valid version is
                unchanged.
        """
        clean_offsets = {}
        for key, value in offsets.items():
            if isinstance(value, bool) or int(value) != value or value < 0:
                raise ValueError(f"offset {key!r} must be a non-negative integer, got {value!r}")
            clean_offsets[str(key)] = int(value)
        try:
            meta_json = json.loads(json.dumps(meta, allow_nan=True))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"checkpoint meta must be JSON-serialisable: {exc}") from exc
        version = (self.versions() or [0])[-1] + 1
        buffer = io.BytesIO()
        torch.save(
            {
                "format": _FORMAT,
                "version": version,
                "state": state,
                "offsets": clean_offsets,
                "meta": meta_json,
            },
            buffer,
        )
        payload = buffer.getvalue()
        pt_path, json_path = self._paths(version)
        sidecar = {
            "format": _FORMAT,
            "version": version,
            "file": pt_path.name,
            "sha256": hashlib.sha256(payload).hexdigest(),
            "size": len(payload),
            "created": time.time(),
            "offsets": clean_offsets,
            "meta": meta_json,
        }
        self._remove_temp_files()
        try:
            atomic_write_bytes(pt_path, payload)
            atomic_write_bytes(json_path, json.dumps(sidecar, indent=1).encode("utf-8"))
        except OSError as exc:
            # A payload without its sidecar is no checkpoint: remove it to give the space back
            # (atomic_write_bytes already removed its own temporary file).
            with contextlib.suppress(OSError):
                pt_path.unlink()
            raise CheckpointWriteError(self.directory, _os_reason(exc)) from exc
        self._prune()
        log.debug("checkpoint %d written (%d bytes)", version, len(payload))
        return pt_path

    def _remove_temp_files(self) -> None:
        for path in self.directory.glob(".ckpt-*.tmp"):  # left by a crash mid-write
            with contextlib.suppress(OSError):
                path.unlink()

    def _prune(self) -> None:
        versions = self.versions()
        for version in versions[: max(0, len(versions) - self.keep)]:
            for path in self._paths(version):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    # ------------------------------------------------------------------ reading
    def load(self, version: int) -> Checkpoint:
        """Load and verify one version.

        Raises:
            CheckpointError: missing sidecar or payload, size/checksum mismatch, or a payload
                that does not load as a weights-only checkpoint.
        """
        payload = self.load_payload(version)
        return parse_checkpoint(payload, self._paths(version)[0])

    def load_payload(self, version: int) -> bytes:
        """The verified bytes of one version's ``.pt`` (size and SHA-256 checked against the
        sidecar; what a data-parallel group's rank 0 broadcasts to the others).

        Raises:
            CheckpointError: missing sidecar or payload, size/checksum mismatch.
        """
        pt_path, json_path = self._paths(version)
        try:
            sidecar = json.loads(json_path.read_text(encoding="utf-8"))
            expected_sha, expected_size = str(sidecar["sha256"]), int(sidecar["size"])
        except FileNotFoundError as exc:
            raise CheckpointError(f"{json_path.name} is missing (incomplete checkpoint)") from exc
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{json_path.name} is not a valid sidecar: {exc}") from exc
        try:
            payload = pt_path.read_bytes()
        except FileNotFoundError as exc:
            raise CheckpointError(f"{pt_path.name} is missing") from exc
        if len(payload) != expected_size:
            raise CheckpointError(
                f"{pt_path.name} has {len(payload)} bytes, expected {expected_size} (truncated?)"
            )
        if hashlib.sha256(payload).hexdigest() != expected_sha:
            raise CheckpointError(f"{pt_path.name} fails its SHA-256 check (corrupted)")
        return payload

    def latest_checkpoint(self) -> Checkpoint | None:
        """The newest checkpoint that verifies, or ``None``; bad newer ones are logged, skipped."""
        found = self.latest_payload()
        return None if found is None else parse_checkpoint(found[1], found[0])

    def latest_payload(self) -> tuple[Path, bytes] | None:
        """``(path, verified bytes)`` of the newest checkpoint that verifies and loads, or
        ``None``; bad newer ones are logged and skipped."""
        for version in reversed(self.versions()):
            try:
                payload = self.load_payload(version)
                path = self._paths(version)[0]
                parse_checkpoint(payload, path)
                return path, payload
            except CheckpointError as exc:
                log.warning("skipping checkpoint %d in %s: %s", version, self.directory, exc)
        return None

    def latest(self) -> tuple[dict[str, Any], dict[str, int], dict[str, Any]] | None:
        """``(state, offsets, meta)`` of the newest valid checkpoint, or ``None``."""
        ckpt = self.latest_checkpoint()
        return None if ckpt is None else (ckpt.state, ckpt.offsets, ckpt.meta)

    def latest_version(self) -> int | None:
        """Version of the newest valid checkpoint (loads and verifies it), or ``None``."""
        ckpt = self.latest_checkpoint()
        return None if ckpt is None else ckpt.version


def parse_checkpoint(payload: bytes, path: Path) -> Checkpoint:
    """A checkpoint from the bytes of its ``.pt`` (loaded weights-only).

    Raises:
        CheckpointError: the bytes do not load as a weights-only checkpoint of this format.
    """
    try:
        obj = torch.load(io.BytesIO(payload), weights_only=True, map_location="cpu")
    except Exception as exc:  # any unpickling failure means a bad file
        raise CheckpointError(f"{path.name} does not load: {exc}") from exc
    if not isinstance(obj, dict) or obj.get("format") != _FORMAT:
        raise CheckpointError(f"{path.name} is not a checkpoint of format {_FORMAT}")
    return Checkpoint(
        version=int(obj["version"]),
        state=obj["state"],
        offsets={str(k): int(v) for k, v in obj["offsets"].items()},
        meta=obj["meta"],
        path=path,
    )


def _os_reason(exc: OSError) -> str:
    """``"No space left on device"`` (the OS's words), else the exception's text."""
    return exc.strerror or str(exc) or type(exc).__name__


def describe_checkpoint(ckpt: Checkpoint) -> dict[str, Any]:
    """What a checkpoint of the online pipeline holds, as plain JSON values (``sevo inspect``,
    ``sevo report``): version and path, counters, catalogue and graph size, offsets, the
    trainer config and, with prequential evaluation, HR@K / NDCG@K over all events ranked."""
    from graph_store import ItemGraph

    state, meta = ckpt.state, ckpt.meta
    graph = ItemGraph.from_state_arrays({k: v.numpy() for k, v in state["graph"].items()})
    info = {
        "checkpoint_version": ckpt.version,
        "checkpoint_path": str(ckpt.path),
        "events_applied": int(state["events_applied"]),
        "dead_letters": int(meta.get("dead_letters_total", 0)),
        "dead_letters_by_reason": meta.get("dead_letters", {}),
        "num_users": len(state["user_ids"]),
        "num_items": len(state["item_ids"]) - 1,
        "graph_nnz": int(graph.to_scipy(raw=True).nnz),
        # Sum of all entries of the true A (decayed to the latest event time): each undirected
        # edge counts twice; with hops=1, unit weights and no decay, 2 x adjacent item pairs.
        "graph_total_weight": float(graph.total_weight()),
        "graph_half_life": graph.half_life,
        "graph_t_latest": graph.t_latest,
        "offsets": ckpt.offsets,
        "config": state["config"],
    }
    preq = meta.get("prequential")
    if preq and preq.get("count"):
        info["prequential"] = {
            "events": preq["count"],
            f"HR@{preq['k']}": preq["hits"] / preq["count"],
            f"NDCG@{preq['k']}": preq["ndcg"] / preq["count"],
        }
    return info
