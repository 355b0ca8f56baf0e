"""sevo_common.atomic: a reader sees the old file or the new one, and no temporary file remains."""

from __future__ import annotations

import pytest

from sevo_common.atomic import atomic_write_bytes


def test_atomic_write_creates_and_replaces(tmp_path):
    path = tmp_path / "sub" / "state.bin"  # the parent directory is created
    atomic_write_bytes(path, b"first")
    assert path.read_bytes() == b"first"
    atomic_write_bytes(path, b"second, longer")
    assert path.read_bytes() == b"second, longer"
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.bin"], "no temp file left"


def test_a_failed_write_leaves_the_old_file_intact(tmp_path):
    path = tmp_path / "state.bin"
    atomic_write_bytes(path, b"old")
    with pytest.raises(TypeError):
        atomic_write_bytes(path, "not bytes")  # the write itself fails, before the rename
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.bin"], "no temp file left"
