"""Disk faults for tests and benchmarks: a small tmpfs, filling it, read-only views.

A development tool (used by ``tests/streaming/test_disk_faults.py`` and
``benchmarks/faults.py``). Mounting needs root; root ignores file modes, so a real full or
read-only filesystem is the only way to make a write fail there.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

__all__ = ["fill", "read_only_over", "remount", "tmpfs", "unmount"]


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` (e.g. ``"2m"``) at ``path`` (created); unmounted (lazily)
    on exit."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(mount: Path) -> Path:
    """Write a filler file until the filesystem is full; returns it (delete it to free)."""
    filler = mount / "filler"
    with filler.open("wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError:
            pass
    return filler


def remount(mount: Path, mode: str) -> None:
    """Remount the filesystem at ``mount`` with ``mode`` (``"ro"`` or ``"rw"``)."""
    subprocess.run(["mount", "-o", f"remount,{mode}", str(mount)], check=True)


def read_only_over(directory: Path) -> None:
    """Mount a read-only view of ``directory`` over itself (a remount of the whole filesystem
    is refused while a process holds a file open for writing); :func:`unmount` lifts it."""
    subprocess.run(["mount", "--bind", str(directory), str(directory)], check=True)
    subprocess.run(["mount", "-o", "remount,bind,ro", str(directory)], check=True)


def unmount(directory: Path) -> None:
    subprocess.run(["umount", str(directory)], check=True)
