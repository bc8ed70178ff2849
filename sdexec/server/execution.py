"""``exec``: from a request to a transient unit, in named steps.

Theory of operation
-------------------
:meth:`Execution.exec` runs synchronously up to ``StartTransientUnit``, so
that a ``write`` that follows the ``exec`` at once (credit borrowed before
``started``) finds its process.  The request's options were parsed with it
(:func:`sdexec.proto.rfc42.parse_exec`); then, in order:

1. a repeat of an idempotent exec is answered (:mod:`sdexec.server.idempotency`),
   and a label already in use is EEXIST;
2. with ``SDEXEC_R_LOCAL`` the resource mapper's unit properties are awaited
   first (the only step that waits), and the names checked again;
3. the command is resolved as ``execvp`` would (:mod:`sdexec.server.launch`);
4. the unit's properties are made, and checked against the manager's
   controllers (:mod:`sdexec.systemd.controllers`);
5. the :class:`~sdexec.server.process.Process` is made, under a unit name
   that is free;
6. the unit's command, environment and output are set (:meth:`Execution._unit_spec`);
7. its stdio, terminal and channels are opened (:mod:`sdexec.server.unitio`);
8. it is entered in the table and in the state directory before the unit
   exists, so a restarted server finds it whatever happens next;
9. :meth:`Execution._start` starts it; everything after that is driven by
   the unit's signals, in :class:`~sdexec.server.process.Process`.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Awaitable, Coroutine
from typing import Any

import structlog
from dbus_fast import Variant

from sdexec.base.errors import SdexecError, errnum_of
from sdexec.broker.request import Request
from sdexec.proto import idset, rfc42
from sdexec.proto.rfc42 import LocalFlag
from sdexec.security import guest
from sdexec.server.idempotency import Idempotency
from sdexec.server.launch import resolve_command
from sdexec.server.outputlog import Prepared
from sdexec.server.process import Process
from sdexec.server.statefile import ProcRecord
from sdexec.server.unitio import UnitIO, UnitStdio
from sdexec.systemd import controllers, properties

log = structlog.get_logger("sdexec.service")


def guest_ids(req: Request) -> tuple[int, int] | None:
    """A guest requester's (uid, gid), whose view of the files counts; None for the trusted."""
    return (req.userid, req.conn.gid) if guest.is_guest(req) else None


