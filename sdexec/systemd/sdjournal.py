"""Reading the journal in-process, through libsystemd's ``sd_journal`` API (ctypes).

A ``journalctl`` run costs a process and about 11 ms of CPU (it maps and
checks every journal file before it reads a line), which is most of what a
Flux job's ``wait`` cost the module when the answer carried the job's last
output.  One handle, opened once, answers such reads in microseconds: the
journal files are mapped into this process and journald's appends to them
are seen as they are written.  New files (journald rotates them) are picked
up through the handle's inotify descriptor before each read
(``sd_journal_process``).

Only the reads that must be cheap and short use it: the last bytes of one
unit's output, newest first, bounded (see :meth:`Reader.last`).  Following,
full replays and ``--since`` stay with ``journalctl`` (:mod:`sdexec.systemd.journal`).

A match is a list of OR-ed terms, each a list of AND-ed ``FIELD=value``
strings, as in ``journalctl`` (terms between ``+``).  Which journal: a
directory (the private manager's), the current user's (``--user``), or the
local system's.  When libsystemd cannot be loaded or the journal not opened,
:func:`open_reader` returns None and callers use ``journalctl``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from dataclasses import dataclass

SD_JOURNAL_LOCAL_ONLY = 1
SD_JOURNAL_CURRENT_USER = 8

_lib: ctypes.CDLL | None = None


def _load() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        name = ctypes.util.find_library("systemd") or "libsystemd.so.0"
        lib = ctypes.CDLL(name, use_errno=True)
        vp, cp, sz, i = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int
        for fn, args, res in (
            ("sd_journal_open", [ctypes.POINTER(vp), i], i),
            ("sd_journal_open_directory", [ctypes.POINTER(vp), cp, i], i),
            ("sd_journal_close", [vp], None),
            ("sd_journal_get_fd", [vp], i),
            ("sd_journal_process", [vp], i),
            ("sd_journal_set_data_threshold", [vp, sz], i),
            ("sd_journal_add_match", [vp, cp, sz], i),
            ("sd_journal_add_disjunction", [vp], i),
            ("sd_journal_flush_matches", [vp], None),
            ("sd_journal_seek_tail", [vp], i),
            ("sd_journal_previous", [vp], i),
            ("sd_journal_get_data", [vp, cp, ctypes.POINTER(vp), ctypes.POINTER(sz)], i),
        ):
            f = getattr(lib, fn)
            f.argtypes, f.restype = args, res
        _lib = lib
    return _lib


def _check(rc: int, what: str) -> int:
    if rc < 0:
        raise OSError(-rc, f"{what}: {os.strerror(-rc)}")
    return rc


@dataclass(frozen=True)
class Entry:
    """One journal entry's fields that the output readers use (raw bytes)."""

    message: bytes
    priority: int | None
    line_break: bytes | None  # journald's _LINE_BREAK (the line did not end in a newline)


class Reader:
    """An open ``sd_journal`` handle (one per server; not thread-safe)."""

    def __init__(self, handle: ctypes.c_void_p, lib: ctypes.CDLL) -> None:
        self._j = handle
        self._lib = lib
        self._data = ctypes.c_void_p()
        self._size = ctypes.c_size_t()

    def close(self) -> None:
        if self._j:
            self._lib.sd_journal_close(self._j)
            self._j = ctypes.c_void_p()

    def _field(self, name: bytes) -> bytes | None:
        rc = self._lib.sd_journal_get_data(
            self._j, name, ctypes.byref(self._data), ctypes.byref(self._size)
        )
        if rc == -errno.ENOENT:
            return None
        _check(rc, "sd_journal_get_data")
        raw = ctypes.string_at(self._data.value or 0, self._size.value)
        return raw[len(name) + 1 :]  # "FIELD=value"

    def last(self, match: list[list[str]], max_bytes: int) -> list[Entry]:
        """The newest entries of ``match``, oldest first, at most about ``max_bytes`` of
        messages (the oldest entry kept may bring the total over it)."""
        lib, j = self._lib, self._j
        if not j:
            raise OSError(errno.EBADF, "the journal reader is closed")
        lib.sd_journal_process(j)  # pick up rotated and new files
        lib.sd_journal_flush_matches(j)
        for i, term in enumerate(match):
            if i:
                _check(lib.sd_journal_add_disjunction(j), "sd_journal_add_disjunction")
            for m in term:
                data = m.encode()
                _check(lib.sd_journal_add_match(j, data, len(data)), "sd_journal_add_match")
        _check(lib.sd_journal_seek_tail(j), "sd_journal_seek_tail")
        found: list[Entry] = []
        size = 0
        while size < max_bytes and _check(lib.sd_journal_previous(j), "sd_journal_previous") > 0:
            message = self._field(b"MESSAGE") or b""
            priority = self._field(b"PRIORITY")
            entry = Entry(
                message,
                int(priority) if priority is not None and priority.isdigit() else None,
                self._field(b"_LINE_BREAK"),
            )
            found.append(entry)
            size += len(message) + 1
        found.reverse()
        return found


def open_reader(directory: str | None, user: bool) -> Reader | None:
    """A reader of ``directory``'s journal, else the user's (``user``) or the system's;
    None when libsystemd or the journal cannot be opened."""
    try:
        lib = _load()
    except OSError:
        return None
    handle = ctypes.c_void_p()
    if directory is not None:
        rc = lib.sd_journal_open_directory(ctypes.byref(handle), directory.encode(), 0)
    else:
        flags = SD_JOURNAL_LOCAL_ONLY | (SD_JOURNAL_CURRENT_USER if user else 0)
        rc = lib.sd_journal_open(ctypes.byref(handle), flags)
    if rc < 0:
        return None
    reader = Reader(handle, lib)
    # No truncation of long fields (the default keeps 64 KiB of each), and
    # an inotify descriptor, without which new journal files go unnoticed.
    if lib.sd_journal_set_data_threshold(handle, 0) < 0 or lib.sd_journal_get_fd(handle) < 0:
        reader.close()
        return None
    return reader
