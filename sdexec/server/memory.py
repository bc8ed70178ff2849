"""Allocator settings for a server that moves output in large chunks.

Theory of operation
-------------------
Output forwarding allocates a few buffers of a few hundred KiB per message
(the chunk read from a pipe, its JSON escaping, the frame) and frees them
again before the next one.  With glibc's defaults that pattern makes the
kernel do the work: an allocation above the *mmap threshold* (128 KiB at
start, then adjusted to the largest chunk freed so far) is a fresh ``mmap``
whose pages fault in one by one, and freeing more than the *trim threshold*
at the top of the heap hands the memory back with ``brk`` only to fault it
in again for the next message.  Measured on output forwarding, page faults
and zeroing cost more than all of the JSON work (server CPU per GiB about
three times what the same code needs with the memory kept).

:func:`tune_malloc` fixes both thresholds at sizes that hold a whole
message, so those buffers are reused from the heap.  The memory kept is
bounded: at most TRIM_THRESHOLD of free heap is retained, and output
back-pressure bounds what is in use.  On a C library other than glibc (no
``mallopt``), nothing changes.
"""

from __future__ import annotations

import contextlib

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 4 << 20  # above the largest message a server sends or accepts by default
TRIM_THRESHOLD = 8 << 20


def tune_malloc() -> bool:
    """Keep message-sized buffers on the heap (glibc); True if both settings took."""
    with contextlib.suppress(OSError, AttributeError, ImportError):
        import ctypes

        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        mallopt.restype = ctypes.c_int
        ok: bool = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
        trimmed: bool = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
        return ok and trimmed
    return False
