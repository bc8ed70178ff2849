"""A new unit's standard I/O: pipes, a relayed terminal, or a held one.

Made before the unit is started, passed to it as file descriptors
(``StandardInputFileDescriptor``...).  A streaming exec's stdio are pipes to
the server (:mod:`sdexec.server.pipes`), a background one's output goes
where :mod:`sdexec.server.outputlog` prepared (the journal or a file), and
``SDEXEC_PTY`` makes a pseudo-terminal: relayed by the server for a
streaming exec, kept by a holder unit of its own for a background one
(:mod:`sdexec.server.pty`, :mod:`sdexec.unit.pty_holder`).  Channels and
message channels come last (:mod:`sdexec.server.channels`).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

from dbus_fast import Variant

from sdexec.proto.rfc42 import ExecFlag, LocalFlag
from sdexec.server.channels import setup_aux, terminal_via_helper
from sdexec.server.outputlog import Prepared
from sdexec.server.pipes import InputPipe, OutputPipe
from sdexec.server.process import Process
from sdexec.server.pty import (
    Holder,
    PtyInput,
    PtyOutput,
    holder_listener,
    holder_unit,
    open_pty,
)
from sdexec.server.table import ProcessTable
from sdexec.systemd import properties

#: A background terminal's holder, to start before its command: unit, properties, fds.
HolderStart = tuple[str, list[list[object]], list[int]]


@dataclass(slots=True)
class UnitIO:
    """What a unit is started with: its properties, the fds to pass and to close."""

    props: list[list[object]]
    fds: list[int]
    theirs: list[int]  # the unit's ends: closed once StartTransientUnit has answered
    holder_start: HolderStart | None = None


class UnitStdio(ProcessTable):
    """Creates the stdio of a new unit."""

    def _open_io(
        self,
        proc: Process,
        spec: properties.UnitSpec,
        streaming: bool,
        prepared: Prepared | None,
    ) -> UnitIO:
        """The unit's stdio (or terminal) and channels; its properties, complete.

        ``prepared``: a background unit's output, whose fds are passed (and
        closed, whatever happens).  On an error, whatever was made is undone.
        """
        winsize = proc.options.winsize
        holder_start: HolderStart | None = None
        try:
            if winsize is not None and proc.background:
                fds, theirs, holder_start = self._make_held_terminal(proc, spec, winsize)
            elif winsize is not None:
                fds, theirs = self._make_terminal(proc, spec, winsize)
            else:
                fds, theirs = self._make_stdio(proc, spec, streaming, prepared)
        except BaseException:
            for fd in prepared.fds() if prepared is not None else ():
                os.close(fd)
            proc.release()
            raise
        try:
            fds, proc.aux = setup_aux(  # channels, msgchans
                proc, spec, fds, theirs, router=self.router, server_uri=self.uri
            )
            props = spec.properties()
        except BaseException:
            for fd in theirs:
                os.close(fd)
            proc.release()
            self._discard_holder(proc, holder_start)
            raise
        return UnitIO(props, fds, theirs, holder_start)

    def _make_stdio(
        self,
        proc: Process,
        spec: properties.UnitSpec,
        streaming: bool,
        prepared: Prepared | None,
    ) -> tuple[list[int], list[int]]:
        """Create the unit's stdio; returns (fds to pass, the unit's ends to close).

        ``prepared``: a background unit's output (see :attr:`outputlog`),
        whose fds are passed and closed here.
        """
        if proc.local_flags & LocalFlag.STDIO_FALLTHROUGH:
            spec.stdin_fd, spec.stdout_fd, spec.stderr_fd = 0, 1, 2
            return [0, 1, 2], []
        fds: list[int] = []
        if streaming:
            r, w = os.pipe2(os.O_CLOEXEC)
            proc.stdin = InputPipe(w, proc.credit, size=proc.options.stdin_bufsize)
        else:
            r = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        spec.stdin_fd = len(fds)
        fds.append(r)
        if not streaming:
            if prepared is not None and prepared.stdout_fd is not None:
                spec.stdout_fd = len(fds)
                fds.append(prepared.stdout_fd)
            if prepared is not None and prepared.stderr_fd is not None:
                spec.stderr_fd = len(fds)
                fds.append(prepared.stderr_fd)
            return fds, list(fds)
        for stream, flag in (("stdout", ExecFlag.STDOUT), ("stderr", ExecFlag.STDERR)):
            if not proc.flags & flag:
                continue  # not forwarded: systemd's default (the journal)
            r, w = os.pipe2(os.O_CLOEXEC)
            lines = proc.options.line_bufsize(stream, self.line_buffer)
            # Read from now on, the output keeps the pieces it was written in.
            proc.outputs[stream] = OutputPipe(stream, r, proc.output, line_buffer=lines, hold=True)
            if stream == "stdout":
                spec.stdout_fd = len(fds)
            else:
                spec.stderr_fd = len(fds)
            fds.append(w)
        return fds, list(fds)

    def _make_terminal(
        self, proc: Process, spec: properties.UnitSpec, winsize: tuple[int, int]
    ) -> tuple[list[int], list[int]]:
        """A pty as the unit's stdio (see :mod:`sdexec.server.pty`); same return as _make_stdio."""
        term = open_pty(*winsize)
        try:
            typed = os.dup(term.master)
        except BaseException:
            os.close(term.master)
            term.close_slave()
            raise
        proc.stdin = proc.pty = PtyInput(typed, proc.credit, size=proc.options.stdin_bufsize)
        proc.outputs["stdout"] = PtyOutput("stdout", term.master, proc.output)
        spec.stdin_fd = spec.stdout_fd = spec.stderr_fd = 0
        spec.extra.append(("TTYPath", Variant("s", term.path)))
        return [term.slave], [term.slave]

    def _make_held_terminal(
        self, proc: Process, spec: properties.UnitSpec, winsize: tuple[int, int]
    ) -> tuple[list[int], list[int], HolderStart]:
        """A background terminal: the slave for the unit, the master for a holder.

        The holder is a unit of its own (:mod:`sdexec.unit.pty_holder`),
        started before the command's; returns the command's fds as
        :meth:`_make_stdio` does, and the holder's unit, properties and fds.
        """
        term = open_pty(*winsize)
        label = f"{properties.unit_name_fragment(proc.label)}-" if proc.label else ""
        hunit = f"sdexec-{self.rank}-{label}tty-{self._stamp}-{next(self._seq)}.service"
        path = str(self.state.root / "tty" / f"{hunit.removesuffix('.service')}.sock")
        holder = Holder(hunit, path)
        try:
            listener = holder_listener(path)
            try:
                hprops, hfds = holder_unit(
                    term.master,
                    listener,
                    holder,
                    linger=proc.waitable,
                    description=f"sdexec: the terminal of {proc.label or proc.unit}",
                )
            finally:
                listener.close()
        except BaseException:
            term.close_slave()
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        finally:
            os.close(term.master)  # the holder has its own, in the control message
        proc.holder = holder
        try:
            fds, theirs = terminal_via_helper(spec, term.slave)
        except BaseException:
            term.close_slave()
            for fd in hfds:
                os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        return fds, theirs, (hunit, hprops, hfds)

    def _discard_holder(self, proc: Process, holder_start: HolderStart | None) -> None:
        """An exec that failed before its units were started: the holder it prepared."""
        holder = proc.holder
        if holder is None or holder_start is None:
            return
        for fd in holder_start[2]:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(holder.path)

    def _holder_failed(self, proc: Process, hunit: str) -> None:
        """The holder of a background terminal could not be started: nor can its command."""
        if proc.holder is not None:
            with contextlib.suppress(OSError):
                os.unlink(proc.holder.path)
        self.router.spawn(self._release_unit(hunit), "stop terminal holder")  # a lost reply?
