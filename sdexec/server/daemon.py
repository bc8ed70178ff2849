"""``sdexec serve``: wire the layers together and run until SIGTERM/SIGINT.

Ownership: one root ``asyncio.TaskGroup`` owns the router's handler tasks
and the watcher of the systemd bus; the listener, the bus connection and the
service live for exactly the span of :func:`serve`.  A crashing handler is
answered and logged by the router; it never takes the server down.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import os
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from sdexec.base import logconfig
from sdexec.base.errors import SdexecError, errnum_of
from sdexec.base.uri import LOCAL_SCHEME, default_local_path, local_path

if TYPE_CHECKING:
    from collections.abc import Callable

    from sdexec.security.policy import SecurityConfig
    from sdexec.server.service import Service
    from sdexec.systemd.bus import SystemdBus
    from sdexec.systemd.private import PrivateManager

log = structlog.get_logger("sdexec.server")


@dataclass
class ServeOptions:
    uri: str
    socket_path: str
    state_dir: Path
    systemd: str  # user | system | private
    rank: int = 0
    size: int = 1
    on_shutdown: str = "keep"
    # A listening socket inherited through systemd socket activation: used
    # instead of binding socket_path, and never unlinked (systemd owns it).
    listen_sock: socket.socket | None = None
    # sdexec.security: who may connect and sign, and the hostile-input limits.
    security: SecurityConfig | None = None
    max_message: int = 4 << 20
    max_output_buffer: int = 8 << 20
    listen: str | None = None  # tcp://HOST:PORT (ZeroMQ with CURVE)
    curve_key: str | None = None  # the server's secret certificate
    curve_authorized: str | None = None  # directory of authorized client certificates
    curve_uid: int | None = None  # uid of keys without their own (default: the owner)
    # A resource property the manager's cgroup cannot enforce is an error, not a warning.
    strict_properties: bool = False
    manager_timeout: float = 30.0  # how long a lost systemd manager may take to come back


def default_state_dir(socket_path: str) -> Path:
    """One state directory per socket, next to it: two servers never share one."""
    return Path(socket_path + ".state")


def user_bus_address() -> str | None:
    addr = os.environ.get("DBUS_SESSION_BUS_ADDRESS")
    if addr:
        return addr
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime, "bus").is_socket():
        return f"unix:path={runtime}/bus"
    return None


def choose_systemd(requested: str | None) -> str:
    if requested:
        return requested
    if user_bus_address() is not None:
        return "user"
    if os.geteuid() == 0:
        return "private"
    raise SdexecError(
        2,
        "no systemd user bus found; use --systemd=system or run as root "
        "for the embedded private manager",
    )


def notify(state: str) -> None:
    """sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(path)
        s.sendall(state.encode())


