"""``attach`` and ``logs``: streams on a background process, its output, its terminal.

An attach is RFC 42's, with sdexec's extensions (followers, stdin, a
background terminal's writer and window size: see :meth:`Attaching.attach`);
``logs`` streams what a background process wrote, kept in the journal or a
file (:mod:`sdexec.server.outputlog`), or the screen of its terminal.  Both
are followers when they follow (:mod:`sdexec.server.followers`).
"""

from __future__ import annotations

import errno
from collections.abc import Coroutine
from typing import Any

from sdexec.base.errors import SdexecError
from sdexec.broker.request import Request
from sdexec.proto import pty, rfc42
from sdexec.security import guest
from sdexec.server.outputlog import LogRequest
from sdexec.server.process import ProcState, log_output
from sdexec.server.pty import (
    holder_text,
)
from sdexec.server.table import ProcessTable


def _flag(payload: dict[str, Any], key: str, default: bool) -> bool:
    """An optional boolean member of a request (EPROTO if it is something else)."""
    value = payload.get(key, default)
    if not isinstance(value, bool):
        raise SdexecError(errno.EPROTO, f"'{key}' must be a boolean")
    return value


def _winsize_member(payload: dict[str, Any]) -> tuple[int, int] | None:
    """An attach's optional ``winsize`` (``COLSxROWS``): EPROTO if not a string."""
    text = payload.get("winsize")
    if text is None:
        return None
    if not isinstance(text, str):
        raise SdexecError(errno.EPROTO, "'winsize' must be a string COLSxROWS")
    return pty.parse_winsize(text)


class Attaching(ProcessTable):
    """The ``attach`` and ``logs`` handlers."""

    def attach(self, req: Request) -> Coroutine[Any, Any, None] | None:
        """RFC 42 ``attach``: one client at a time, forwarding the streams its flags name.

        The attach is exclusive: EBUSY while another client is attached or a
        ``wait`` is pending, and a waitable process whose ``finished`` it
        received is reaped.  Extensions of the request (none of which a plain
        RFC 42 client sends): ``follow`` (true: a *follower*, any number of
        them beside the attached client and a waiter; its end reaps nothing,
        so ``wait`` still has the status; ``sdexec attach`` is one), ``stdin``
        (true: this stream's ``write`` requests go to the process; one stream
        at a time, EBUSY otherwise).  For a background terminal (see
        :mod:`sdexec.proto.pty`): ``terminal`` (true: become its writer,
        taking the input over from the stream that held it) and ``winsize``
        (``COLSxROWS``: the writer's window size, set before the screen is
        drawn); both change nothing for any other process.  ``reap: false``
        is the older spelling of ``follow: true``.
        """
        payload = req.payload()
        ar = rfc42.parse_attach(payload)
        target = ar.target
        stdin = _flag(payload, "stdin", False)
        follow = _flag(payload, "follow", False) or not _flag(payload, "reap", True)
        terminal = _flag(payload, pty.ATTACH_TERMINAL, False)
        winsize = _winsize_member(payload)
        proc = self.lookup(target, errno.ENOENT, requester=req, claim=not follow)
        if not proc.background:
            raise SdexecError(errno.EBUSY, f"process {target} is not a background process")
        if proc.lost is not None:
            raise SdexecError(proc.lost.errno or errno.EHOSTDOWN, proc.lost.message)
        if not follow:
            if proc.attached_client is not None:
                raise SdexecError(errno.EBUSY, f"process {target} already has a client attached")
            if proc.waiter is not None:
                raise SdexecError(errno.EBUSY, f"process {target} is being waited on")
        takeover = terminal and proc.holder is not None
        stdin = stdin or takeover
        if stdin:
            guest.check_claim(req, proc.requester_uid, str(target))
        if stdin and proc.stdin_holder is not None:
            if not takeover:
                raise SdexecError(
                    errno.EBUSY, f"process {target}: another attached client holds its input"
                )
            proc.take_over(req, str(target))
        if stdin:
            self.by_stream[(req.sender, req.matchtag)] = proc
        self._clients_present.set()
        self.followers.check(req)
        return self.followers.run(
            req,
            proc.attach(
                req, stdin=stdin, exclusive=not follow, streams=ar.streams(), winsize=winsize
            ),
        )

    async def logs(self, req: Request) -> None:
        """Stream a background process's stored output (``sdexec logs``).

        A process that is gone (reaped, or never waitable) is found in the
        state's history; its output is read from where it was kept, as long
        as the journal (or the output file) still has it.
        """
        payload = req.payload()
        target = rfc42.parse_target(payload, "logs")
        tail = payload.get("tail")
        if tail is not None and (not isinstance(tail, int) or isinstance(tail, bool) or tail < 0):
            raise SdexecError(errno.EINVAL, "tail must be a non-negative integer")
        follow = _flag(payload, "follow", False)
        timestamps = _flag(payload, "timestamps", False)
        since = payload.get("since")
        if since is not None and (
            not isinstance(since, str) or not 0 < len(since) <= 100 or not since.isprintable()
        ):
            raise SdexecError(errno.EINVAL, "since must be a time as journalctl --since takes it")
        proc = self._live(target, req)
        if proc is not None:
            if not proc.background:
                raise SdexecError(errno.EINVAL, f"process {target} is not a background process")
            if proc.holder is not None:  # a terminal: what its screen shows, as text
                text = await holder_text(proc.holder.path)
                if text:
                    req.respond(
                        rfc42.output(proc.pid, rfc42.io_object("stdout", self.rank_str, text))
                    )
                req.end()
                return
            reading = proc.send_log(
                req,
                tail=tail,
                follow=follow,
                ended=lambda: proc.state is ProcState.EXITED or not req.connected,
                since=since,
                timestamps=timestamps,
            )
            if follow:
                self.followers.check(req)
                await self.followers.run(req, reading)
            else:
                await reading
            req.end()
            return
        gone = self.state.find_reaped(
            label=target.label, pid=target.pid, visible=lambda uid: guest.visible(req, uid)
        )
        if gone is None:
            raise SdexecError(errno.ENOENT, self._not_found(target, req))

        def sink(stream: str, data: bytes, when: float | None) -> None:
            req.respond(log_output(gone.pid, stream, self.rank_str, data, when, timestamps))

        await self.outputlog.follow(
            LogRequest(
                gone.unit,
                gone.ident,
                sink,
                ended=lambda: True,
                tail=tail,
                follow=False,
                drain=req.conn.wait_writable,
                pid=gone.pid or None,
                since=since,
            )
        )
        req.end()
