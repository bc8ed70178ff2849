"""Units found again: after a server restart, and after the systemd manager came back.

Every unit is recorded in the state directory before it is started,
foreground ones too (:mod:`sdexec.server.statefile`), so a restarted server
finds all of its units again, whatever their names (:meth:`Adoption.adopt`).
When the systemd manager, or the bus to it, goes away and comes back
(:mod:`sdexec.server.supervisor`), :meth:`Adoption.manager_lost`,
:meth:`Adoption.manager_back` and :meth:`Adoption.resync` say what became of
each process.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Mapping, Sequence

import structlog

from sdexec.base.errors import SdexecError
from sdexec.proto import rfc42
from sdexec.proto.rfc42 import ExecFlag, LocalFlag
from sdexec.server.process import Process, ProcState
from sdexec.server.pty import (
    Holder,
)
from sdexec.server.statefile import ProcRecord, Reaped
from sdexec.server.table import ProcessTable

log = structlog.get_logger("sdexec.service")


class Adoption(ProcessTable):
    """Re-adoption of units, and the systemd manager's losses."""

    async def adopt(
        self, *, killed: Mapping[str, Sequence[int]] | None = None, manager_died: bool = False
    ) -> None:
        """Take back the units a previous server started.

        Units are systemd's, not ours: each unit has a record in the state
        directory (see :mod:`sdexec.server.statefile`), saved before it was
        started, so every unit is found again whatever its name.  A
        background unit that is still loaded is watched again and its state
        read; one that is gone ended while no server was running and, not
        being waitable, needs nothing more.  A waitable one was kept by
        RemainAfterExit/CollectMode=inactive, so its status is read now and
        delivered to the next ``wait``.  A foreground unit's client died with
        the old server: the unit is stopped.

        The systemd manager may have died while no server ran
        (``manager_died``; ``killed``: the units whose processes were still
        running then, and were killed when this server started a new
        manager).  A waitable process's outcome is then that, said by the
        next ``wait``; a record may also carry an outcome already (the
        status, or why it was lost), saved when the unit went away while a
        server ran.
        """
        killed = killed or {}
        for rec in self.state.load_all():
            if rec.foreground:
                await self._stop_orphan(rec.unit)
                if rec.key is not None:  # a retry with its key learns what became of it
                    self.state.reaped(
                        Reaped(
                            unit=rec.unit,
                            label=rec.label,
                            ident=rec.ident,
                            pid=rec.pid,
                            status=None,
                            requester_uid=rec.requester_uid,
                            ended=time.time(),
                            key=rec.key,
                            foreground=True,
                            how="stopped after a server restart: its client was gone",
                        )
                    )
                continue
            proc = self._from_record(rec)
            if rec.status is not None or rec.lost is not None:
                self._adopt_outcome(proc, rec.status, rec.lost)
                continue
            self.bus.watch(rec.unit, proc)  # before reading: no transition is missed
            try:
                props = await self.bus.properties(rec.unit)
            except OSError:
                props = {}
            if props.get("LoadState") != "loaded":
                self.bus.unwatch(rec.unit, proc)
                why = self._gone_reason(rec.unit, killed, manager_died)
                log.log(
                    30 if why else 20,
                    "re-adoption: unit gone",
                    unit=rec.unit,
                    label=rec.label,
                    waitable=proc.waitable,
                    reason=why,
                    killed_pids=killed.get(rec.unit),
                )
                if why and proc.waitable:
                    pids = killed.get(rec.unit) or [rec.pid]
                    self.state.update(rec.unit, lost=why, pid=rec.pid or pids[0])
                    proc.pid = rec.pid or pids[0]
                    self._adopt_outcome(proc, None, why)
                else:
                    # It ended while no server ran; its output is still where it was.
                    self._release_holder(proc)
                    self.state.reaped(
                        Reaped(
                            rec.unit,
                            rec.label,
                            rec.ident,
                            rec.pid or (killed.get(rec.unit) or [0])[0],
                            rec.status,
                            rec.requester_uid,
                            time.time(),
                            key=rec.key,
                            how=why
                            or (
                                "its server restarted before it was seen to start; it may have run"
                                if rec.key is not None and not rec.pid
                                else None
                            ),
                        )
                    )
                    self._forget(proc)
                continue
            self.by_unit[rec.unit] = proc
            if rec.label is not None:
                self.by_label[self._lkey(rec.requester_uid, rec.label)] = proc
            # When it started and ended, as systemd saw it (microseconds since the epoch).
            proc.started_at = int(props.get("ExecMainStartTimestamp") or 0) / 1e6
            proc.ended_at = int(props.get("ExecMainExitTimestamp") or 0) / 1e6
            events = proc.tracker.adopt(props)
            for ev in events:
                proc._event(ev)
            how = {} if proc.status is None else rfc42.status_fields(proc.status)
            log.info("re-adopted", state=proc.state.value, **how, **proc.log_fields())
        self._forget_evicted()

    @staticmethod
    def _gone_reason(
        unit: str, killed: Mapping[str, Sequence[int]], manager_died: bool
    ) -> str | None:
        """Why a recorded unit is gone, when that is a loss (None: it simply ended)."""
        if unit in killed:
            return (
                "the systemd manager had died while the process ran; the process was "
                "killed when the server started a new manager"
            )
        if manager_died:
            return "the systemd manager had died; the unit and its status went with it"
        return None

    def _from_record(self, rec: ProcRecord) -> Process:
        cmd = rfc42.Command(cmdline=rec.cmdline, env={}, opts={}, channels=[], label=rec.label)
        proc = Process(self, rec.unit, cmd, ExecFlag(rec.flags), LocalFlag(rec.local_flags), None)
        proc.requester_uid = rec.requester_uid
        proc.ident = rec.ident
        proc.pid = rec.pid
        if rec.holder_unit and rec.holder_socket:
            proc.holder = Holder(rec.holder_unit, rec.holder_socket)
        # Its connection went with the old server: owed to nobody now.
        proc.wait_scoped = proc.reap_when_done = rec.wait_scoped
        if rec.key is not None:
            proc.key = rec.key
            self.by_key[(rec.requester_uid, rec.key)] = proc
        return proc

    def _adopt_outcome(self, proc: Process, status: int | None, lost: str | None) -> None:
        """A waitable process whose unit is gone, and whose record holds its outcome."""
        proc.state = ProcState.EXITED
        proc.status = status
        if lost is not None:
            proc.lost = SdexecError(errno.EHOSTDOWN, lost)
        self.by_unit[proc.unit] = proc
        if proc.pid and proc.pid not in self.by_pid:
            self.by_pid[proc.pid] = proc
        if proc.label is not None:
            self.by_label[self._lkey(proc.requester_uid, proc.label)] = proc
        log.info("re-adopted", state="Z", status=status, lost=lost, **proc.log_fields())
        if proc.reap_when_done:  # its status was owed to a connection that is gone
            self.reap(proc)

    # --- the systemd manager going away (sdexec.server.supervisor) ---------------

    def manager_lost(self, why: SdexecError, lost: str | None) -> None:
        """The manager, or the bus to it, is gone.

        ``why`` answers every request that needs the manager until
        :meth:`manager_back`.  ``lost`` (the manager died, and its units with
        it) is the outcome of every process that had not finished: its client
        and waiter get it now, and a waitable one keeps it, in its record too,
        for the next ``wait``.  A finished waitable process keeps its status
        in its record, since the unit that held it is gone.
        """
        self.down = why
        if lost is None:
            return  # only the bus: the processes go on; resync() catches up
        err = SdexecError(errno.EHOSTDOWN, lost)
        for proc in list(self.by_unit.values()):
            self._lose(proc, err)

    def _lose(self, proc: Process, err: SdexecError) -> None:
        if proc.state is ProcState.STARTING:
            proc.fail_start(err)
        elif proc.state is ProcState.EXITED:
            if proc.background and proc.waitable and proc.lost is None:
                self.state.update(proc.unit, status=proc.status, pid=proc.pid)
        else:
            if proc.background and proc.waitable:
                self.state.update(proc.unit, lost=err.message, pid=proc.pid)
            proc.lose(err)

    def manager_back(self) -> None:
        self.down = None

    async def resync(self, why: str) -> None:
        """After the bus came back to a manager that lived: read every unit again.

        Signals sent while the bus was down are lost; a full property read of
        each unit catches up.  A unit that went away meanwhile (it ended and
        was collected) has an unknown outcome.  Records without a process
        (starts lost with the bus) are stopped, as orphans.
        """
        for rec in list(self.state.load_all()):
            if rec.unit not in self.by_unit:
                await self._stop_orphan(rec.unit)
        for proc in list(self.by_unit.values()):
            if proc.state is ProcState.EXITED:
                continue
            try:
                props = await self.bus.properties(proc.unit)
            except OSError:
                props = {}
            if props.get("LoadState") != "loaded":
                self._lose(
                    proc,
                    SdexecError(
                        errno.EHOSTDOWN, f"its unit went away while {why}; its outcome is unknown"
                    ),
                )
                continue
            proc.resync(props)

    async def _stop_orphan(self, unit: str) -> None:
        """A foreground unit whose client died with the old server: stop it, forget it."""
        try:
            props = await self.bus.properties(unit, "org.freedesktop.systemd1.Unit")
            if props.get("LoadState") == "loaded":
                log.info("re-adoption: stopping orphaned foreground unit", unit=unit)
                await self.bus.stop(unit)
        except OSError as exc:
            log.warning("cannot stop orphaned unit", unit=unit, error=exc.strerror)
        self.state.remove(unit)
