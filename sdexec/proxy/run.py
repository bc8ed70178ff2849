"""``sdexec proxy [-f] [-n] [--reconnect] TARGET [COMMAND [ARG...]]`` (flux-proxy(1)).

Theory of operation
-------------------
1. Connect to TARGET (any URI, see :mod:`sdexec.base.uri`) and ask ``attr.get
   version``; a server of another major.minor is refused unless
   ``--force``, which prints a warning instead.
2. Create a private directory (mode 0700, from ``mkdtemp``) under
   ``$TMPDIR``, or ``/tmp`` when that is not a directory, and listen on
   ``DIR/local`` (mode 0600); the acceptor takes only the proxy's own uid.
3. Spawn ``$SHELL`` (or COMMAND) with ``SDEXEC_URI`` and ``FLUX_URI`` set
   to ``local://DIR/local``, and route messages both ways
   (:class:`sdexec.proxy.router.ProxyRouter`) until it exits.
4. Exit with the child's exit code, or 128+signal, after removing the
   socket and the directory.

If the connection is lost, the proxy prints an error.  In-flight RPCs get
ECONNRESET.  Without ``--reconnect`` it closes its socket, sends SIGHUP and
then SIGCONT to the child (unless ``--nohup``), and waits for it.  With
``--reconnect`` it tries again every :data:`RECONNECT_INTERVAL` seconds,
holding the requests children make meanwhile (for at most ``--hold``
seconds each, see :mod:`sdexec.proxy.router`); once connected it
re-subscribes the children's events, re-registers their services, sends
what it held, then ``state-machine.wait`` (as flux-core does) and carries
on.

Ownership: one ``asyncio.TaskGroup`` owns the child's waiter, the
connection supervisor and the tasks that serve intercepted requests; the
proxy returns when the child has exited and every task has ended.
SIGINT is ignored (the terminal delivers it to the child itself); SIGTERM
and SIGHUP received by the proxy are passed on to the child.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from sdexec import __version__
from sdexec.base.errors import SdexecError
from sdexec.base.uri import resolve
from sdexec.client.exec import exec_error_exit_code
from sdexec.proto.message import Message
from sdexec.proxy.router import HOLD_SECONDS, ProxyRouter
from sdexec.proxy.upstream import Upstream
from sdexec.transport.unix import listen_local

RECONNECT_INTERVAL = 2.0
PROG = "sdexec proxy"


class CommandFailed(SdexecError):
    """The child command could not be started."""


@dataclass
class ProxyOptions:
    target: str
    command: list[str] = field(default_factory=list)
    force: bool = False
    nohup: bool = False
    reconnect: bool = False
    hold: float = HOLD_SECONDS  # with reconnect: how long a request waits for the server


def warn(text: str) -> None:
    sys.stderr.write(f"{PROG}: {text}\n")
    sys.stderr.flush()


def major_minor(version: str) -> tuple[str, ...]:
    return tuple(version.split("-", 1)[0].split(".")[:2])


def socket_parent() -> str:
    """``$TMPDIR`` if it is a directory, else ``/tmp``."""
    tmpdir = os.environ.get("TMPDIR")
    return tmpdir if tmpdir and os.path.isdir(tmpdir) else "/tmp"


def exit_code(returncode: int) -> int:
    """A child's exit code, or 128+signal (asyncio reports a signal as -N)."""
    return 128 - returncode if returncode < 0 else returncode


