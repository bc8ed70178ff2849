"""The Flux front door: the sdexec server as the ``sdexec`` broker module of one rank.

Theory of operation
-------------------
``flux module load --name=sdexec MODULE.py [KEY=VALUE ...]`` runs
:func:`mod_main` in a process of its own, with a handle on its broker.  It
builds the same server as ``sdexec serve`` (router, RFC 42 service, systemd
bus, re-adoption from the state directory), with the broker as its only
connection (:class:`~sdexec.flux.link.FluxLink`) instead of a listening
socket, and runs it on asyncio until the broker sends ``sdexec.shutdown``
(``flux module remove``).

What differs from the standalone door is what Flux expects of its sdexec
module, which flux-core's C module defines:

* one ``output`` response per line by default (``<stream>_LINE_BUFFER``),
  since job-exec turns each into one eventlog entry;
* units get ``FLUX_URI`` (this rank's ``local-uri``); ``NOTIFY_SOCKET`` and
  ``INVOCATION_ID`` never leak into them;
* ``wait`` returns the last 8 KiB of a background process's output
  (``output``), and that output also goes to the broker log, as
  ``NAME[PID]: LINE``;
* ``stats-get`` lists the units, ``config-reload`` checks
  ``[systemd] sdexec-debug``, ``SDEXEC_R_LOCAL`` asks ``sdexec-mapper``;
* guests may ``list``, ``kill``, ``attach`` and ``logs`` the shells of their
  own jobs (:mod:`sdexec.flux.tenants`), where the C module serves the owner
  only;
* on unload, open requests get ENOSYS "sdexec module is unloading";
  foreground units are stopped, background units keep running and are
  adopted again by the next load (the C module cannot do that).

Everything the server logs goes to the broker log (``flux dmesg``).

``mod_main`` never raises: an exception out of a module makes the broker
panic and takes the whole instance down.  A failure is logged and the module
exits with an error the broker reports for the load.

Module arguments (``KEY=VALUE``; the broker splits them on blanks):
``state-dir=DIR`` (default: see :func:`state_location`), ``journal=DIR`` (a journal directory
to read instead of the user's journal; also ``$SDEXEC_JOURNAL_DIR``),
``systemd=user|system`` and ``log-level=LEVEL``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from sdexec.base.errors import SdexecError, message_of
from sdexec.broker.request import Request
from sdexec.broker.router import Router
from sdexec.flux import brokerlog
from sdexec.flux.config import SystemdConfig, config_error
from sdexec.flux.link import FluxLink
from sdexec.flux.output import BackgroundOutput
from sdexec.flux.tenants import GUEST_METHODS, JobOwners, TenantGate
from sdexec.server.daemon import user_bus_address
from sdexec.server.outputlog import choose
from sdexec.server.service import Service
from sdexec.server.supervisor import Supervisor
from sdexec.server.warmup import warm_migrations
from sdexec.systemd.bus import SystemdBus
from sdexec.systemd.journal import STDOUT_SOCKET, Journal

if TYPE_CHECKING:
    from sdexec.flux.handle import BrokerHandle

log = structlog.get_logger("sdexec.flux")

UNLOADING = "sdexec module is unloading"
#: The C module keeps at most this much of a waitable process's output for ``wait``.
WAIT_OUTPUT_MAX = 8192
#: Broker states once it has begun to shut down (flux-core's state machine).
BROKER_ENDING = frozenset({"cleanup", "shutdown", "finalize", "goodbye", "exit"})
#: A broker answers in milliseconds; a loaded machine may stall it for longer.
STATE_QUERY_TIMEOUT = 5.0
#: Environment variables a unit must never inherit from its client.
DROP_ENV = ("NOTIFY_SOCKET", "INVOCATION_ID")


@dataclass
class ModuleOptions:
    state_dir: Path
    journal_dir: str | None
    systemd: str
    log_level: str
    #: The state directory goes with the broker (its rundir).
    ephemeral: bool = False


def state_location(
    attr: Callable[[str], str | None], rank: int, environ: Mapping[str, str]
) -> tuple[Path, bool]:
    """Where this rank keeps its state by default, and whether it goes with the broker.

    The state must live as long as the units it describes, which outlive a
    broker restart, so the first of these that outlives the broker wins:

    1. the broker's ``statedir``, unless the broker made it for itself and
       removes it at exit (``statedir-cleanup`` is 1, as in ``flux start``);
    2. ``$STATE_DIRECTORY``, the directory systemd keeps for the broker's
       service (``StateDirectory=``): flux-core's ``flux.service`` passes it
       as ``statedir``, but the broker keeps that attribute on rank 0 only, so
       this is what a follower of a system instance finds;
    3. the broker's own ``statedir`` or ``rundir``, which go with it (the
       state is *ephemeral* then: see :meth:`ModuleServer._unload_reason`).
    """
    name = f"sdexec.{rank}"
    statedir = attr("statedir")
    if statedir and attr("statedir-cleanup") != "1":
        return Path(statedir, name), False
    systemd_state = environ.get("STATE_DIRECTORY", "").split(":")[0]
    if systemd_state and os.path.isabs(systemd_state):
        return Path(systemd_state, name), False
    base = statedir or attr("rundir")
    if not base:
        raise ValueError("the broker has no rundir: give state-dir=DIR")
    return Path(base, name), True


def parse_args(args: list[str], handle: BrokerHandle) -> ModuleOptions:
    """The module's ``KEY=VALUE`` arguments, with the defaults filled in."""
    given: dict[str, str] = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or key not in ("state-dir", "journal", "systemd", "log-level"):
            raise ValueError(
                f"unknown module argument {arg!r} (state-dir=, journal=, systemd=, log-level=)"
            )
        given[key] = value
    systemd = given.get("systemd", "user")
    if systemd not in ("user", "system"):
        raise ValueError(f"systemd={systemd}: expected user or system")
    state = given.get("state-dir")
    if state:
        state_dir, ephemeral = Path(state), False
    else:
        state_dir, ephemeral = state_location(handle.attr, handle.rank, os.environ)
    return ModuleOptions(
        state_dir=state_dir,
        journal_dir=given.get("journal") or os.environ.get("SDEXEC_JOURNAL_DIR") or None,
        systemd=systemd,
        log_level=given.get("log-level", "info"),
        ephemeral=ephemeral,
    )


