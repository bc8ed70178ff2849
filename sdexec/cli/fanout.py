"""``sdexec exec|ps|kill|wait -r IDSET``: the multi-rank forms of the commands.

Theory of operation
-------------------
With ``-r`` (or ``-x``) a command addresses the ranks of a hosts file
(:mod:`sdexec.cluster.hosts`) instead of one ``--uri``.  Everything here runs in one
asyncio event loop (:mod:`sdexec.cluster.fanout`): all ranks are contacted at
once, so four ranks start in about the time of one.  This module is imported
only when ``-r`` is given; the single-rank commands keep the blocking client
and never import asyncio.

``exec -r`` copies every rank's output to sdexec's own (each line prefixed
with ``RANK: `` under ``-l``), broadcasts stdin with per-rank credit,
forwards SIGINT/SIGTERM to every rank, and exits with the highest exit code
of any rank (68 for an unreachable rank, when nothing is worse).  When some
rank did not succeed, a summary on stderr groups the ranks by outcome in
RFC 22 form (``sdexec: [3,7]: exit 1``); unreachable ranks are listed apart,
each with the reason.  Each rank's command also gets ``SDEXEC_RANK`` in its
environment.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from sdexec.base.errors import SdexecError
from sdexec.cli.common import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_SDEXEC_FAILED,
    error,
)
from sdexec.cli.exec import FORWARDED_SIGNALS, command_from_args, exec_flags
from sdexec.cli.ps import FIELDS, default_format, header, list_payload, rows
from sdexec.cli.signing import NEVER, apply_async, sign_options
from sdexec.client.exec import (
    EXEC_TOPIC,
    KILL_TOPIC,
    LIST_TOPIC,
    WAIT_TOPIC,
    exec_payload,
)
from sdexec.client.handle import Handle
from sdexec.cluster.fanout import (
    LineLabeler,
    Prepare,
    RankProcess,
    StdinReader,
    broadcast_stdin,
    connect,
    kill_all,
)
from sdexec.cluster.hosts import Host
from sdexec.cluster.outcome import (
    EXIT_NOHOST,
    Kind,
    Outcome,
    all_ok,
    exit_code,
    from_status,
    summary,
)
from sdexec.cluster.ranks import instance

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

RANK_ENV = "SDEXEC_RANK"
INTERRUPT_WINDOW = 1.0


def select_hosts(args: argparse.Namespace) -> list[Host]:
    """The hosts ``-r``/``-x``/``--hosts`` select (SdexecError if none)."""
    return instance(args.hosts).select(args.ranks, args.exclude)


def rank_command(command: dict[str, Any], host: Host) -> dict[str, Any]:
    """``command`` for one rank: the same, plus ``SDEXEC_RANK`` in its environment."""
    cmd = dict(command)
    cmd["env"] = {**command.get("env", {}), RANK_ENV: str(host.rank)}
    return cmd


def report_summary(outcomes: dict[int, Outcome]) -> None:
    """The summary on stderr, if some rank did not succeed."""
    if not all_ok(outcomes.values()):
        for line in summary(outcomes):
            error(line)


# --- exec ---------------------------------------------------------------------------------


class _Output:
    """Where the ranks' output goes: sdexec's stdout/stderr, labelled or raw."""

    def __init__(self, label: bool, on_broken_pipe: Callable[[], None], host: bool = False) -> None:
        self.labeler = LineLabeler() if label or host else None
        self.host = host
        self.fds = {"stdout": 1, "stderr": 2}
        self.on_broken_pipe = on_broken_pipe

    def __call__(self, proc: RankProcess, stream: str, data: bytes, eof: bool) -> None:
        fd = self.fds.get(stream)
        if fd is None:
            return
        if self.labeler is not None:
            name = proc.host.name if self.host else None
            data = self.labeler.feed(proc.rank, stream, data, eof, name)
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(fd, view) :]
        except BrokenPipeError:
            del self.fds[stream]
            self.on_broken_pipe()


class Unreachable(SdexecError):
    """No connection to a rank's server."""


def _describe(exc: SdexecError) -> str:
    return f"unreachable: {exc.message}" if isinstance(exc, Unreachable) else exc.message


class _GiveUp(Exception):
    """A second SIGINT within INTERRUPT_WINDOW: stop waiting for the ranks."""


async def _forward_signals(procs: list[RankProcess], queue: asyncio.Queue[int]) -> None:
    """Forward each signal to every rank; a delivery that waits (for a rank that
    has not started yet) does not hold up the next signal."""
    last_sigint = -INTERRUPT_WINDOW
    async with asyncio.TaskGroup() as tg:
        while True:
            signum = await queue.get()
            if signum == signal.SIGINT:
                now = asyncio.get_running_loop().time()
                if now - last_sigint < INTERRUPT_WINDOW:
                    raise _GiveUp
                last_sigint = now
            tg.create_task(kill_all(procs, signum))