async def serve(
    opts: ServeOptions,
    bus_address: str | None,
    journal_dir: str | None,
    journal_socket: Callable[[], str] | None = None,
    manager: PrivateManager | None = None,
) -> int:
    from sdexec.broker.builtins import Builtins
    from sdexec.broker.router import Router
    from sdexec.security.gate import Gate
    from sdexec.security.policy import SecurityConfig
    from sdexec.security.setup import USERID_UNKNOWN, describe
    from sdexec.server.service import Service
    from sdexec.server.supervisor import Supervisor
    from sdexec.server.warmup import warm_migrations
    from sdexec.systemd.bus import SystemdBus
    from sdexec.systemd.journal import Journal
    from sdexec.transport.unix import listen_local

    bus = SystemdBus(bus_address, system=opts.systemd == "system")
    await bus.connect()
    security = opts.security or SecurityConfig(server_uid=os.getuid(), owner=os.getuid())
    owner = security.owner if security.owner is not None else USERID_UNKNOWN
    router = Router(
        owner_uid=security.owner if security.owner is not None else security.server_uid,
        server_uid=security.server_uid,
        allow_guests=security.allow_guests,
    )
    gate = Gate(router, security)
    gate.install()
    Builtins(router, rank=opts.rank, size=opts.size, owner=owner)
    from sdexec.server.outputlog import choose

    journal = Journal.for_mode(opts.systemd, journal_dir)
    journal_ok = opts.systemd != "private" or (
        journal_dir is not None and Path(journal_dir).parent.is_dir()
    )
    outputlog = (
        choose(journal, journal_ok, opts.state_dir, journal_socket)
        if journal_socket is not None
        else choose(journal, journal_ok, opts.state_dir)
    )
    service = Service(
        router,
        bus,
        rank=opts.rank,
        uri=opts.uri,
        journal=journal,
        state_dir=opts.state_dir,
        outputlog=outputlog,
    )
    service.strict_properties = opts.strict_properties
    await _watch_controllers(bus, service)
    warmer = warm_migrations(service, router)
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_loop_exception_handler())
    stop = asyncio.Event()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.info("already shutting down", signal=signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)

    supervisor = Supervisor(bus, service, manager, stop, recover_for=opts.manager_timeout)
    bound = False
    tcp = None
    if opts.listen:  # proxy/remote access: tcp:// with CURVE; bound before adopting anything
        from sdexec.transport.zmq_server import ZmqListener

        tcp = ZmqListener(
            opts.listen,
            router,
            opts.curve_key or "",
            opts.curve_authorized or "",
            router.owner_uid if opts.curve_uid is None else opts.curve_uid,
            max_message=opts.max_message,
            write_limit=opts.max_output_buffer,
        )
        tcp_uri = tcp.bind()
    try:
        async with asyncio.TaskGroup() as tg:
            router.attach(tg)
            await service.adopt(
                killed=manager.killed if manager is not None else None,
                manager_died=manager is not None and manager.found_dead,
            )
            server = await listen_local(
                opts.socket_path,
                router,
                sock=opts.listen_sock,
                max_message=opts.max_message,
                write_limit=opts.max_output_buffer,
                public=security.allow_guests,
                # An owner who is not the server's uid must reach the socket too.
                socket_owner=security.owner if security.owner != security.server_uid else None,
            )
            bound = True
            supervision = tg.create_task(supervisor.run())
            stopped_watch = tg.create_task(service.watch_stopped())
            tcp_task = None
            if tcp is not None:
                log.info("listening", uri=tcp_uri, authorized=opts.curve_authorized)
                tcp_task = tg.create_task(tcp.run())
            log.info(
                "listening",
                uri=opts.uri,
                systemd=opts.systemd,
                rank=opts.rank,
                state_dir=str(opts.state_dir),
                pid=os.getpid(),
                socket_activated=opts.listen_sock is not None,
            )
            log.info("security", **describe(security))
            notify("READY=1")
            await stop.wait()
            notify("STOPPING=1")
            log.info("shutting down", procs=len(service.by_unit))
            server.close()
            await service.shutdown(stop_background=opts.on_shutdown == "stop")
            for conn in list(router.connections.values()):
                conn.close()
            supervision.cancel()
            stopped_watch.cancel()
            if tcp_task is not None:
                tcp_task.cancel()
            bus.close()
            gate.close()
            service.close()
    finally:
        if warmer is not None:
            warmer.close()
        # Whatever ends the server, its socket goes (systemd owns an inherited one).
        if bound and opts.listen_sock is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(opts.socket_path)
    if supervisor.gave_up is not None:
        raise SdexecError(errnum_of(supervisor.gave_up), supervisor.gave_up.message)
    return service.background_kept()


async def _watch_controllers(bus: SystemdBus, service: Service) -> None:
    """Let the service check resource properties against the manager's cgroup controllers."""
    from sdexec.systemd.controllers import available
    from sdexec.systemd.private import cgroup2_root

    try:
        cgroup = await bus.manager_cgroup()
    except OSError as exc:
        log.warning("cannot read the manager's cgroup", error=exc.strerror)
        return
    root = cgroup2_root()
    service.controllers = lambda: available(root, cgroup)
    found = service.controllers()
    log.info(
        "manager cgroup",
        cgroup=cgroup,
        controllers=sorted(found) if found is not None else None,
        strict_properties=service.strict_properties,
    )


