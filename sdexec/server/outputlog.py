"""Where a background process's output lives: the journal, or an append-only file.

Theory of operation
-------------------
A background process must not depend on the server: if its stdout were a
pipe to the server and the server died, it would get SIGPIPE or block.  So
its output never passes through the server.

:class:`JournalLog` (when the manager has a journald): the server connects
two streams to journald (:func:`sdexec.systemd.journal.open_stream`) and
they become the unit's stdout and stderr, so the command runs as it is,
with nothing in front of it, and its unit shows what the user ran.  The
identifier (``SYSLOG_IDENTIFIER``) is the label, the stream header names
the unit, and the two streams are told apart by priority: stdout is
``info`` (6), stderr ``err`` (3), with level prefixes off so a line cannot
pose as the other stream.  Lines come back exactly: journald marks a line
that did not end in a newline with ``_LINE_BREAK``, and keeps non-UTF-8
lines as bytes.  (This replaced running the command behind ``systemd-cat``,
whose streams named no unit: lines of a child that had exited before
journald read them belonged to no unit and were not found again.)

:class:`FileLog` (no journald): ``StandardOutput=append:`` and
``StandardError=append:`` files per unit in the state directory.

Both replay from the start (or the last N lines) and then follow live, each
stream in order.  Following ends once the process has finished and the log
has been quiet for a moment (journald may still be writing the last lines
when systemd reports the exit).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog
from dbus_fast import Variant

from sdexec.base.errors import SdexecError
from sdexec.proto import b64
from sdexec.systemd.journal import STDOUT_SOCKET, Journal, StreamsRead, open_stream
from sdexec.systemd.sdjournal import Entry, Reader

log = structlog.get_logger("sdexec.outputlog")

Sink = Callable[[str, bytes, "float | None"], None]  # (stream, data, when written, if known)
Drain = Callable[[], Awaitable[None]]  # waits while the reader is behind

PRIORITY_STDOUT = 6
PRIORITY_STDERR = 3
QUIET_AFTER_EXIT = 0.25
READ_APART = 0.05  # between the reads that must agree after a barrier (JournalLog.last)
POLL = 0.05
EXIT_GRACE = 5.0  # for a journalctl that has closed its output to exit by itself


@dataclass(frozen=True)
class LogRequest:
    """Whose stored output to read, how much, and where it goes.

    ``tail``: only the last lines (None: all).  ``follow``: keep reading until
    ``ended()`` and the log is quiet.  ``pid`` (the process's) also finds lines
    journald could not attribute to the unit (see :meth:`JournalLog.argv`).
    ``drain`` is awaited after each delivery: that is how a slow reader holds
    the replay back instead of filling the server's memory.  ``gone()``: the
    reader has left, so reading stops at once, however much output is still
    coming (a follower of a chatty process never sees the log quiet).
    """

    unit: str
    ident: str
    sink: Sink
    ended: Callable[[], bool]
    tail: int | None = None
    follow: bool = True
    drain: Drain | None = None
    pid: int | None = None
    gone: Callable[[], bool] = lambda: False
    since: str | None = None  # only what was written since then (journalctl --since syntax)


class Barrier(Protocol):
    """Says when everything a finished unit wrote is in its log, so one plain read finds it."""

    async def wait(self) -> bool:
        """True once it is (then the barrier is spent); False if that cannot be told."""
        ...

    def close(self) -> None:
        """Give up the barrier's resources (its fds) without waiting."""
        ...


class InFile:
    """The barrier of file output: what a process wrote before it ended is in the file."""

    async def wait(self) -> bool:
        return True

    def close(self) -> None:
        pass


@dataclass
class Prepared:
    """How a background unit's output is kept: properties, and fds for stdout/stderr.

    The fds (when not None) are the caller's, to pass to the unit and close.
    ``barrier`` (when asked for) is the caller's too, to wait on once the
    unit has ended, or close.
    """

    properties: list[tuple[str, Variant]]
    stdout_fd: int | None = None
    stderr_fd: int | None = None
    barrier: Barrier | None = None

    def fds(self) -> list[int]:
        return [fd for fd in (self.stdout_fd, self.stderr_fd) if fd is not None]


class Tail:
    """Keeps the newest output, at most ``limit`` bytes (always the newest piece)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.kept: list[tuple[str, bytes]] = []
        self.size = 0

    def sink(self, stream: str, data: bytes, _when: float | None = None) -> None:
        self.kept.append((stream, data))
        self.size += len(data)
        while self.size > self.limit and len(self.kept) > 1:
            self.size -= len(self.kept.pop(0)[1])


class OutputLog(Protocol):
    """What the service needs from an output store."""

    def prepare(self, unit: str, ident: str, barrier: bool = False) -> Prepared:
        """Where a background unit's output goes (EIO/EAGAIN if it cannot go there now);
        with ``barrier``, also a :class:`Barrier` for when it has ended."""
        ...

    async def follow(self, req: LogRequest) -> None:
        """Replay the output, then (``req.follow``) follow until ``req.ended()``
        and the log is quiet."""
        ...

    async def last(
        self, unit: str, ident: str, pid: int | None, limit: int, settled: bool
    ) -> list[tuple[str, bytes]]:
        """The newest ``limit`` bytes of a finished process's output, as (stream, data).

        ``settled``: its barrier said everything is in (one read will do);
        otherwise the log is followed until it has been quiet for a moment.
        """
        ...

    def forget(self, unit: str) -> None:
        """The process has been reaped: its stored output may go."""
        ...


def _message_bytes(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    if isinstance(value, list):
        return bytes(value)
    return b""


class JournalLog:
    """Background output in the journal: two streams to journald per unit."""

    def __init__(
        self, journal: Journal, stdout_socket: Callable[[], str] = lambda: STDOUT_SOCKET
    ) -> None:
        self.journal = journal
        self.stdout_socket = stdout_socket
        self.unit_field = (
            "_SYSTEMD_UNIT" if journal.unit_field == "UNIT" else ("_SYSTEMD_USER_UNIT")
        )
        self._reader: Reader | None = None
        self._reader_tried = False

    def prepare(self, unit: str, ident: str, barrier: bool = False) -> Prepared:
        path = self.stdout_socket()
        out = open_stream(path, ident, unit, PRIORITY_STDOUT)
        try:
            err = open_stream(path, ident, unit, PRIORITY_STDERR)
        except BaseException:
            os.close(out)
            raise
        props = [("SyslogIdentifier", Variant("s", ident))]
        return Prepared(props, out, err, StreamsRead([out, err]) if barrier else None)

    def argv(
        self,
        unit: str,
        ident: str,
        *,
        tail: int | None,
        follow: bool,
        after: str | None = None,
        pid: int | None = None,
        since: str | None = None,
    ) -> list[str]:
        # __REALTIME_TIMESTAMP and __CURSOR come with every record.
        args = ["-o", "json", "--all", "--output-fields=MESSAGE,PRIORITY,_LINE_BREAK"]
        if after is not None:
            args.append(f"--after-cursor={after}")
        else:
            args += ["--lines", str(tail)] if tail is not None else ["--lines=all"]
            if since is not None:
                args.append(f"--since={since}")
        if follow:
            args.append("--follow")
        terms = self.terms(unit, ident, pid)
        match = [arg for i, term in enumerate(terms) for arg in (["+"] if i else []) + term]
        return self.journal.argv(*args, *match)

    def terms(self, unit: str, ident: str, pid: int | None) -> list[list[str]]:
        """A unit's output lines as OR-ed terms of AND-ed matches (journalctl's ``+``)."""
        common = [f"SYSLOG_IDENTIFIER={ident}", "_TRANSPORT=stdout"]
        # journald takes each line's unit from /proc/PID/cgroup of the process
        # that wrote it.  When that process has already exited, it takes the
        # unit our stream header names, as _SYSTEMD_UNIT (even for a user
        # unit); a server that is not root cannot name it, and then the main
        # process's pid (from the socket's credentials) still finds its lines.
        fields = dict.fromkeys([self.unit_field, "_SYSTEMD_UNIT"])
        terms = [[f"{field}={unit}", *common] for field in fields]
        if pid is not None:
            terms.append([f"_PID={pid}", *common])
        return terms

    async def last(
        self, unit: str, ident: str, pid: int | None, limit: int, settled: bool
    ) -> list[tuple[str, bytes]]:
        tail = Tail(limit)
        reader = self._open_reader() if settled else None
        if reader is not None:
            try:
                entries = await self._settled_read(reader, unit, ident, pid, limit)
                for e in entries:
                    stream = "stderr" if e.priority == PRIORITY_STDERR else "stdout"
                    tail.sink(stream, e.message if e.line_break else e.message + b"\n")
                return tail.kept
            except OSError as exc:
                log.warning("journal reader failed, using journalctl", error=str(exc))
                reader.close()
                self._reader = None
                tail = Tail(limit)
        await self.follow(
            LogRequest(unit, ident, tail.sink, lambda: True, follow=not settled, pid=pid)
        )
        return tail.kept

    async def _settled_read(
        self, reader: Reader, unit: str, ident: str, pid: int | None, limit: int
    ) -> list[Entry]:
        """Read until two reads READ_APART seconds apart agree.

        The barrier says journald has taken every byte from the streams; it
        writes the entries right after, but a loaded machine can hold it back
        between the two, so a read at once may still miss the last lines
        (seen: 9 of 20000 under load).  The second read costs microseconds.
        """
        terms = self.journal.scoped(self.terms(unit, ident, pid))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + QUIET_AFTER_EXIT * 4
        entries = reader.last(terms, limit)
        while True:
            await asyncio.sleep(READ_APART)
            again = reader.last(terms, limit)
            if again == entries or loop.time() >= deadline:
                return again
            entries = again

    def _open_reader(self) -> Reader | None:
        if not self._reader_tried:
            self._reader_tried = True
            self._reader = self.journal.open_reader()
        return self._reader

    async def follow(self, req: LogRequest) -> None:
        # journalctl --follow learns of new entries through journald's change
        # notifications, which journald coalesces (up to 250 ms).  So once the
        # process has ended and the stream has been quiet, one last plain read
        # after the last cursor seen picks up anything written but not yet
        # announced.
        cursor = await self._run(
            self.argv(
                req.unit, req.ident, tail=req.tail, follow=req.follow, pid=req.pid, since=req.since
            ),
            req.sink,
            req.ended if req.follow else None,
            req.drain,
            None,
            req.gone,
        )
        if req.follow and not req.gone():
            await self._run(
                self.argv(
                    req.unit,
                    req.ident,
                    tail=None if cursor else req.tail,
                    follow=False,
                    after=cursor,
                    pid=req.pid,
                    since=req.since,
                ),
                req.sink,
                None,
                req.drain,
                cursor,
                req.gone,
            )

    async def _run(
        self,
        argv: list[str],
        sink: Sink,
        ended: Callable[[], bool] | None,
        drain: Drain | None,
        cursor: str | None,
        gone: Callable[[], bool] = lambda: False,
    ) -> str | None:
        """Deliver journalctl's records until it exits (or, following, until the end)."""
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=1 << 24,
        )
        assert proc.stdout is not None
        at_eof = False
        delivered = False
        try:
            quiet_since: float | None = None
            loop = asyncio.get_running_loop()
            while True:
                try:
                    line = await asyncio.wait_for(proc.stdout.readline(), POLL)
                except TimeoutError:
                    if gone():
                        return cursor
                    if ended is not None and ended():
                        now = loop.time()
                        quiet_since = quiet_since or now
                        if now - quiet_since >= QUIET_AFTER_EXIT:
                            return cursor
                    continue
                if not line:
                    at_eof = True
                    return cursor
                quiet_since = None
                delivered = True
                cursor = self._deliver(line, sink) or cursor
                if drain is not None:
                    await drain()
                if gone():
                    return cursor
        finally:
            await _end(proc, exiting=at_eof)
            complaint = (
                (await proc.stderr.read()).decode(errors="replace").strip()
                if (proc.stderr is not None)
                else ""
            )
            if at_eof and proc.returncode and not delivered and complaint:
                # A --since journalctl cannot parse, say: the reader's error, once.
                first = complaint.splitlines()[0]
                num = errno.EINVAL if "parse" in first.lower() else errno.EIO
                raise SdexecError(num, f"journalctl: {first}")

    @staticmethod
    def _deliver(line: bytes, sink: Sink) -> str | None:
        try:
            rec = json.loads(line)
        except ValueError:
            return None
        data = _message_bytes(rec.get("MESSAGE"))
        if not rec.get("_LINE_BREAK"):
            data += b"\n"
        stream = "stderr" if str(rec.get("PRIORITY")) == str(PRIORITY_STDERR) else "stdout"
        try:
            when: float | None = int(rec["__REALTIME_TIMESTAMP"]) / 1e6
        except (KeyError, TypeError, ValueError):
            when = None
        sink(stream, data, when)
        cursor = rec.get("__CURSOR")
        return cursor if isinstance(cursor, str) else None

    def forget(self, unit: str) -> None:
        pass  # the journal keeps it, under its own retention policy