async def _exec_attached(
    args: argparse.Namespace, hosts: list[Host], command: dict[str, Any]
) -> int:
    loop = asyncio.get_running_loop()
    signals: asyncio.Queue[int] = asyncio.Queue()
    pipe_broken = False

    def broken_pipe() -> None:
        nonlocal pipe_broken
        if not pipe_broken:
            pipe_broken = True
            signals.put_nowait(signal.SIGPIPE)

    output = _Output(args.label_io, broken_pipe, host=getattr(args, "label_host", False))
    stdin_fd = _stdin_fd(args)
    prepare = _prepare(args)
    procs = [
        RankProcess(
            host,
            rank_command(command, host),
            flags=exec_flags(args),
            stdin=stdin_fd is not None,
            on_output=output,
            prepare=prepare,
        )
        for host in hosts
    ]
    for sig in FORWARDED_SIGNALS:
        loop.add_signal_handler(sig, signals.put_nowait, int(sig))
    try:
        async with asyncio.TaskGroup() as tg:
            runs = [tg.create_task(p.run()) for p in procs]
            helpers = [tg.create_task(_forward_signals(procs, signals))]
            if stdin_fd is not None:
                helpers.append(tg.create_task(broadcast_stdin(procs, StdinReader(stdin_fd))))
            await asyncio.wait(runs)
            for task in helpers:
                task.cancel()
    except BaseExceptionGroup as group:
        gave_up, rest = group.split(_GiveUp)
        if gave_up is None or rest is not None:
            raise
        error("interrupted; the servers stop the command")
        return EXIT_INTERRUPTED
    finally:
        for sig in FORWARDED_SIGNALS:
            loop.remove_signal_handler(sig)
    outcomes = {p.rank: p.outcome for p in procs if p.outcome is not None}
    report_summary(outcomes)
    return exit_code(outcomes.values())


def _stdin_fd(args: argparse.Namespace) -> int | None:
    if args.no_stdin:
        return None
    try:
        os.fstat(0)
    except OSError:
        return None
    return 0


def _prepare(args: argparse.Namespace) -> Prepare | None:
    """What each rank's connection needs before use: RFC 42 request signing, as
    ``--sign``/``--no-sign`` say (by default, where the server asks for it)."""
    options = sign_options(args)
    if options.mode == NEVER:
        return None

    async def prepare(handle: Handle) -> None:
        await apply_async(handle, options)

    return prepare


async def _rpc_all(
    args: argparse.Namespace,
    hosts: list[Host],
    call: Callable[[Any, Host], Awaitable[dict[str, Any]]],
) -> dict[int, dict[str, Any] | SdexecError]:
    """``call(handle, host)`` on every host at once: each rank's response or error."""
    prepare = _prepare(args)

    async def one(host: Host) -> dict[str, Any] | SdexecError:
        try:
            handle = await connect(host, prepare=prepare)
        except SdexecError as exc:
            return Unreachable(exc.errno or errno.EIO, exc.message)
        try:
            return await call(handle, host)
        except SdexecError as exc:
            return exc
        finally:
            await handle.close()

    async with asyncio.TaskGroup() as tg:
        tasks = {host.rank: tg.create_task(one(host)) for host in hosts}
    return {rank: task.result() for rank, task in tasks.items()}


async def _exec_background(
    args: argparse.Namespace, hosts: list[Host], command: dict[str, Any]
) -> int:
    def call(handle: Any, host: Host) -> Awaitable[dict[str, Any]]:
        payload = exec_payload(rank_command(command, host), exec_flags(args))
        return handle.rpc(EXEC_TOPIC, payload)  # type: ignore[no-any-return]

    results = await _rpc_all(args, hosts, call)
    rc = 0
    for rank, result in sorted(results.items()):
        pid = result.get("pid") if isinstance(result, dict) else None
        if isinstance(result, SdexecError):
            error(f"exec: rank {rank}: {_describe(result)}")
            rc = max(rc, _failed(result))
        elif not isinstance(pid, int):
            error(f"exec: rank {rank}: the server's response has no pid")
            rc = EXIT_FAILURE
        else:
            print(f"{rank}: {pid}", flush=True)
    return rc


def _failed(result: SdexecError) -> int:
    """A rank's exit code for a request that did not succeed: 68 unreachable, else 1.

    The highest code of all ranks is the command's, as for exec (docs/reference/exit-status.md).
    """
    return EXIT_NOHOST if isinstance(result, Unreachable) else EXIT_FAILURE