def _private_journal_socket(manager: PrivateManager) -> Callable[[], str]:
    """Where the private journald's stream socket is, seen from outside its namespace.

    It is in the manager's mount namespace (a tmpfs on /run/systemd), which
    ``/proc/PID/root`` enters; the manager's pid is read again if it changed.
    """
    from sdexec.systemd.journal import STDOUT_SOCKET

    pid: list[int | None] = [None]

    def path() -> str:
        if pid[0] is None or not os.path.exists(f"/proc/{pid[0]}"):
            pid[0] = manager.pid()
        return f"/proc/{pid[0] or 0}/root{STDOUT_SOCKET}"

    return path


#: Failed accept(2)s (out of descriptors) are logged once per this many seconds.
ACCEPT_ERROR_LOG_INTERVAL = 10.0


def _loop_exception_handler() -> Callable[[asyncio.AbstractEventLoop, dict[str, Any]], None]:
    """asyncio's handler, except for failed accepts: one line per interval, no traceback.

    asyncio logs each accept that fails for want of descriptors (EMFILE) with
    a traceback and tries again a second later, per listener: a flood of
    connections would fill the disk with them.
    """
    from sdexec.base.ratelimit import LogLimiter

    limiter = LogLimiter(ACCEPT_ERROR_LOG_INTERVAL)

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message", ""))
        if message.startswith("socket.accept() out of system resource"):
            exc = context.get("exception")
            held = limiter.allow()
            if held is not None:
                log.error(
                    "accept failed; retrying in a second",
                    error=getattr(exc, "strerror", None) or str(exc),
                    similar_not_logged=held,
                )
            return
        loop.default_exception_handler(context)

    return handle


def _late_signal(signum: int, _frame: object) -> None:
    log.info("already shutting down", signal=signal.Signals(signum).name)


def _manager_timeout(args: argparse.Namespace) -> float:
    value = getattr(args, "manager_timeout", None)
    if value is None:
        return 30.0
    if not value > 0:
        raise SdexecError(
            22, f"--manager-timeout must be a positive number of seconds, not {value}"
        )
    return float(value)


def _tcp_options(args: argparse.Namespace) -> dict[str, Any]:
    """``--listen tcp://...`` and its CURVE key options, checked."""
    listen = getattr(args, "listen", None)
    if not listen:
        return {}
    from sdexec.base.uri import TCP_SCHEME, parse_tcp

    if not listen.startswith(TCP_SCHEME):
        raise SdexecError(22, f"--listen: only tcp:// endpoints are supported, not {listen}")
    parse_tcp(listen)
    if not args.curve_key or not args.curve_authorized:
        raise SdexecError(22, "--listen tcp:// needs --curve-key and --curve-authorized")
    from sdexec.transport.zmq import read_cert

    if read_cert(args.curve_key).secret is None:  # fail before starting anything
        raise SdexecError(22, f"--curve-key {args.curve_key}: no secret key (NAME.key_secret)")
    if not os.path.isdir(args.curve_authorized):
        raise SdexecError(2, f"--curve-authorized {args.curve_authorized}: not a directory")
    _check_port(listen)
    return {
        "listen": listen,
        "curve_key": args.curve_key,
        "curve_authorized": args.curve_authorized,
        "curve_uid": args.curve_uid,
    }


