"""Reading the journal of the manager we run units under.

The journal is where systemd says *why* a unit could not be started: an exec
failure is logged as ``MESSAGE_ID=641257651c1b4ec9a8624d7a40a9e1e7`` (spawn
failed) with the errno in ``ERRNO``.  That is the only place the errno is
kept, and the only way to tell systemd's 203/EXEC from a program that really
exits 203 so fast that the start job never saw it run (see
:mod:`sdexec.systemd.unitstate`).

Which journal: the private manager's journal directory, the user's journal
(``--user``, units under ``USER_UNIT``) or the system journal (``UNIT``).

It is also where background output goes: :func:`open_stream` connects a
stream to journald's ``stdout`` socket and writes the stream protocol's
header (identifier, unit, priority, ...), as the manager does for a unit's
``StandardOutput=journal``; the socket then becomes the unit's stdout or
stderr.  journald takes each line's process from the socket's credentials,
and for a process that has already exited, the unit from the header (it
trusts that only from root), so a short-lived child's lines keep their unit.
"""

from __future__ import annotations

import array
import asyncio
import errno
import fcntl
import json
import os
import socket
import termios
import time
from dataclasses import dataclass, field

from sdexec.base.errors import SdexecError
from sdexec.systemd.sdjournal import Reader, open_reader

SPAWN_FAILED = "641257651c1b4ec9a8624d7a40a9e1e7"
#: journald's stream socket (systemd-journald.service(8)), as the manager's units see it.
STDOUT_SOCKET = "/run/systemd/journal/stdout"


def open_stream(path: str, identifier: str, unit: str, priority: int) -> int:
    """A stream to journald's ``stdout`` socket at ``path``, header sent; returns its fd.

    Lines written to it are journal entries with ``SYSLOG_IDENTIFIER``
    ``identifier`` and ``PRIORITY`` ``priority``, no level prefix parsing, no
    forwarding beyond journald's own configuration.  The caller owns the fd.
    EIO when journald cannot be reached (a unit started without its output
    would lose it all); EAGAIN when its backlog is full.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.setblocking(False)  # AF_UNIX: queued at once, or EAGAIN when the backlog is full
        try:
            sock.connect(path)
            sock.shutdown(socket.SHUT_RD)
            header = f"{identifier}\n{unit}\n{priority}\n0\n0\n0\n0\n".encode()
            if sock.send(header) != len(header):
                raise BlockingIOError(errno.EAGAIN, "short write")
        except BlockingIOError:
            raise SdexecError(errno.EAGAIN, "journald is busy (stream backlog full)") from None
        except OSError as exc:
            raise SdexecError(
                errno.EIO, f"cannot send the output to journald ({path}): {exc.strerror}"
            ) from None
        sock.setblocking(True)  # the unit's processes write to it as to any file
        return sock.detach()
    finally:
        sock.close()


def unread(fd: int) -> int:
    """Bytes written to stream ``fd`` that its reader has not taken yet (SIOCOUTQ)."""
    buf = array.array("i", [0])
    fcntl.ioctl(fd, termios.TIOCOUTQ, buf)  # TIOCOUTQ is SIOCOUTQ
    return buf[0]


class StreamsRead:
    """Knows when journald has read everything a unit wrote to its streams.

    It keeps copies of the unit's stream sockets.  A socket's send queue
    (SIOCOUTQ) holds what journald has not read yet; journald turns each
    line into an entry right after it reads it, so once the queues of a
    finished unit are empty its complete lines are in the journal, or about
    to be: plain reads find them (the reader reads until two reads agree),
    with no following and no waiting for the log to go quiet (journald
    announces new entries to followers up to 250 ms late).  A last line
    without a newline is journald's to keep until the stream closes.
    """

    POLL = 0.001
    LIMIT = 2.0  # seconds journald may take to empty the queues

    def __init__(self, fds: list[int]) -> None:
        self.fds = [os.dup(fd) for fd in fds]

    async def wait(self) -> bool:
        """True once every queue is empty; False if journald did not empty them in time."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.LIMIT
        try:
            while any(unread(fd) for fd in self.fds):
                if loop.time() >= deadline:
                    return False
                await asyncio.sleep(self.POLL)
            return True
        except OSError:
            return False
        finally:
            self.close()

    def close(self) -> None:
        fds, self.fds = self.fds, []
        for fd in fds:
            os.close(fd)


