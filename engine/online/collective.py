"""What the ranks of a data-parallel online trainer exchange, on ``torch.distributed``.

Only tensors and raw bytes cross ranks (the engine never unpickles): strings travel as UTF-8
bytes with their lengths, arrays as their raw buffers with a dtype agreed by the caller, and
structured state as :func:`pack_arrays` blobs (a JSON header plus raw array buffers).

:class:`SingleProcess` implements the same interface for one process without any
communication, so the trainer runs one code path whether it is alone or one of N ranks.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["Collective", "ProcessGroup", "SingleProcess", "pack_arrays", "unpack_arrays"]


class Collective:
    """The interface (see :class:`SingleProcess` and :class:`ProcessGroup`).

    Attributes:
        rank: this process's rank, ``0..world_size-1``.
        world_size: number of ranks.
        bytes_sent: bytes this rank contributed to collectives so far (a gauge for benchmarks).
        seconds: wall time spent in collectives so far (waiting for the other ranks included).
    """

    rank: int = 0
    world_size: int = 1
    bytes_sent: int = 0
    seconds: float = 0.0

    @property
    def distributed(self) -> bool:
        """Whether there is more than one rank."""
        return self.world_size > 1

    def all_gather_arrays(self, array: np.ndarray) -> list[np.ndarray]:
        """Every rank's 1-D ``array`` (lengths may differ; the dtype must be the same)."""
        raise NotImplementedError

    def all_gather_strings(self, values: np.ndarray) -> list[np.ndarray]:
        """Every rank's 1-D array of strings, as numpy ``str`` arrays in rank order."""
        raise NotImplementedError

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over ranks in place (and return it)."""
        raise NotImplementedError

    def broadcast_bytes(self, data: bytes | None, src: int = 0) -> bytes:
        """``src``'s bytes on every rank (others pass ``None``)."""
        raise NotImplementedError

    def gather_bytes(self, data: bytes, dst: int = 0) -> list[bytes] | None:
        """Every rank's bytes on ``dst`` (rank order); ``None`` on the other ranks."""
        raise NotImplementedError

    def barrier(self) -> None:
        """Wait for every rank."""


class SingleProcess(Collective):
    """One process: every collective is the identity."""

    def all_gather_arrays(self, array: np.ndarray) -> list[np.ndarray]:
        return [array]

    def all_gather_strings(self, values: np.ndarray) -> list[np.ndarray]:
        return [values]

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def broadcast_bytes(self, data: bytes | None, src: int = 0) -> bytes:
        if data is None:
            raise ValueError("a single process broadcasts its own bytes")
        return data

    def gather_bytes(self, data: bytes, dst: int = 0) -> list[bytes] | None:
        return [data]