class Proxy:
    def __init__(self, opts: ProxyOptions) -> None:
        self.opts = opts
        self.uri = resolve(opts.target)
        self.router: ProxyRouter | None = None
        self.child: asyncio.subprocess.Process | None = None
        self._tg: asyncio.TaskGroup | None = None
        self.path = ""

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        if self._tg is None:  # the proxy is done: nothing left to clean up upstream
            work.close()
            return
        self._tg.create_task(_guard(work))

    def _on_message(self, msg: Message) -> None:
        if self.router is not None:
            self.router.from_upstream(msg)

    async def connect(self) -> Upstream:
        """Connect and check the server's version (SdexecError if refused)."""
        up = await Upstream.connect(self.uri, self._on_message)
        try:
            version = str((await up.rpc("attr.get", {"name": "version"})).get("value", ""))
            if major_minor(version) != major_minor(__version__):
                text = f"server version {version} differs from the proxy's {__version__}"
                if not self.opts.force:
                    raise SdexecError(1, f"{text} (use --force to connect anyway)")
                warn(f"warning: {text}")
        except BaseException:
            await up.close()
            raise
        return up

    async def run(self) -> int:
        up = await self.connect()
        directory = tempfile.mkdtemp(prefix="sdexec-proxy-", dir=socket_parent())
        path = self.path = os.path.join(directory, "local")
        try:
            return await self._run(up, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            with contextlib.suppress(OSError):
                os.rmdir(directory)

    async def _run(self, up: Upstream, path: str) -> int:
        loop = asyncio.get_running_loop()
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            hold = self.opts.hold if self.opts.reconnect else None
            router = self.router = ProxyRouter(self._spawn, hold=hold)
            router.upstream = up
            server = await listen_local(path, router)
            env = dict(os.environ)
            env["SDEXEC_URI"] = env["FLUX_URI"] = f"local://{path}"
            argv = self.opts.command or [os.environ.get("SHELL") or "/bin/sh"]
            try:
                child = self.child = await asyncio.create_subprocess_exec(*argv, env=env)
            except OSError as exc:
                server.close()
                await up.close()
                raise CommandFailed(
                    exc.errno or 2, f"cannot run {argv[0]}: {exc.strerror}"
                ) from None
            loop.add_signal_handler(signal.SIGINT, lambda: None)
            for sig in (signal.SIGTERM, signal.SIGHUP):
                loop.add_signal_handler(sig, self._pass_on, sig)
            supervisor = tg.create_task(self._supervise(up, server))
            try:
                returncode = await child.wait()
            finally:
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                    loop.remove_signal_handler(sig)
            supervisor.cancel()
            server.close()
            router.close_children()
            await asyncio.sleep(0)  # let the children's connection_lost run in here
            if router.upstream is not None:
                await router.upstream.close()
            self._tg = None
        return exit_code(returncode)

    def _pass_on(self, sig: int) -> None:
        self._signal_child(sig)

    async def _supervise(self, up: Upstream, server: asyncio.Server) -> None:
        """Watch the connection; on loss, hang up on the child or reconnect."""
        router = self.router
        assert router is not None
        while True:
            await up.lost.wait()
            router.lost()
            await up.close()
            warn("lost connection to server")
            if not self.opts.reconnect:
                server.close()
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)  # new clients fail at once
                router.close_children()
                if not self.opts.nohup:
                    self._signal_child(signal.SIGHUP)
                    self._signal_child(signal.SIGCONT)
                return
            up = await self._reconnect()
            warn("reconnected to server")

    async def _reconnect(self) -> Upstream:
        router = self.router
        assert router is not None
        said = ""
        while True:
            await asyncio.sleep(RECONNECT_INTERVAL)
            try:
                up = await self.connect()
            except SdexecError as exc:
                if exc.message != said:  # say why once, not every 2 s
                    said = exc.message
                    warn(f"reconnecting: {said}")
                continue
            try:
                await router.renew(up)
                await up.rpc("state-machine.wait")
            except OSError:
                await up.close()
                router.lost()
                continue
            return up

    def _signal_child(self, sig: int) -> None:
        # os.kill, not Process.send_signal: that polls (waitpid) first, so when
        # SIGCONT follows the SIGHUP that killed the child it reaps the child
        # under asyncio's watcher, which then reports 255.  Until the watcher
        # reaps it, the pid stays ours (a zombie), so it cannot be reused.
        if self.child is not None and self.child.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.child.pid, sig)


async def _guard(work: Awaitable[None]) -> None:
    try:
        await work
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a failing request handler must not end the proxy
        warn(f"internal error: {exc!r}")


def run(opts: ProxyOptions) -> int:
    """Run the proxy; returns the exit status."""
    from sdexec.base import logconfig

    # The transport's rare warnings: stderr, never the child's stdout.
    logconfig.configure("warning")
    # An ignored SIGCHLD survives exec(2); with it the kernel reaps our child
    # before we can, and its status is lost (asyncio reports 255).
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        return asyncio.run(Proxy(opts).run())
    except (SdexecError, BaseExceptionGroup) as exc:
        failure = _sdexec_error(exc)
        if failure is None:
            raise
        warn(failure.message)
        if isinstance(failure, CommandFailed):  # 127 not found, 126 not executable
            return exec_error_exit_code(failure.errno)
        return 125  # sdexec itself failed, as for exec (docs/reference/exit-status.md)
    except KeyboardInterrupt:  # before the child ran (after, SIGINT is the child's)
        return 130


def _sdexec_error(exc: BaseException) -> SdexecError | None:
    """The SdexecError an error is, or is the only kind in (a TaskGroup's group)."""
    if isinstance(exc, SdexecError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        inner = [_sdexec_error(e) for e in exc.exceptions]
        if inner and all(e is not None for e in inner):
            return inner[0]
    return None