#: journald's own test (``uid_for_system_journal``): the records of these users
#: go to the system journal, never to a user journal of theirs, so
#: ``journalctl --user`` finds none of them.  systemd's SYSTEM_UID_MAX (as
#: Debian builds it), its dynamic users' range, and nobody.
SYSTEM_UID_MAX = 999
DYNAMIC_UIDS = range(61184, 65520)
NOBODY = 65534


def journald_splits_off(uid: int) -> bool:
    """Whether journald keeps ``uid``'s records in a user journal of its own."""
    return uid > SYSTEM_UID_MAX and uid not in DYNAMIC_UIDS and uid != NOBODY


@dataclass
class Journal:
    """How to ask journalctl about our manager's units.

    ``owner``: matches every query must meet, whatever else it matches (each
    alternative of a ``+`` included): the manager's user, when the records
    are looked for in a journal shared with other users.
    """

    selector: list[str] = field(default_factory=list)
    unit_field: str = "USER_UNIT"
    owner: list[str] = field(default_factory=list)

    @classmethod
    def for_mode(cls, mode: str, directory: str | None = None, uid: int | None = None) -> Journal:
        if mode == "private" and directory:
            return cls(["--directory", directory], "USER_UNIT")
        if mode == "system":
            return cls([], "UNIT")
        uid = os.getuid() if uid is None else uid
        if not journald_splits_off(uid):
            # A system user's manager (the flux user of a Flux system
            # instance): its units' records are in the system journal, which
            # it reads as a member of systemd-journal (or adm).  Its own are
            # those written from under user@UID.service, whatever uid the
            # writer runs as (a guest's job shell, the IMP's root script).
            return cls([], "USER_UNIT", [f"_SYSTEMD_OWNER_UID={uid}"])
        return cls(["--user"], "USER_UNIT")

    def scoped(self, terms: list[list[str]]) -> list[list[str]]:
        """OR-ed ``terms`` (each a list of AND-ed matches), each limited to ``owner``."""
        return [[*self.owner, *term] for term in terms]

    def argv(self, *match: str) -> list[str]:
        if not self.owner:
            return ["journalctl", "--no-pager", "-q", *self.selector, *match]
        owned: list[str] = [*self.owner]
        for arg in match:
            owned.append(arg)
            if arg == "+":
                owned += self.owner
        return ["journalctl", "--no-pager", "-q", *self.selector, *owned]

    def open_reader(self) -> Reader | None:
        """An in-process reader of this same journal, if libsystemd can open it."""
        directory = self.selector[1] if self.selector[:1] == ["--directory"] else None
        return open_reader(directory, user="--user" in self.selector)

    async def spawn_failure(self, unit: str, within: float = 0.5) -> tuple[int, str, str] | None:
        """(errno, strerror, step) of systemd's exec failure for ``unit``, if it logged one.

        ``step`` is systemd's name for what failed ("EXEC", "CHDIR", "USER", ...).

        journald may lag the D-Bus signal slightly, so this polls for up to
        ``within`` seconds.  None means no such record: the process ran.
        """
        argv = self.argv("-o", "json", f"MESSAGE_ID={SPAWN_FAILED}", f"{self.unit_field}={unit}")
        deadline = time.monotonic() + within
        while True:
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.DEVNULL,
                )
                out, _ = await proc.communicate()
            except OSError:
                return None  # no journalctl: cannot tell, take the exit as real
            for line in reversed(out.splitlines()):
                try:
                    rec = json.loads(line)
                    num = int(rec.get("ERRNO", errno.EIO))
                except (ValueError, TypeError):
                    continue
                message = str(rec.get("MESSAGE", ""))
                step = (
                    message.split("Failed at step ", 1)[-1].split(" ", 1)[0]
                    if ("Failed at step " in message)
                    else "EXEC"
                )
                return num, os.strerror(num), step
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(0.05)