def run_exec(args: argparse.Namespace) -> int:
    """``sdexec exec -r IDSET``."""
    try:
        hosts = select_hosts(args)
        command = command_from_args(args)
    except SdexecError as exc:
        error(exc.message)
        return EXIT_FAILURE if args.bg else EXIT_SDEXEC_FAILED
    if args.pty:
        # A terminal is one server's: -r with one rank reaches it (through a
        # Flux broker by nodeid, or the hosts file's URI).
        if len(hosts) != 1:
            error("--pty needs one server: -r with a single rank")
            return EXIT_FAILURE if args.bg else EXIT_SDEXEC_FAILED
        from sdexec.cli.exec import run_command

        host = hosts[0]
        args.uri, args.nodeid = host.uri, host.nodeid
        return run_command(args, rank_command(command, host))
    if args.bg:
        return asyncio.run(_exec_background(args, hosts, command))
    return asyncio.run(_exec_attached(args, hosts, command))


# --- ps, kill, wait -------------------------------------------------------------------------


def run_ps(args: argparse.Namespace) -> int:
    """``sdexec ps -r IDSET``: every rank's processes, with a RANK column."""
    try:
        hosts = select_hosts(args)
    except SdexecError as exc:
        error(f"ps: {exc.message}")
        return EXIT_FAILURE

    def call(handle: Any, host: Host) -> Awaitable[dict[str, Any]]:
        return handle.rpc(LIST_TOPIC, list_payload(args))  # type: ignore[no-any-return]

    results = asyncio.run(_rpc_all(args, hosts, call))
    names = {host.rank: host.name for host in hosts}
    rc = 0
    procs: list[dict[str, Any]] = []
    responses = []
    for rank, result in sorted(results.items()):
        if isinstance(result, SdexecError):
            error(f"ps: rank {rank}: {_describe(result)}")
            rc = max(rc, _failed(result))
            continue
        result["rank"] = rank
        result.setdefault("host", names[rank])
        responses.append(result)
        procs.extend(rows(result))
    if args.json:
        print(json.dumps(responses), flush=True)
        return rc
    fmt = args.format
    if fmt is None:
        host_w = max([4] + [len(str(p["host"])) for p in procs])
        fmt = f"{{rank:>4}} {{host:<{host_w}}} "
        fmt += default_format(procs, args.stats, getattr(args, "long", False))
    try:
        lines = [header(fmt)] if not args.no_header else []
        lines.extend(fmt.format(**p).rstrip() for p in procs)
    except KeyError as exc:
        error(f"ps: unknown field {exc} in format (fields: {', '.join(FIELDS)})")
        return EXIT_FAILURE
    except (ValueError, IndexError) as exc:
        error(f"ps: bad format: {exc}")
        return EXIT_FAILURE
    sys.stdout.write("".join(line + "\n" for line in lines))
    sys.stdout.flush()
    return rc


def run_kill(args: argparse.Namespace) -> int:
    """``sdexec kill -r IDSET``: 0 if the signal reached the process on every rank."""
    try:
        hosts = select_hosts(args)
    except SdexecError as exc:
        error(f"kill: {exc.message}")
        return EXIT_FAILURE
    payload = dict(args.target_ref)
    payload["signum"] = args.signal

    def call(handle: Any, host: Host) -> Awaitable[dict[str, Any]]:
        return handle.rpc(KILL_TOPIC, payload)  # type: ignore[no-any-return]

    results = asyncio.run(_rpc_all(args, hosts, call))
    rc = 0
    for rank, result in sorted(results.items()):
        if isinstance(result, SdexecError):
            error(f"kill: rank {rank}: {args.target}: {_describe(result)}")
            rc = max(rc, _failed(result))
    return rc


def run_wait(args: argparse.Namespace) -> int:
    """``sdexec wait -r IDSET``: the highest exit status; a summary if not all 0."""
    try:
        hosts = select_hosts(args)
    except SdexecError as exc:
        error(f"wait: {exc.message}")
        return EXIT_SDEXEC_FAILED
    payload = dict(args.target_ref)

    def call(handle: Any, host: Host) -> Awaitable[dict[str, Any]]:
        return handle.rpc(WAIT_TOPIC, payload)  # type: ignore[no-any-return]

    results = asyncio.run(_rpc_all(args, hosts, call))
    outcomes: dict[int, Outcome] = {}
    for rank, result in results.items():
        if isinstance(result, SdexecError):
            kind = Kind.UNREACHABLE if isinstance(result, Unreachable) else Kind.FAILED
            outcomes[rank] = Outcome(kind, result.errno or errno.EIO, result.message)
            continue
        status = result.get("status")
        if not isinstance(status, int) or isinstance(status, bool):
            outcomes[rank] = Outcome(Kind.FAILED, errno.EPROTO, "the response has no status")
        else:
            outcomes[rank] = from_status(status)
    report_summary(outcomes)
    return exit_code(outcomes.values())
