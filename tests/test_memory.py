"""sevo_common.memory: returning free heap memory to the OS."""

from __future__ import annotations

import platform

import numpy as np

from sevo_common import memory


def test_release_free_memory_runs_and_reports_a_bool():
    blocks = [np.ones(1 << 16) for _ in range(64)]  # ~32 MiB of heap, then freed
    del blocks
    assert isinstance(memory.release_free_memory(), bool)


def test_glibc_trim_is_found_on_gnu_linux():
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert memory._malloc_trim() is not None
    else:  # other C libraries: a no-op that says so
        assert memory.release_free_memory() in (True, False)