class Execution(UnitStdio, Idempotency):
    """The ``exec`` handler."""

    def exec(self, req: Request) -> Coroutine[Any, Any, None] | None:
        """Validate and register synchronously; start the unit in a task.

        Everything up to ``StartTransientUnit`` happens before the next request
        from the same connection is read, so a ``write`` that follows the
        ``exec`` at once (credit borrowed before ``started``) finds its process.
        """
        if self.shutting_down:
            raise SdexecError(errno.ENOSYS, self.shutdown_reason)
        if self.down is not None:
            raise SdexecError(errnum_of(self.down), self.down.message)
        if self.before_exec is not None:
            self.before_exec()
        er = rfc42.parse_exec(req.payload(), streaming=req.streaming)
        confined = guest.exec_properties(req, er)  # sdexec.security: guests run as themselves
        cmd = er.cmd
        key = er.options.key
        if key is not None and self._repeat(req, key):
            return None  # that exec happened already: answered, nothing started
        if cmd.label is not None and self._lkey(req.userid, cmd.label) in self.by_label:
            raise SdexecError(errno.EEXIST, f"label {cmd.label} is already in use")
        r_local = er.options.r_local
        if r_local is not None:
            if self.mapper is None:
                raise SdexecError(
                    errno.EINVAL, "SDEXEC_R_LOCAL needs a resource mapper (sdexec-mapper, in Flux)"
                )
            return self._exec_mapped(req, er, confined, self.mapper(r_local))
        return self._exec(req, er, confined)

    async def _exec_mapped(
        self,
        req: Request,
        er: rfc42.ExecRequest,
        confined: list[tuple[str, Variant]],
        mapped: Awaitable[dict[str, str]],
    ) -> None:
        """An exec whose unit properties come partly from the resource mapper."""
        mapped_properties = await mapped
        for name, value in mapped_properties.items():
            er.cmd.opts[properties.OPTS_PREFIX + name] = value
        await self._exec(req, er, confined, mapped_cpus=mapped_properties.get("AllowedCPUs"))

    def _exec(
        self,
        req: Request,
        er: rfc42.ExecRequest,
        confined: list[tuple[str, Variant]],
        mapped_cpus: str | None = None,
    ) -> Coroutine[Any, Any, None]:
        """The steps of an exec up to ``StartTransientUnit``; returns the start itself.

        Nothing is created before every check has passed; what a step
        creates is undone if a later one fails.
        """
        self._check_names_free(req, er)
        exe = resolve_command(er.cmd, guest_ids(req))
        extra, warnings = self._unit_properties(er, confined)
        proc = self._new_process(req, er, warnings, mapped_cpus)
        spec, prepared = self._unit_spec(proc, exe, extra)
        io = self._open_io(proc, spec, req.streaming, prepared)
        self._register(req, er, proc, io)
        return self._start(proc, io)

    # --- the steps ----------------------------------------------------------------------------

    def _check_names_free(self, req: Request, er: rfc42.ExecRequest) -> None:
        """EEXIST if the exec's idempotency key or label was taken (meanwhile, if mapped)."""
        key, label = er.options.key, er.cmd.label
        if key is not None and (req.userid, key) in self.by_key:
            raise SdexecError(errno.EEXIST, f"idempotency key {key} is already in use")
        if label is not None and self._lkey(req.userid, label) in self.by_label:
            raise SdexecError(errno.EEXIST, f"label {label} is already in use")

    def _unit_properties(
        self, er: rfc42.ExecRequest, confined: list[tuple[str, Variant]]
    ) -> tuple[list[tuple[str, Variant]], list[str]]:
        """The unit properties the exec asks for (``SDEXEC_PROP_*``) and a guest's
        confinement; the warnings for those the manager cannot enforce."""
        extra = [*properties.opts_properties(er.cmd.opts), *confined]
        return extra, self._enforceable(er)

    def _enforceable(self, er: rfc42.ExecRequest) -> list[str]:
        """Warnings for resource properties the manager cannot enforce (EOPNOTSUPP if strict).

        See :mod:`sdexec.systemd.controllers`: read only for an exec that
        sets a property needing a controller.
        """
        settings = [
            (key[len(properties.OPTS_PREFIX) :], value)
            for key, value in er.cmd.opts.items()
            if key.startswith(properties.OPTS_PREFIX)
        ]
        if not controllers.needed(settings):
            return []
        strict = er.options.strict_properties
        if strict is None:
            strict = self.strict_properties
        return controllers.check(settings, self.controllers(), strict)

    def _unit_name(self, req: rfc42.ExecRequest) -> str:
        if req.options.unit_name is not None:
            return req.options.unit_name
        # As systemd-run --unit would: the label shows in systemctl (escaped, cut).
        label = f"{properties.unit_name_fragment(req.cmd.label)}-" if req.cmd.label else ""
        return f"sdexec-{self.rank}-{label}{self._stamp}-{next(self._seq)}.service"

    def _new_process(
        self,
        req: Request,
        er: rfc42.ExecRequest,
        warnings: list[str],
        mapped_cpus: str | None,
    ) -> Process:
        """The process, under a unit name that is free (EEXIST otherwise)."""
        options = er.options
        unit = self._unit_name(er)
        if unit in self.by_unit:
            raise SdexecError(errno.EEXIST, f"unit {unit} is already in use")
        proc = Process(self, unit, er.cmd, er.flags, er.local_flags, req, options)
        if options.wait_scoped and proc.background and proc.waitable:
            proc.wait_scoped = True
            self._wait_scoped.setdefault(req.conn.id, set()).add(proc)
        # The CPUs a mapped unit must be confined to, checked once it runs.
        expected = mapped_cpus
        if self.test_options and options.test_cpus is not None:
            expected = options.test_cpus
        proc.expected_cpus = None if expected is None else idset.decode(expected)
        proc.warnings = warnings
        for text in warnings:
            log.warning("property not enforced", reason=text, **proc.log_fields())
        if req.streaming:
            self._clients_present.set()
        return proc

    def _environment(self, cmd: rfc42.Command) -> dict[str, str]:
        """The command's environment, with the server's additions and removals."""
        env = dict(cmd.env)
        if self.uri:
            env["SDEXEC_URI"] = self.uri
        for name, value in self.environment.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        return env

    def _unit_spec(
        self, proc: Process, exe: str, extra: list[tuple[str, Variant]]
    ) -> tuple[properties.UnitSpec, Prepared | None]:
        """The unit's command, environment and properties; where a background one's output goes."""
        cmd = proc.cmd
        prepared: Prepared | None = None
        if proc.background:
            # Output goes to the journal (or a file), never through us; a
            # waitable unit is kept after it ends so that its status survives
            # a server restart until it is waited for.
            base: list[tuple[str, Variant]] = []
            terminal = proc.options.winsize is not None
            if not proc.local_flags & LocalFlag.STDIO_FALLTHROUGH and not terminal:
                # A wait that answers with the output needs to know when it is all in.
                barrier = proc.waitable and self.wait_output > 0
                prepared = self.outputlog.prepare(proc.unit, proc.ident, barrier)
                proc.barrier = prepared.barrier
                base += prepared.properties
            if proc.waitable:
                base += [
                    ("RemainAfterExit", Variant("b", True)),
                    ("CollectMode", Variant("s", "inactive")),
                ]
            extra = base + extra
        if not proc.background or proc.options.winsize is not None:
            # As in a shell: SIGPIPE ends a foreground command (systemd's
            # default ignores it).  The CLI forwards it when its reader is
            # gone.  A background terminal is a shell's session too.
            extra = [("IgnoreSIGPIPE", Variant("b", False)), *extra]
        spec = properties.UnitSpec(
            argv=[exe, *cmd.cmdline[1:]],
            env=self._environment(cmd),
            cwd=cmd.cwd,
            argv0=cmd.cmdline[0],
            extra=extra,
        )
        return spec, prepared

    def _register(self, req: Request, er: rfc42.ExecRequest, proc: Process, io: UnitIO) -> None:
        """Enter the process in the table and the state directory; watch its unit."""
        cmd, key = er.cmd, er.options.key
        if cmd.label is not None:
            self.by_label[self._lkey(req.userid, cmd.label)] = proc
        if key is not None:
            proc.key = key
            self.by_key[(req.userid, key)] = proc
        if req.streaming:
            self.by_stream[(req.sender, req.matchtag)] = proc
        self.by_unit[proc.unit] = proc
        # Before the unit exists: whatever happens next, a restarted server finds it.
        self.state.save(
            ProcRecord(
                unit=proc.unit,
                label=cmd.label,
                cmdline=cmd.cmdline,
                flags=int(er.flags),
                local_flags=int(er.local_flags),
                requester_uid=req.userid,
                ident=proc.ident,
                foreground=not proc.background,
                key=key,
                holder_unit=proc.holder.unit if proc.holder is not None else None,
                holder_socket=proc.holder.path if proc.holder is not None else None,
                wait_scoped=proc.wait_scoped,
            )
        )
        self.starting.add(proc)
        proc.hold_signals()  # until StartTransientUnit answers (see _start)
        self.bus.watch(proc.unit, proc)
        log.info(
            "exec",
            argv=cmd.cmdline,
            cwd=cmd.cwd,
            background=not req.streaming,
            flags=int(er.flags),
            pty=er.options.winsize is not None,
            requester=req.userid,
            signer=req.signer,
            **proc.log_fields(),
        )

    async def _start(self, proc: Process, io: UnitIO) -> None:
        """Start the unit (a background terminal's holder first, see sdexec.server.pty)."""
        try:
            if io.holder_start is not None:
                hunit, hprops, hfds = io.holder_start
                try:
                    await self.bus.start_transient(hunit, hprops, hfds)
                except Exception:
                    self._holder_failed(proc, hunit)
                    raise
                finally:
                    for fd in hfds:
                        os.close(fd)
            try:
                await self.bus.start_transient(proc.unit, io.props, io.fds)
            except Exception:
                if proc.holder is not None:
                    self.router.spawn(self._release_unit(proc.holder.unit), "stop terminal holder")
                raise
            proc.start_accepted()
        except Exception:
            if proc not in self.starting:
                return  # already failed and answered: its manager went away (manager_lost)
            self._start_failed(proc)
            raise
        except BaseException:
            self._start_failed(proc)
            raise
        finally:
            for fd in io.theirs:
                os.close(fd)

    def _start_failed(self, proc: Process) -> None:
        # Only what this exec created: the unit name may be someone else's.
        self.bus.unwatch(proc.unit, proc)
        self.starting.discard(proc)
        self._forget(proc)
        if self.down is not None:
            # The call was lost with the bus: the unit may exist after all.  Its
            # record stays, as one to stop (resync, or the next adopt).
            self.state.update(proc.unit, foreground=True)
        else:
            self.state.remove(proc.unit)