def _check_port(listen: str) -> None:
    """EADDRINUSE now, before a manager is started, if the tcp:// port is taken."""
    from sdexec.base.uri import parse_tcp

    host, port = parse_tcp(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as ZeroMQ binds
        try:
            probe.bind((host if host != "*" else "", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise SdexecError(exc.errno, f"cannot listen on {listen}: {exc.strerror}") from None
            # Anything else (a name to resolve, say) is ZeroMQ's to judge.


def main(args: argparse.Namespace) -> int:
    """Entry point for ``sdexec serve`` (args from the CLI's parser)."""
    logconfig.configure(getattr(args, "log_level", None) or "info")
    ran = False  # the server's loop started (refusals before that are one line only)
    from sdexec.server.memory import tune_malloc

    tune_malloc()
    try:
        from sdexec.server.activation import listen_fds, local_socket

        inherited = local_socket(listen_fds())
        # Not $SDEXEC_URI: that names the server a client talks to (and is set in
        # every process we run), not where a new server should listen.  A socket
        # from systemd names itself.
        default = LOCAL_SCHEME + (inherited[1] if inherited else default_local_path())
        uri = args.uri or default
        path = inherited[1] if inherited else local_path(uri)
        state_dir = (
            Path(args.state_dir) if getattr(args, "state_dir", None) else (default_state_dir(path))
        )
        mode = choose_systemd(getattr(args, "systemd", None))
        from sdexec.security import setup as security_setup

        try:
            security = security_setup.config_from_args(args)
        except ValueError as exc:
            raise SdexecError(22, str(exc)) from None
        security_setup.fit_fd_limit(security)
        # Signatures accepted stay refused across restarts, for their TTL.
        security.replay_file = str(state_dir / "replay.log")
        opts = ServeOptions(
            uri=uri,
            socket_path=path,
            state_dir=state_dir,
            systemd=mode,
            rank=int(getattr(args, "rank", 0) or 0),
            on_shutdown=getattr(args, "on_shutdown", None) or "keep",
            manager_timeout=_manager_timeout(args),
            listen_sock=inherited[0] if inherited else None,
            strict_properties=bool(getattr(args, "strict_properties", False)),
            security=security,
            max_message=getattr(args, "max_message", None) or security_setup.DEFAULT_MAX_MESSAGE,
            max_output_buffer=getattr(args, "max_output_buffer", None)
            or security_setup.DEFAULT_MAX_OUTPUT_BUFFER,
            **_tcp_options(args),
        )
        from sdexec.server.instance import claim

        # Before any state, manager or unit is touched: a second server on
        # this socket or state directory leaves the first one alone.
        held = claim(path, state_dir, rank=opts.rank, inherited=inherited is not None)
        manager = None
        bus_address: str | None = None
        journal_dir: str | None = None
        journal_socket: Callable[[], str] | None = None
        if mode == "private":
            from sdexec.systemd.private import PrivateManager

            state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            manager = PrivateManager(state_dir)
            if manager.start():
                log.info(
                    "private systemd started",
                    pid=manager.pid(),
                    runtime_dir=str(manager.runtime_dir),
                )
            else:
                log.info("private systemd reused", pid=manager.pid())
            bus_address = manager.bus_address
            journal_dir = str(manager.journal_dir)
            journal_socket = _private_journal_socket(manager)
        elif mode == "user":
            bus_address = user_bus_address()
        kept: int | None = None
        ran = True
        try:
            kept = asyncio.run(serve(opts, bus_address, journal_dir, journal_socket, manager))
        finally:
            # The loop's handlers are gone with it; a repeated SIGTERM must not
            # cut short the rest of the shutdown (stopping the private manager).
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, _late_signal)
            if manager is not None:
                if kept is None:  # the server failed: what it kept is on disk
                    from sdexec.server.statefile import StateDir

                    kept = len(StateDir(state_dir, opts.rank).load_all())
                if kept == 0:
                    manager.stop()
                    log.info("private systemd stopped")
        held.release()
        log.info("stopped")
        return 0
    except (SdexecError, OSError, BaseExceptionGroup) as exc:
        failure = _failure(exc)
        if failure is None:
            raise
        if ran:  # a server that ran ends with a log event too
            log.error("cannot serve", errnum=failure[0], error=failure[1])
        # One line, like any command's error, also in the journal when run as a service.
        print(f"sdexec: serve: {failure[1]}", file=sys.stderr)
        return 1


def _failure(exc: BaseException) -> tuple[int, str] | None:
    """(errno, one line) for an error the operator can act on; None for a real bug."""
    if isinstance(exc, SdexecError):
        return exc.errno or 1, exc.message
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return exc.errno or 5, f"{where}{exc.strerror or exc}"
    if isinstance(exc, BaseExceptionGroup):  # from the server's TaskGroup
        inner = [_failure(e) for e in exc.exceptions]
        if inner and all(f is not None for f in inner):
            return inner[0]
    return None
