"""sdexec.server.memory: the allocator settings of output forwarding."""

from __future__ import annotations

import ctypes.util

import pytest

from sdexec.server import memory


@pytest.mark.skipif(ctypes.util.find_library("c") is None, reason="no C library to ask")
def test_tune_malloc_takes_on_glibc() -> None:
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "mallopt"):
        pytest.skip("not glibc")
    assert memory.tune_malloc() is True


def test_thresholds_hold_a_whole_message() -> None:
    from sdexec.security.setup import DEFAULT_MAX_MESSAGE
    from sdexec.server.pipes import READ_SIZE

    assert memory.MMAP_THRESHOLD >= DEFAULT_MAX_MESSAGE
    # a chunk, its escaping (up to 2x for JSON, 4/3 for base64) and its frame
    assert memory.TRIM_THRESHOLD >= 4 * READ_SIZE