def mod_main(h: Any, *args: str) -> None:
    """Entry point called by ``flux module-python-exec``.

    An error at load is raised as ValueError (the broker reports EINVAL) or
    OSError (its errno): never anything else, never a traceback.
    """
    from sdexec.flux.handle import BrokerHandle  # flux-core's bindings: only in a broker

    handle = BrokerHandle(h)
    brokerlog.configure(handle)
    try:
        opts = parse_args(list(args), handle)
        brokerlog.set_level(opts.log_level)
    except ValueError as exc:
        log.error("cannot load", error=str(exc))
        raise  # the loader reports a ValueError as EINVAL, without a traceback
    try:
        asyncio.run(ModuleServer(handle, opts).run())
    except OSError as exc:  # SdexecError among them: a known failure, said in one line
        log.error("module failed", errnum=exc.errno, error=message_of(exc))
        raise OSError(exc.errno or errno.EIO, message_of(exc)) from None
    except Exception as exc:
        # A bug.  The broker panics when a module dies of an exception: say
        # what it was, with its traceback, and leave with an errno instead.
        log.exception("module failed")
        raise OSError(errno.EIO, str(exc)) from None


class ModuleServer:
    """One rank's sdexec: the shared server core behind a :class:`FluxLink`."""

    def __init__(self, handle: BrokerHandle, opts: ModuleOptions) -> None:
        self.handle = handle
        self.opts = opts
        self.name = handle.name
        self.rank = handle.rank
        self.stop = asyncio.Event()
        self.systemd_config = SystemdConfig()
        self.service: Service | None = None
        self.bus: SystemdBus | None = None

    async def run(self) -> None:
        try:
            await self._serve()
        finally:
            with contextlib.suppress(ValueError, OSError):  # not added if the load failed early
                asyncio.get_running_loop().remove_reader(self.handle.pollfd)
            self.handle.close()

    def _pump(self, once: bool = False) -> None:
        try:
            self.handle.pump(once=once)
        except Exception:
            log.exception("flux reactor failed")
            self.stop.set()

    async def _serve(self) -> None:
        handle, opts = self.handle, self.opts
        # What can fail the load comes first, before Flux's reactor ever runs:
        # the broker counts the module as loaded from its first run on, and a
        # loaded module that exits makes it panic; an error now is only a
        # failed "flux module load".
        opts.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        owner = os.getuid()
        bus = SystemdBus(
            None if opts.systemd == "system" else user_bus_address(),
            system=opts.systemd == "system",
        )
        log.debug("connecting to systemd", address=bus.address)
        await bus.connect()
        self.bus = bus
        self.handle.serve(f"{self.name}.shutdown", lambda _m: self.stop.set())
        journal = (
            Journal.for_mode("private", opts.journal_dir)
            if opts.journal_dir
            else Journal.for_mode(opts.systemd)
        )
        router = Router(owner_uid=owner)
        local_uri = handle.attr("local-uri")
        env: dict[str, str | None] = dict.fromkeys(DROP_ENV)
        if local_uri:
            env["FLUX_URI"] = local_uri
        service = Service(
            router,
            bus,
            name=self.name,
            rank=self.rank,
            uri=local_uri,
            journal=journal,
            state_dir=opts.state_dir,
            outputlog=choose(journal, True, opts.state_dir, self._journal_socket),
            line_buffer=True,
            environment=env,
            wait_output=WAIT_OUTPUT_MAX,
            mapper=self._map_resources,
        )
        self.service = service
        router.register(f"{self.name}.config-reload", self._config_reload)
        link = FluxLink(router, handle.send, service=self.name, rank=self.rank, owner=owner)
        if link.attach():
            raise SdexecError(errno.EPERM, "the router refused the broker")
        # Every method is registered before Flux's reactor runs again: the
        # broker counts the module as loaded from then on, and requests that
        # come before the server is ready wait in the link.
        guest_topics = {f"{self.name}.{method}" for method in GUEST_METHODS}
        for topic in sorted(router.routes):
            if topic.startswith(self.name + "."):
                handle.serve(topic, link.received_encoded, guests=topic in guest_topics)
        tenants = TenantGate(router, JobOwners(handle.rpc), service.processes)
        tenants.install()
        background = BackgroundOutput(service, journal, handle.log)
        asyncio.get_running_loop().add_reader(handle.pollfd, self._pump)
        self._pump(once=True)  # what queued before the reader was added
        log.debug("reading the config")
        try:
            conf = await handle.rpc("config.get", {})
        except OSError as exc:
            log.warning("cannot read the instance config", error=str(exc))
            conf = {}
        try:
            self.systemd_config = SystemdConfig.from_config(conf)
        except ValueError as exc:
            log.warning("ignoring bad [systemd] config", error=str(exc))
        service.test_options = self.systemd_config.sdexec_debug
        warmer = warm_migrations(service)
        try:
            await self._run_service(router, service, link, background, bus, tenants)
        finally:
            if warmer is not None:
                warmer.close()
        log.info("unloaded", kept=service.background_kept())

    async def _run_service(
        self,
        router: Router,
        service: Service,
        link: FluxLink,
        background: BackgroundOutput,
        bus: SystemdBus,
        tenants: TenantGate,
    ) -> None:
        handle, opts = self.handle, self.opts
        async with asyncio.TaskGroup() as tg:
            router.attach(tg)
            log.debug("adopting units", state_dir=str(opts.state_dir))
            await service.adopt()
            link.open()
            watchers = [
                tg.create_task(service.watch_stopped()),
                # A module must not leave when its manager goes (the broker
                # would panic): requests fail meanwhile, and it keeps trying.
                tg.create_task(
                    Supervisor(bus, service, None, asyncio.Event(), recover_for=math.inf).run()
                ),
                tg.create_task(background.run()),
                tg.create_task(tenants.run()),
            ]
            # Said before the broker learns it (the two go in order on the
            # module's connection): once `flux module load` returns, `flux
            # dmesg` has the line.
            log.info(
                "loaded",
                rank=self.rank,
                state_dir=str(opts.state_dir),
                systemd=opts.systemd,
                adopted=len(service.by_unit),
                pid=os.getpid(),
            )
            handle.set_running()
            await self.stop.wait()
            reason = await self._unload_reason()
            # The units' identity goes with an ephemeral state directory: keep
            # them running only if a next module can find them again.
            stop_background = self.opts.ephemeral and reason != "reload"
            log.info(
                "unloading",
                procs=len(service.by_unit),
                reason=reason,
                stop_background=stop_background,
            )
            await service.shutdown(stop_background=stop_background, reason=UNLOADING)
            link.close()
            for task in watchers:
                task.cancel()
            bus.close()
            service.close()

    async def _unload_reason(self) -> str:
        """Why the module is being removed: ``reload``, ``broker-restart`` or ``instance-end``.

        ``reload``: this broker runs on (``flux module remove``/``reload``).
        Otherwise this broker is shutting down, and a follower asks rank 0:
        if rank 0 still runs, only this broker is restarting
        (``systemctl restart flux`` on one node) and the instance goes on;
        if rank 0 is ending too, or cannot be asked, the instance ends.  On
        rank 0 the broker's end is the instance's.  A state directory that
        outlives the broker keeps background units running in every case
        (a bgexec job can be reattached by the next instance); an ephemeral
        one cannot, and its units are stopped unless this is a reload.
        """
        own = await self._broker_state(None)
        if own is None:
            log.warning("the broker did not say its state; unloading as for a reload")
            return "reload"
        if own not in BROKER_ENDING:
            return "reload"
        if self.rank == 0:
            return "instance-end"
        leader = await self._broker_state(0)
        if leader is not None and leader not in BROKER_ENDING:
            return "broker-restart"
        return "instance-end"

    async def _broker_state(self, nodeid: int | None) -> str | None:
        """A broker's state (``state-machine.get``), or None when it does not answer."""
        try:
            async with asyncio.timeout(STATE_QUERY_TIMEOUT):
                reply = await self.handle.rpc("state-machine.get", {}, nodeid=nodeid)
        except (OSError, TimeoutError):
            return None
        state = reply.get("state") if isinstance(reply, dict) else None
        return state if isinstance(state, str) else None

    def _journal_socket(self) -> str:
        """journald's stream socket as the manager sees it (its mount namespace may be
        its own: /proc/PID/root enters it), where background output goes."""
        pid = self.bus.manager_pid if self.bus is not None else 0
        return f"/proc/{pid}/root{STDOUT_SOCKET}" if pid else STDOUT_SOCKET

    # --- what the C module does beyond RFC 42 ------------------------------------------

    def _config_reload(self, req: Request) -> None:
        """``[systemd] sdexec-debug`` must be a boolean; a bad config changes nothing."""
        try:
            new = SystemdConfig.from_config(req.payload())
        except ValueError as exc:
            raise SdexecError(errno.EINVAL, config_error(exc)) from None
        self.systemd_config = new
        if self.service is not None:
            self.service.test_options = new.sdexec_debug
        req.respond({})

    async def _map_resources(self, r_local: str) -> dict[str, str]:
        """Unit properties for this rank's share of a job's resources (``sdexec-mapper``)."""
        try:
            result = await self.handle.rpc("sdexec-mapper.lookup", {"R": r_local})
        except OSError as exc:
            log.error("sdexec-mapper.lookup failed", error=str(exc))
            raise SdexecError(exc.errno or errno.EIO, "sdexec-mapper.lookup failed") from None
        if not isinstance(result, dict):
            raise SdexecError(errno.EPROTO, "sdexec-mapper.lookup: the response is not an object")
        for key, value in result.items():
            if not isinstance(value, str):
                log.error("resource map value is not a string", property=key)
                raise SdexecError(
                    errno.EINVAL, "unable to apply systemd properties set in resource map"
                )
        return result