class ProcessGroup(Collective):
    """The default ``torch.distributed`` process group (gloo on CPU; NCCL needs CUDA tensors
    and is not used for these host-side exchanges).

    Args:
        timeout_s: how long a collective waits for a missing rank before it fails — a rank
            that died makes the others fail fast instead of hanging.

    Initialises the group from the environment ``torchrun`` sets (``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``, ``MASTER_PORT``) unless it is initialised already.
    """

    def __init__(self, timeout_s: float = 60.0) -> None:
        if not dist.is_initialized():
            timeout = timedelta(seconds=timeout_s)
            restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
            if restart is not None and "MASTER_ADDR" in os.environ:
                # After a restart by torchrun the launcher's store still holds the previous
                # attempt's gloo addresses under the same keys, and the new ranks would dial
                # the dead ones; a prefix per attempt keeps the attempts apart.
                rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
                store = dist.TCPStore(
                    os.environ["MASTER_ADDR"],
                    int(os.environ["MASTER_PORT"]),
                    world,
                    is_master=False,
                    timeout=timeout,
                )
                dist.init_process_group(
                    "gloo",
                    store=dist.PrefixStore(f"sevo/attempt-{restart}", store),
                    rank=rank,
                    world_size=world,
                    timeout=timeout,
                )
            else:
                dist.init_process_group("gloo", timeout=timeout)
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.bytes_sent = 0
        self.seconds = 0.0

    def _gather_padded(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """All-gather 1-D tensors of any length: lengths first, then padded payloads."""
        t = time.perf_counter()
        n = torch.tensor([flat.numel()], dtype=torch.int64)
        lengths = [torch.zeros(1, dtype=torch.int64) for _ in range(self.world_size)]
        dist.all_gather(lengths, n)
        sizes = [int(x) for x in lengths]
        longest = max(sizes)
        padded = torch.zeros(longest, dtype=flat.dtype)
        padded[: flat.numel()] = flat
        out = [torch.empty(longest, dtype=flat.dtype) for _ in range(self.world_size)]
        dist.all_gather(out, padded)
        self.bytes_sent += 8 + longest * flat.element_size()
        self.seconds += time.perf_counter() - t
        return [o[:s] for o, s in zip(out, sizes, strict=True)]

    def all_gather_arrays(self, array: np.ndarray) -> list[np.ndarray]:
        flat = np.ascontiguousarray(array).reshape(-1)
        as_bytes = torch.from_numpy(flat.view(np.uint8).copy())
        parts = self._gather_padded(as_bytes)
        return [p.numpy().view(flat.dtype) for p in parts]

    def all_gather_strings(self, values: np.ndarray) -> list[np.ndarray]:
        encoded = [str(v).encode("utf-8") for v in values.tolist()]
        lengths = np.array([len(b) for b in encoded], dtype=np.int64)
        all_lengths = self.all_gather_arrays(lengths)
        blobs = self.all_gather_arrays(np.frombuffer(b"".join(encoded), dtype=np.uint8))
        out = []
        for lens, blob in zip(all_lengths, blobs, strict=True):
            data = blob.tobytes()
            ends = np.cumsum(lens)
            starts = ends - lens
            out.append(
                np.array(
                    [data[a:b].decode("utf-8") for a, b in zip(starts, ends, strict=True)],
                    dtype=str,
                )
                if lens.size
                else np.zeros(0, dtype=str)
            )
        return out

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        t = time.perf_counter()
        self.bytes_sent += tensor.numel() * tensor.element_size()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        self.seconds += time.perf_counter() - t
        return tensor

    def broadcast_bytes(self, data: bytes | None, src: int = 0) -> bytes:
        size = torch.tensor([len(data) if self.rank == src and data is not None else 0])
        dist.broadcast(size, src)
        if not int(size):
            return b""
        buf = torch.zeros(int(size), dtype=torch.uint8)
        if self.rank == src:
            if data is None:
                raise ValueError("the source rank must pass bytes")
            buf[:] = torch.from_numpy(np.frombuffer(data, dtype=np.uint8).copy())
            self.bytes_sent += len(data)
        dist.broadcast(buf, src)
        return buf.numpy().tobytes()

    def gather_bytes(self, data: bytes, dst: int = 0) -> list[bytes] | None:
        # gloo's gather needs equal sizes; an all-gather of padded bytes is simplest and the
        # state gathered for a checkpoint is small next to the step's exchanges.
        parts = self._gather_padded(torch.from_numpy(np.frombuffer(data, dtype=np.uint8).copy()))
        if self.rank != dst:
            return None
        return [p.numpy().tobytes() for p in parts]

    def barrier(self) -> None:
        dist.barrier()


def pack_arrays(arrays: Mapping[str, Any]) -> bytes:
    """A blob of numpy arrays and JSON scalars: ``len(header)`` (8 bytes, little endian), a
    JSON header (names, dtypes, shapes, scalars) and the raw buffers in header order."""
    header: dict[str, Any] = {"arrays": [], "values": {}}
    buffers = []
    for name, value in arrays.items():
        if isinstance(value, np.ndarray):
            a = np.ascontiguousarray(value)
            header["arrays"].append([name, a.dtype.str, list(a.shape)])
            buffers.append(a.tobytes())
        else:
            header["values"][name] = value
    head = json.dumps(header).encode("utf-8")
    return len(head).to_bytes(8, "little") + head + b"".join(buffers)


def unpack_arrays(blob: bytes) -> dict[str, Any]:
    """The inverse of :func:`pack_arrays` (copies, writable)."""
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n].decode("utf-8"))
    out: dict[str, Any] = dict(header["values"])
    offset = 8 + n
    for name, dtype, shape in header["arrays"]:
        dt = np.dtype(dtype)
        count = int(np.prod(shape)) if shape else 1
        size = count * dt.itemsize
        out[name] = np.frombuffer(blob, dtype=dt, count=count, offset=offset).reshape(shape).copy()
        offset += size
    return out
