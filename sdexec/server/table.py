"""The process table of the RFC 42 service: its indexes, and how a process leaves them.

Theory of operation
-------------------
Processes belong to the service, not to the connection that asked for them.
:class:`ProcessTable` holds the service's configuration and every index of
its processes, kept consistent by :meth:`~ProcessTable.proc_started`,
:meth:`~ProcessTable.reap` and :meth:`~ProcessTable.proc_gone` (the calls a
:class:`~sdexec.server.process.Process` makes of its owner):

* ``by_pid``  - started processes, running or finished-but-not-reaped (Z);
* ``by_label`` - reserved at request time, so a duplicate is refused with
  EEXIST before any unit is created;
* ``by_stream`` - (sender, matchtag) of a streaming exec, the key that RFC 42
  ``write`` requests use;
* ``by_unit`` - every unit of ours, from exec to reap: a second exec that
  names one of them (``SDEXEC_NAME``) is refused with EEXIST before
  anything is created, so that a failed start never touches a unit that it
  did not create;
* ``by_key`` - (requester uid, idempotency key) of an exec.

:meth:`~ProcessTable.lookup` finds the process a request names, as the
requester may see it (sdexec.security).  The request handlers are classes
of their own modules built on this one, and
:class:`~sdexec.server.service.Service` is all of them together.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import os
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import structlog

from sdexec.base.errors import SdexecError
from sdexec.broker.request import Request, Sender
from sdexec.broker.router import Router
from sdexec.proto import rfc42
from sdexec.security import guest
from sdexec.server.followers import Followers
from sdexec.server.outputlog import FileLog, OutputLog
from sdexec.server.process import Process, ProcState
from sdexec.server.pty import (
    Holder,
    release_holder,
)
from sdexec.server.statefile import Reaped, StateDir
from sdexec.systemd.bus import SystemdBus
from sdexec.systemd.journal import Journal

log = structlog.get_logger("sdexec.service")

#: A client's service-manager handles are not the unit's: systemd sets its own.
DEFAULT_ENVIRONMENT: dict[str, str | None] = {"NOTIFY_SOCKET": None, "INVOCATION_ID": None}

#: ``SDEXEC_R_LOCAL`` (a rank's share of a job's resources) -> unit properties.
Mapper = Callable[[str], Awaitable[dict[str, str]]]


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


class ProcessTable:
    """The service's configuration, its processes and their indexes."""

    def __init__(
        self,
        router: Router,
        bus: SystemdBus,
        *,
        name: str = "sdexec",
        rank: int = 0,
        uri: str | None = None,
        journal: Journal | None = None,
        state_dir: Path | None = None,
        outputlog: OutputLog | None = None,
        line_buffer: bool = False,
        environment: Mapping[str, str | None] | None = None,
        wait_output: int = 0,
        mapper: Mapper | None = None,
    ) -> None:
        """``line_buffer``: the default of ``<stream>_LINE_BUFFER``.
        ``environment``: variables set (or, with None, removed) in every
        command's environment.  ``wait_output``: how much of a background
        process's last output a ``wait`` response carries (0: none).
        ``mapper``: turns ``SDEXEC_R_LOCAL`` into unit properties (Flux's
        ``sdexec-mapper``); without one that option is refused.
        """
        self.router = router
        self.bus = bus
        self.journal = journal if journal is not None else Journal()
        root = state_dir if state_dir is not None else Path(tempfile.mkdtemp(prefix="sdexec-"))
        self.state = StateDir(root, rank)
        self.outputlog: OutputLog = outputlog if outputlog is not None else FileLog(root / "output")
        self.name = name
        self.rank = rank
        self.line_buffer = line_buffer
        self.environment: dict[str, str | None] = dict(
            DEFAULT_ENVIRONMENT if environment is None else environment
        )
        self.wait_output = wait_output
        self.mapper = mapper
        # Options only for tests (Flux's [systemd] sdexec-debug): SDEXEC_TEST_EXPECTED_CPUS.
        self.test_options = False
        self.rank_str = str(rank)
        self.uri = uri
        self.by_pid: dict[int, Process] = {}
        # Labels are kept apart per user: the trusted uids share one namespace
        # (None), each guest has its own (sdexec.security).
        self.by_label: dict[tuple[int | None, str], Process] = {}
        self.by_stream: dict[tuple[Sender, int], Process] = {}
        self.by_unit: dict[str, Process] = {}
        self.by_key: dict[tuple[int, str], Process] = {}  # (requester uid, idempotency key)
        self.followers = Followers()  # attach and logs --follow streams (sdexec.server.followers)
        self.starting: set[Process] = set()
        # conn id -> its processes waitable only while it lasts (WAIT_SCOPE_OPTION)
        self._wait_scoped: dict[str, set[Process]] = {}
        # Called when an exec arrives: sdexec.systemd.migration.MigrationWarmer.kick.
        self.before_exec: Callable[[], None] | None = None
        self._seq = itertools.count(1)
        self._stamp = f"{int(time.time() * 1000) % (36**8):x}"
        self.shutting_down = False
        self.shutdown_reason = "server is shutting down"
        # The manager's cgroup controllers (None: unknown, nothing is checked), and
        # whether a property they cannot enforce is an error (sdexec.systemd.controllers).
        self.controllers: Callable[[], frozenset[str] | None] = lambda: None
        self.strict_properties = False
        # Why the systemd manager cannot be reached now (sdexec.server.supervisor).
        self.down: SdexecError | None = None
        # Set while some process may have a client: watch_stopped polls only then.
        self._clients_present = asyncio.Event()
        self.register_methods()

    def register_methods(self) -> None:
        """The assembled service registers its handlers with the router here."""

    # --- table maintenance (called by Process) ----------------------------------------

    def proc_started(self, proc: Process) -> None:
        self.starting.discard(proc)
        self.by_pid[proc.pid] = proc
        if proc.key is not None:  # a retry after a crash can then say it ran, and its pid
            self.state.update(proc.unit, pid=proc.pid)

    def proc_gone(self, proc: Process) -> None:
        """A process that never started (exec failure): forget it and its unit."""
        self.starting.discard(proc)
        self._forget(proc)
        self.state.remove(proc.unit)
        if proc.background and proc.waitable:  # CollectMode=inactive keeps even a failed unit
            self.router.spawn(self._release_unit(proc.unit), "release unit")
        if proc.holder is not None:
            self.router.spawn(self._release_unit(proc.holder.unit), "stop terminal holder")

    def reap(self, proc: Process) -> None:
        """The process's status has been delivered: forget it, and let its unit go.

        A background process is remembered in the state's history, so that
        ``logs`` still finds its output (and says how it ended).
        """
        if proc.reaped:
            return
        proc.reaped = True
        log.debug("reaped", **proc.log_fields())
        self._forget(proc)
        if not proc.background and proc.key is None:
            self.state.remove(proc.unit)
        else:
            # A foreground process is remembered only for its idempotency key.
            self.state.reaped(
                Reaped(
                    unit=proc.unit,
                    label=proc.label,
                    ident=proc.ident,
                    pid=proc.pid,
                    status=proc.status,
                    requester_uid=proc.requester_uid,
                    ended=time.time(),
                    key=proc.key,
                    foreground=not proc.background,
                    how=proc.lost.message if proc.lost is not None else None,
                )
            )
            self._forget_evicted()
            if proc.waitable:  # kept by RemainAfterExit / CollectMode=inactive until now
                release = self._release_unit(proc.unit, may_have_failed=proc.status != 0)
                self.router.spawn(release, "release unit")
            self._release_holder(proc)

    def _release_holder(self, proc: Process) -> None:
        """A reaped terminal's holder may go once it has sent its last output.

        Only a waitable process's holder lingers (for attaches to the
        finished process); any other exits by itself once the terminal is
        closed, and stopping it now could cut the end of its output.  The
        socket goes either way (a holder that was killed could not remove
        it; one still sending keeps its connections).
        """
        holder = proc.holder
        if holder is None:
            return
        if proc.waitable:
            self.router.spawn(self._tell_holder_to_go(holder), "release terminal holder")
        else:
            _unlink(holder.path)

    async def _tell_holder_to_go(self, holder: Holder) -> None:
        if not await release_holder(holder.path):
            log.debug("terminal holder already gone", unit=holder.unit)
        _unlink(holder.path)

    def _forget_evicted(self) -> None:
        """Stored output of processes the history no longer remembers may go."""
        while self.state.evicted:
            self.outputlog.forget(self.state.evicted.pop())

    def attach_ended(self, proc: Process, req: Request) -> None:
        key = (req.sender, req.matchtag)
        if self.by_stream.get(key) is proc:
            del self.by_stream[key]

    async def _release_unit(self, unit: str, *, may_have_failed: bool = True) -> None:
        """Stop a kept unit, and reset it if it may have failed (a failed one stays loaded).

        A unit whose command exited 0 ends inactive, which systemd collects
        on its own: one call to the manager less for every such job.
        """
        steps = (self.bus.stop, self.bus.reset_failed) if may_have_failed else (self.bus.stop,)
        for step in steps:
            try:
                await step(unit)
            except OSError as exc:
                # A unit already collected is released; anything else leaves it loaded.
                level = logging.DEBUG if exc.errno == errno.ESRCH else logging.WARNING
                log.log(level, "releasing unit", unit=unit, step=step.__name__, error=exc.strerror)

    def _forget(self, proc: Process) -> None:
        if self.by_pid.get(proc.pid) is proc:
            del self.by_pid[proc.pid]
        if self.by_unit.get(proc.unit) is proc:
            del self.by_unit[proc.unit]
        if proc.key is not None and self.by_key.get((proc.requester_uid, proc.key)) is proc:
            del self.by_key[(proc.requester_uid, proc.key)]
        if proc.label is not None:
            lkey = self._lkey(proc.requester_uid, proc.label)
            if self.by_label.get(lkey) is proc:
                del self.by_label[lkey]
        if proc.sender is not None:
            key = (proc.sender, proc.matchtag)
            if self.by_stream.get(key) is proc:
                del self.by_stream[key]
        if proc.stdin_holder is not None:
            self.attach_ended(proc, proc.stdin_holder)
        proc.release()

    def processes(self) -> list[Process]:
        """Every process the server holds, each once: starting, running, or finished and kept.

        By unit, not by pid: the pid of a finished process kept for a
        ``wait`` may be the kernel's again, given to a newer process, which
        then takes its place in ``by_pid`` (a pid names the live process).
        """
        return list(self.by_unit.values())

    # --- lookup ---------------------------------------------------------------------------

    def lookup(
        self,
        target: rfc42.Target,
        errnum: int | None = None,
        *,
        requester: Request,
        claim: bool = False,
    ) -> Process:
        """The process ``target`` names, if ``requester`` may see it.

        sdexec.security: another user's process is answered exactly as one
        that does not exist, so a guest learns nothing of it.  A guest's
        labels are its own; a trusted requester finds a label in its own
        namespace first, then the server owner's (an owner by role with a uid
        of its own, such as root in a Flux instance with allow-root-owner,
        finds the instance owner's labels), then a guest's (by pid, if
        several guests use it); a guest also finds the owner's labels of
        the processes that work for it.  ``claim``: the requester would take
        the process over (wait for it, feed it), which a guest may not do to
        a process that only works for it.
        """
        if target.label is not None:
            proc = self.by_label.get(self._lkey(requester.userid, target.label))
            if proc is None and not guest.is_guest(requester):
                proc = self.by_label.get((None, target.label)) or self._guest_label(target.label)
            elif proc is None:  # a guest: the owner's process that works for it
                proc = self.by_label.get((None, target.label))
        else:
            proc = self.by_pid.get(target.pid)
        if proc is not None and not guest.visible(requester, proc.requester_uid, proc.tenant_uid):
            proc = None
        if proc is None or proc.state is ProcState.STARTING:
            if errnum is None:
                errnum = errno.ESRCH if target.label is None else errno.ENOENT
            raise SdexecError(errnum, self._not_found(target, requester))
        if claim:
            guest.check_claim(requester, proc.requester_uid, str(target))
        return proc

    def _live(self, target: rfc42.Target, req: Request) -> Process | None:
        """The process ``target`` names if the server has it (EPERM: another user's)."""
        try:
            return self.lookup(target, errno.ENOENT, requester=req)
        except SdexecError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise

    def _trusted(self, uid: int) -> bool:
        return uid in (self.router.owner_uid, self.router.server_uid)

    def _lkey(self, uid: int, label: str) -> tuple[int | None, str]:
        return (None if self._trusted(uid) else uid, label)

    def _guest_label(self, label: str) -> Process | None:
        found = [p for (uid, name), p in self.by_label.items() if uid is not None and name == label]
        if len(found) > 1:
            raise SdexecError(
                errno.EINVAL, f"label {label} is used by several users; name the process by pid"
            )
        return found[0] if found else None

    def _not_found(self, target: rfc42.Target, requester: Request) -> str:
        """Why there is no process ``target``: gone (and how it ended), or never known."""
        gone = self.state.find_reaped(
            label=target.label, pid=target.pid, visible=lambda uid: guest.visible(requester, uid)
        )
        # The words of Flux's servers, which Flux's tools and users match on:
        # flux-core's sdexec says "not found", its rexec "does not belong ...".
        what = f"pid {target.pid}" if target.label is None else f"label {target.label}"
        text = f"{what} not found: it does not belong to any subprocess"
        if gone is None:
            return text
        how = "" if gone.status is None else f" ({rfc42.describe_status(gone.status)})"
        return f"{text}; it has ended{how} and was reaped; its output: sdexec logs {target}"