async def _end(proc: asyncio.subprocess.Process, *, exiting: bool) -> None:
    """Stop following: let a journalctl that closed its output exit, kill one that did not.

    Never kill one that is exiting by itself: asyncio's ``kill()`` polls
    first (``Popen.send_signal`` calls ``waitpid(WNOHANG)``), which can reap
    the process under asyncio's own child watcher; the watcher then logs
    "Unknown child process pid N, will report returncode 255".
    """
    if exiting:
        try:
            await asyncio.wait_for(proc.wait(), EXIT_GRACE)
            return
        except TimeoutError:
            pass
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    await proc.wait()


class FileLog:
    """Background output in append-only files: ``<dir>/<unit>.stdout`` / ``.stderr``."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def path(self, unit: str, stream: str) -> Path:
        return self.dir / f"{unit}.{stream}"

    def prepare(self, unit: str, ident: str, barrier: bool = False) -> Prepared:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return Prepared(
            [
                ("StandardOutputFileToAppend", Variant("s", str(self.path(unit, "stdout")))),
                ("StandardErrorFileToAppend", Variant("s", str(self.path(unit, "stderr")))),
            ],
            barrier=InFile() if barrier else None,
        )

    async def follow(self, req: LogRequest) -> None:
        if req.since is not None:
            raise SdexecError(
                errno.EINVAL, "--since needs the journal (this server keeps output in files)"
            )
        paths = {s: self.path(req.unit, s) for s in ("stdout", "stderr")}
        offsets = {s: self._start(path, req.tail) for s, path in paths.items()}
        quiet = 0.0
        while not req.gone():
            got = False
            for stream, off in offsets.items():
                data = self._read(paths[stream], off)
                if data:
                    offsets[stream] = off + len(data)
                    req.sink(stream, data, None)
                    got = True
                    if req.drain is not None:
                        await req.drain()
            if got:
                quiet = 0.0
                continue
            if not req.follow:
                return
            if req.ended():
                quiet += POLL
                if quiet >= QUIET_AFTER_EXIT:
                    return
            await asyncio.sleep(POLL)

    async def last(
        self, unit: str, ident: str, pid: int | None, limit: int, settled: bool
    ) -> list[tuple[str, bytes]]:
        tail = Tail(limit)
        await self.follow(LogRequest(unit, ident, tail.sink, lambda: True, follow=not settled))
        return tail.kept

    @staticmethod
    def _read(path: Path, offset: int) -> bytes:
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                return f.read(1 << 20)
        except FileNotFoundError:
            return b""

    @staticmethod
    def _start(path: Path, tail: int | None) -> int:
        if tail is None:
            return 0
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return 0
        cut = len(data)
        for _ in range(tail + (1 if data.endswith(b"\n") else 0)):
            cut = data.rfind(b"\n", 0, cut)
            if cut < 0:
                return 0
        return cut + 1

    def forget(self, unit: str) -> None:
        for s in ("stdout", "stderr"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path(unit, s))


def choose(
    journal: Journal,
    journal_ok: bool,
    state_dir: Path,
    stdout_socket: Callable[[], str] = lambda: STDOUT_SOCKET,
) -> OutputLog:
    """The journal when the manager has a journald (``stdout_socket`` gives where), else files."""
    if journal_ok:
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK(os.stat(stdout_socket()).st_mode):
                return JournalLog(journal, stdout_socket)
    return FileLog(state_dir / "output")


def encode_record(stream: str, data: bytes) -> dict[str, Any]:
    """A log record for ``sdexec logs --json``."""
    try:
        return {"stream": stream, "data": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"stream": stream, "data": b64.encode(data).decode(), "encoding": "base64"}
