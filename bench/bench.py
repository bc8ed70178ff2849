"""sdexec measured side by side with its peers and with the limit, in one run.

Usage::

    PYTHONPATH=. .venv/bin/python bench/bench.py [--quick] [--json FILE] [--only CASES]

It starts a server on the embedded default (a private confined systemd user
manager when this machine has no user manager) and measures, in one run:

1. exec latency, ``/bin/true`` to finished (300 rounds; 50 with --quick),
   interleaved round-robin so that every case sees the same machine state:
   the sdexec client API over one persistent connection; the ``sdexec exec``
   CLI as a whole process; ``systemd-run --user --wait --pipe -q``; the raw
   floor (dbus-fast StartTransientUnit with stdio fds to the finished signal
   and both pipes at EOF, nothing else); a direct asyncio child.  Then the
   same cases again (at most 100 rounds) with 100 ms of quiet before every
   launch, as for a command typed at a shell: a unit's process then pays
   for a full RCU grace period when systemd moves it into its cgroup, which
   a launch right after another one skips (see docs/records/performance.md);
2. 1,000 background units (400 with --quick) (``sleep``) started concurrently through sdexec
   (non-streaming exec, to ``started``) against 1,000 concurrent raw
   StartTransientUnit calls (to the unit running); all are killed and
   checked gone afterwards;
3. output forwarding from a unit to a client in MB/s, UTF-8 text and binary
   (base64 on the wire), 1 GiB each (256 MiB with --quick), against reading
   the same kind of unit's stdout pipe directly in 64 KiB reads;
4. stdin: 100 MiB through RFC 42 credits into ``cat > /dev/null``;
5. server RSS idle and with the 1,000 background units, and per unit;
6. RPC rate: ``attr.get`` and ``sdexec.list`` round trips per second on one
   connection and on ten;
7. proxy overhead: exec latency through ``sdexec proxy`` against direct,
   when this build has ``sdexec proxy``.

MB is 10^6 bytes.  This is a benchmark, not a test: it prints, it never
asserts.  Targets (issue 8) are shown next to the ratios they constrain.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sdexec.client.handle import Handle  # noqa: E402
from sdexec.client.process import RemoteProcess, run  # noqa: E402
from sdexec.systemd import properties  # noqa: E402
from sdexec.systemd.bus import SystemdBus  # noqa: E402
from sdexec.systemd.unitstate import ExecFailed, Finished, Started, UnitTracker  # noqa: E402

TRUE = "/bin/true"
MIB = 1 << 20
MB = 1e6
PATH_ENV = {"PATH": "/usr/bin:/bin"}
STDIN_BUFSIZE = "1m"  # the stdin_BUFSIZE option of the stdin case
CHUNK_FILE_SIZE = 16 * MIB
# The second latency table: every launch after this much quiet, as a command
# typed at a shell is.  A launch shortly after another one skips the kernel's
# RCU grace period in the cgroup migration of the new process (see docs/records/performance.md).
IDLE_S = 0.1
IDLE_RUNS = 100  # the file a unit cats over and over for output


def child_env() -> dict[str, str]:
    """This environment with this tree first on PYTHONPATH (for every child Python)."""
    env = dict(os.environ)
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO) if not old else f"{REPO}:{old}"
    return env


def proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- the server -------------------------------------------------------------------------------


class Env:
    """A server (and the manager under it) for the benchmark's lifetime."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="sdx-bench-", dir="/tmp"))
        self.socket = str(self.dir / "local")
        self.uri = f"local://{self.socket}"
        self.state = self.dir / "state"
        self.proc: subprocess.Popen[bytes] | None = None
        self.bus_address = ""
        self.mode = ""
        self.manager_env: dict[str, str] = dict(os.environ)

    def start(self) -> None:
        from sdexec.server.daemon import user_bus_address

        self.mode = "user" if user_bus_address() else "private"
        log = open(self.dir / "server.log", "wb")  # noqa: SIM115 - lives as long as the server
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sdexec.cli.main",
                "serve",
                "--uri",
                self.uri,
                "--state-dir",
                str(self.state),
                "--log-level",
                "warning",
                "--systemd",
                self.mode,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd=REPO,
            env=child_env(),
        )
        deadline = time.monotonic() + 30
        while not os.path.exists(self.socket):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not start; see {self.dir / 'server.log'}")
            time.sleep(0.02)
        if self.mode == "private":
            from sdexec.systemd.private import PrivateManager

            m = PrivateManager(self.state)
            self.bus_address = m.bus_address
            self.manager_env = m.env()
        else:
            self.bus_address = user_bus_address() or ""

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the server has used so far."""
        assert self.proc is not None
        return proc_cpu_s(self.proc.pid)

    def manager_cpu_s(self) -> float | None:
        """CPU seconds the private manager has used so far (None for another manager)."""
        if self.mode != "private":
            return None
        from sdexec.systemd.private import PrivateManager

        pid = PrivateManager(self.state).pid()
        return None if pid is None else proc_cpu_s(pid)

    def rss_kib(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.mode == "private":
            # The server stops its manager on exit; should it have failed to
            # (a server that lost its bus), nothing of the manager stays behind.
            from sdexec.systemd.private import PrivateManager

            PrivateManager(self.state).stop()
        shutil.rmtree(self.dir, ignore_errors=True)


# --- raw D-Bus units: the floor ---------------------------------------------------------------


class RawUnits:
    """StartTransientUnit with stdio fds, watched to started/finished; nothing else."""

    def __init__(self, address: str) -> None:
        self.bus = SystemdBus(address)
        self.n = 0

    async def start(
        self, argv: list[str], fds: list[int], *, until: type = Finished
    ) -> tuple[str, asyncio.Future[None]]:
        """Start a unit with ``fds`` as (stdin, stdout, stderr); returns (unit, done).

        ``done`` resolves when the unit has reached ``until`` (Started or Finished).
        """
        self.n += 1
        unit = f"bench-raw-{os.getpid()}-{self.n}.service"
        tracker = UnitTracker()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def events(evs: Sequence[object]) -> None:
            for e in evs:
                if done.done():
                    return
                if isinstance(e, ExecFailed):
                    done.set_exception(RuntimeError(f"{unit}: {e.message}"))
                elif isinstance(e, (until, Finished)):
                    done.set_result(None)

        class Listener:
            def service_changed(self, props: dict[str, object]) -> None:
                tracker.service_changed(props)

            def unit_changed(self, props: dict[str, object]) -> None:
                events(tracker.unit_changed(props))

            def job_removed(self, result: str) -> None:
                events(tracker.job_removed(result))

        self.bus.watch(unit, Listener())
        spec = properties.UnitSpec(argv=argv, stdin_fd=0, stdout_fd=1, stderr_fd=2)
        await self.bus.start_transient(unit, spec.properties(), fds)
        return unit, done

    async def true_once(self) -> None:
        """/bin/true to finished, with both output pipes read to EOF."""
        r, w = os.pipe()
        null = os.open(os.devnull, os.O_RDONLY)
        try:
            unit, done = await self.start([TRUE], [null, w, w])
        finally:
            os.close(w)
            os.close(null)
        await done
        while os.read(r, 65536):
            pass
        os.close(r)
        self.bus.unwatch(unit)

    async def read_output(self, argv: list[str]) -> int:
        """Run ``argv`` with stdout a pipe read here in 64 KiB reads; bytes read."""
        loop = asyncio.get_running_loop()
        r, w = os.pipe2(os.O_CLOEXEC)
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        try:
            unit, done = await self.start(argv, [null, w, null])
        finally:
            os.close(w)
            os.close(null)
        os.set_blocking(r, False)
        eof: asyncio.Future[None] = loop.create_future()
        total = 0

        def readable() -> None:
            nonlocal total
            try:
                data = os.read(r, 65536)
            except BlockingIOError:
                return
            if data:
                total += len(data)
            else:
                loop.remove_reader(r)
                eof.set_result(None)

        loop.add_reader(r, readable)
        await eof
        await done
        os.close(r)
        self.bus.unwatch(unit)
        return total


# --- exec latency -----------------------------------------------------------------------------


async def asyncio_child() -> None:
    proc = await asyncio.create_subprocess_exec(
        TRUE,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    await proc.communicate()


def whole_process(argv: list[str], env: dict[str, str]) -> Callable[[], Awaitable[None]]:
    async def once() -> None:
        proc = await asyncio.create_subprocess_exec(
            *argv, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL
        )
        if await proc.wait() != 0:
            raise RuntimeError(f"{argv[0]} failed")

    return once


def cli_argv() -> list[str]:
    """The ``sdexec`` command of this interpreter's environment (run by its own
    shebang, ``python -S``: see bin/sdexec), else ``python -m``."""
    script = Path(sys.executable).with_name("sdexec")
    if os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "sdexec.cli.main"]


def summary(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {
        "median_ms": statistics.median(s) * 1e3,
        "p95_ms": s[min(len(s) - 1, round(0.95 * (len(s) - 1)))] * 1e3,
        "min_ms": s[0] * 1e3,
        "runs": len(s),
    }


async def interleaved(
    cases: dict[str, Callable[[], Awaitable[None]]], runs: int, idle: float = 0.0
) -> dict[str, dict[str, float]]:
    """Each case ``runs`` times, round-robin; ``idle`` seconds of quiet before each."""
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for fn in cases.values():  # warm up each path
        await fn()
        await fn()
    for _ in range(runs):
        for name, fn in cases.items():
            if idle:
                await asyncio.sleep(idle)
            t0 = time.perf_counter()
            await fn()
            samples[name].append(time.perf_counter() - t0)
    return {name: summary(s) for name, s in samples.items()}


def api_true(handle: Handle) -> Callable[[], Awaitable[None]]:
    async def once() -> None:
        result = await run(handle, [TRUE], env=PATH_ENV)
        if result.status != 0:
            raise RuntimeError("exec failed")

    return once


async def bench_latency(env: Env, raw: RawUnits, runs: int, idle: float = 0.0) -> dict[str, Any]:
    handle = await Handle.connect(env.uri)
    cli_env = child_env()
    cli_env["SDEXEC_URI"] = env.uri
    cases: dict[str, Callable[[], Awaitable[None]]] = {
        "sdexec API": api_true(handle),
        "sdexec exec CLI": whole_process([*cli_argv(), "exec", "-n", "--", TRUE], cli_env),
        "systemd-run": whole_process(
            ["systemd-run", "--user", "--wait", "--pipe", "-q", TRUE], env.manager_env
        ),
        "raw floor": raw.true_once,
        "asyncio child": asyncio_child,
    }
    try:
        return await interleaved(cases, runs, idle)
    finally:
        await handle.close()


# --- 1,000 concurrent units, RSS --------------------------------------------------------------


async def units_gone(raw: RawUnits, pattern: str, limit: float = 60) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if not await raw.bus.list_units([pattern]):
            return True
        await asyncio.sleep(0.2)
    return False


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def cpu_delta(now: float | None, before: float | None) -> float | None:
    return None if now is None or before is None else now - before


async def bench_concurrent(env: Env, raw: RawUnits, n: int) -> dict[str, Any]:
    out: dict[str, Any] = {"units": n}
    handle = await Handle.connect(env.uri)
    try:
        await run(handle, [TRUE], env=PATH_ENV)  # warm
        await asyncio.sleep(0.5)
        out["rss_idle_kib"] = env.rss_kib()
        payload = {
            "cmd": {"cmdline": ["sleep", "300"], "env": PATH_ENV, "opts": {}, "channels": []},
            "flags": 0,
            "local_flags": 0,
        }
        manager0, server0 = env.manager_cpu_s(), env.cpu_s()
        t0 = time.perf_counter()
        resps = await asyncio.gather(
            *(handle.rpc("sdexec.exec", payload) for _ in range(n)), return_exceptions=True
        )
        out["sdexec_s"] = time.perf_counter() - t0
        out["sdexec_server_cpu_s"] = env.cpu_s() - server0
        out["sdexec_manager_cpu_s"] = cpu_delta(env.manager_cpu_s(), manager0)
        pids = [r["pid"] for r in resps if isinstance(r, dict)]
        errors = [str(r) for r in resps if not isinstance(r, dict)]
        out["sdexec_failed"] = len(errors)
        out["sdexec_first_error"] = errors[0] if errors else None
        await asyncio.sleep(0.5)
        out["rss_units_kib"] = env.rss_kib()
        out["rss_per_unit_kib"] = (out["rss_units_kib"] - out["rss_idle_kib"]) / n
        await asyncio.gather(
            *(handle.rpc("sdexec.kill", {"pid": p, "signum": signal.SIGKILL}) for p in pids)
        )
        out["sdexec_all_gone"] = await units_gone(raw, "sdexec-*.service")
        listed = await handle.rpc("sdexec.list", {})
        out["sdexec_left_in_list"] = len(listed.get("procs", []))
    finally:
        await handle.close()

    # The raw floor: the same units, StartTransientUnit calls in flight at once,
    # each to the unit running (what sdexec's `started` response means).
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        manager0 = env.manager_cpu_s()
        t0 = time.perf_counter()
        started = await asyncio.gather(
            *(raw.start(["/bin/sleep", "300"], [null, null, null], until=Started) for _ in range(n))
        )
        await asyncio.gather(*(done for _unit, done in started))
        out["raw_s"] = time.perf_counter() - t0
        out["raw_manager_cpu_s"] = cpu_delta(env.manager_cpu_s(), manager0)
    finally:
        os.close(null)
    units = [unit for unit, _done in started]
    await asyncio.gather(*(raw.bus.kill(u, signal.SIGKILL) for u in units))
    out["raw_all_gone"] = await units_gone(raw, "bench-raw-*.service")
    for u in units:
        raw.bus.unwatch(u)
    return out


# --- output forwarding ------------------------------------------------------------------------


def make_source(dirpath: Path, kind: str) -> Path:
    """A 16 MiB file of random bytes, or of UTF-8 text like a program's log.

    The text is log lines, mostly ASCII, one in eight with multi-byte
    characters (so every chunk needs a real UTF-8 check).
    """
    path = dirpath / f"source-{kind}"
    if kind == "ascii":
        lines = [
            f"2026-11-23T09:{i % 60:02d}:{i * 7 % 60:02d}.{i:06d}Z node{i % 97:03d} "
            f"job[{4000 + i}]: step {i} of 100000 done in {i % 1000 / 7:.3f} s, ok\n"
            for i in range(1024)
        ]
        data = "".join(lines).encode()
        path.write_bytes((data * (CHUNK_FILE_SIZE // len(data) + 1))[:CHUNK_FILE_SIZE])
    elif kind == "text":
        lines = [
            f"2026-11-23T09:{i % 60:02d}:{i * 7 % 60:02d}.{i:06d}Z node{i % 97:03d} "
            f"job[{4000 + i}]: step {i} of 100000 done in {i % 1000 / 7:.3f} s, "
            + ("résumé: 21 °C, €5 — ok\n" if i % 8 == 0 else "checkpoint written, ok\n")
            for i in range(1024)
        ]
        data = "".join(lines).encode()
        path.write_bytes((data * (CHUNK_FILE_SIZE // len(data) + 1))[:CHUNK_FILE_SIZE])
    else:
        path.write_bytes(os.urandom(CHUNK_FILE_SIZE))
    os.chmod(dirpath, 0o755)
    os.chmod(path, 0o644)
    return path


def cat_argv(path: Path, size: int) -> list[str]:
    reps = size // CHUNK_FILE_SIZE
    return [
        "/bin/sh",
        "-c",
        f'i=0; while [ $i -lt {reps} ]; do cat "$1"; i=$((i+1)); done',
        "sh",
        str(path),
    ]


async def sdexec_output(handle: Handle, argv: list[str]) -> tuple[int, float]:
    total = 0

    def count(_stream: str, data: bytes) -> None:
        nonlocal total
        total += len(data)

    from sdexec.client.exec import build_command

    proc = RemoteProcess(handle, build_command(argv, env=PATH_ENV), on_output=count)
    t0 = time.perf_counter()
    await proc.start()
    proc.close_stdin()
    status = await proc.wait()
    elapsed = time.perf_counter() - t0
    if status != 0:
        raise RuntimeError(f"output source failed: status {status}")
    return total, elapsed


async def bench_output(env: Env, raw: RawUnits, size: int) -> dict[str, Any]:
    out: dict[str, Any] = {"bytes": size}
    handle = await Handle.connect(env.uri)
    try:
        for kind in ("text", "ascii", "binary"):
            src = make_source(env.dir, kind)
            argv = cat_argv(src, size)
            cpu0, own0 = env.cpu_s(), time.process_time()
            n, t = await sdexec_output(handle, argv)
            server_cpu, client_cpu = env.cpu_s() - cpu0, time.process_time() - own0
            if n != size:
                raise RuntimeError(f"sdexec forwarded {n} bytes, expected {size}")
            t0 = time.perf_counter()
            m = await raw.read_output(argv)
            rt = time.perf_counter() - t0
            if m != size:
                raise RuntimeError(f"raw pipe read {m} bytes, expected {size}")
            out[kind] = {
                "sdexec_MBps": size / t / MB,
                "raw_MBps": size / rt / MB,
                # CPU per GiB: the cost, independent of how loaded the machine is
                "server_cpu_s_per_GiB": server_cpu * (1 << 30) / size,
                "client_cpu_s_per_GiB": client_cpu * (1 << 30) / size,
            }
            src.unlink()
    finally:
        await handle.close()
    return out


# --- stdin ------------------------------------------------------------------------------------


async def bench_stdin(env: Env, size: int) -> dict[str, Any]:
    from sdexec.client.exec import build_command

    handle = await Handle.connect(env.uri)
    block = (b"stdin through credits, 0123456789abcdefghijklmnopqrstuvwxyz\n" * 17000)[:MIB]
    try:
        command = build_command(
            ["/bin/sh", "-c", "cat > /dev/null"],
            env=PATH_ENV,
            opts={"stdin_BUFSIZE": STDIN_BUFSIZE},
        )
        proc = RemoteProcess(handle, command)
        await proc.start()
        cpu0, own0 = env.cpu_s(), time.process_time()
        t0 = time.perf_counter()
        sent = 0
        while sent < size:
            await proc.write(block)
            sent += len(block)
        proc.close_stdin()
        status = await proc.wait()
        elapsed = time.perf_counter() - t0
        server_cpu, client_cpu = env.cpu_s() - cpu0, time.process_time() - own0
    finally:
        await handle.close()
    if status != 0:
        raise RuntimeError(f"cat failed: status {status}")
    return {
        "bytes": sent,
        "MBps": sent / elapsed / MB,
        "stdin_BUFSIZE": STDIN_BUFSIZE,
        "server_cpu_s_per_GiB": server_cpu * (1 << 30) / sent,
        "client_cpu_s_per_GiB": client_cpu * (1 << 30) / sent,
    }


# --- RPC rate ---------------------------------------------------------------------------------


async def rpc_loop(handle: Handle, topic: str, payload: dict[str, Any], seconds: float) -> int:
    n = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for _ in range(50):
            await handle.rpc(topic, payload)
        n += 50
    return n


async def bench_rpc(env: Env, seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for topic, payload in (("attr.get", {"name": "rank"}), ("sdexec.list", {})):
        handle = await Handle.connect(env.uri)
        try:
            await rpc_loop(handle, topic, payload, 0.2)
            t0 = time.perf_counter()
            n = await rpc_loop(handle, topic, payload, seconds)
            out[f"{topic} 1 conn"] = n / (time.perf_counter() - t0)
        finally:
            await handle.close()
        handles = [await Handle.connect(env.uri) for _ in range(10)]
        try:
            t0 = time.perf_counter()
            counts = await asyncio.gather(*(rpc_loop(h, topic, payload, seconds) for h in handles))
            out[f"{topic} 10 conns"] = sum(counts) / (time.perf_counter() - t0)
        finally:
            for h in handles:
                await h.close()
    return out


# --- proxy ------------------------------------------------------------------------------------


def proxy_available() -> bool:
    r = subprocess.run(
        [sys.executable, "-m", "sdexec.cli.main", "proxy", "--help"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=child_env(),
        cwd=REPO,
        check=False,
    )
    return r.returncode == 0


async def bench_proxy(env: Env, runs: int) -> dict[str, Any] | None:
    """Exec latency through ``sdexec proxy`` against direct, interleaved."""
    if not proxy_available():
        return None
    # The proxy's child prints the socket it was handed and waits for stdin EOF.
    child = "import os, sys; print(os.environ['SDEXEC_URI'], flush=True); sys.stdin.read()"
    proxy = await asyncio.create_subprocess_exec(
        *cli_argv(),
        "proxy",
        env.uri,
        sys.executable,
        "-c",
        child,
        env=child_env(),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proxy.stdout is not None and proxy.stdin is not None
    try:
        line = await asyncio.wait_for(proxy.stdout.readline(), 30)
        proxy_uri = line.decode().strip()
        if not proxy_uri:
            raise RuntimeError("sdexec proxy did not start its child")
        direct = await Handle.connect(env.uri)
        via = await Handle.connect(proxy_uri)
        try:
            res = await interleaved({"direct": api_true(direct), "via proxy": api_true(via)}, runs)
        finally:
            await via.close()
            await direct.close()
    finally:
        proxy.stdin.close()
        try:
            await asyncio.wait_for(proxy.wait(), 10)
        except TimeoutError:
            proxy.kill()
            await proxy.wait()
    return res


# --- the run ----------------------------------------------------------------------------------


async def measure(env: Env, args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    raw = RawUnits(env.bus_address)
    await raw.bus.connect()
    only = set(args.only.split(",")) if args.only else None

    def want(name: str) -> bool:
        return only is None or name in only

    try:
        if want("latency"):
            step("exec latency")
            results["exec_latency"] = await bench_latency(env, raw, args.runs)
            step(f"exec latency from idle ({IDLE_S * 1000:.0f} ms before each launch)")
            results["exec_latency_idle"] = await bench_latency(
                env, raw, min(args.runs, IDLE_RUNS), IDLE_S
            )
        if want("rpc"):
            step("RPC rate")
            results["rpc_rate"] = await bench_rpc(env, args.rpc_seconds)
        if want("units"):
            step(f"{args.units} concurrent units")
            results["concurrent_units"] = await bench_concurrent(env, raw, args.units)
        if want("output"):
            step(f"output forwarding, {args.output_mib} MiB each")
            results["output"] = await bench_output(env, raw, args.output_mib * MIB)
        if want("stdin"):
            step("stdin")
            results["stdin"] = await bench_stdin(env, args.stdin_mib * MIB)
        if want("proxy"):
            step("proxy")
            results["proxy"] = await bench_proxy(env, args.runs)
    finally:
        raw.bus.close()
    return results


def step(what: str) -> None:
    print(f"... {what}", file=sys.stderr, flush=True)


# --- the table --------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def _latency_rows(lat: dict[str, Any], row: Callable[..., None]) -> None:
    floor = lat["raw floor"]["median_ms"]
    srun = lat["systemd-run"]["median_ms"]
    for name, r in lat.items():
        m = r["median_ms"]
        target = ""
        if name == "sdexec API":
            ok = m <= 1.3 * floor and m <= 0.5 * srun
            target = f"<=1.3x floor, <=0.5x s-run: {verdict(ok)}"
        elif name == "sdexec exec CLI":
            target = f"<=2x s-run: {verdict(m <= 2 * srun)}"
        row(
            name,
            f"{m:.2f} ms",
            f"{r['p95_ms']:.2f} ms",
            f"{m / floor:.2f}",
            f"{m / srun:.2f}",
            target,
        )


def table(results: dict[str, Any], args: argparse.Namespace) -> list[str]:
    rows: list[str] = []
    w = 34

    def row(name: str, a: str, b: str = "", c: str = "", d: str = "", e: str = "") -> None:
        rows.append(f"{name:<{w}}{a:>10}{b:>10}{c:>8}{d:>11}  {e}")

    for key, title in (
        ("exec_latency", "1. exec true, back to back"),
        ("exec_latency_idle", f"1b. exec true, {IDLE_S * 1000:.0f} ms idle"),
    ):
        lat = results.get(key)
        if lat:
            runs = lat["sdexec API"]["runs"]
            row(f"{title} ({runs})", "median", "p95", "x floor", "x s-run", "target")
            _latency_rows(lat, row)
    cu = results.get("concurrent_units")
    if cu:
        ratio = cu["sdexec_s"] / cu["raw_s"]
        note = " (quick: fewer than 1000)" if cu["units"] < 1000 else ""
        row(f"2. {cu['units']} concurrent units{note}", "wall", "mgr CPU", "x floor", "srv CPU")
        row(
            "sdexec background exec",
            f"{cu['sdexec_s']:.2f} s",
            _seconds(cu.get("sdexec_manager_cpu_s")),
            f"{ratio:.2f}",
            _seconds(cu.get("sdexec_server_cpu_s")),
            f"<=1.5x floor: {verdict(ratio <= 1.5)}",
        )
        row(
            "raw StartTransientUnit",
            f"{cu['raw_s']:.2f} s",
            _seconds(cu.get("raw_manager_cpu_s")),
            "1.00",
        )
        row("all killed and gone", f"{cu['sdexec_all_gone'] and cu['raw_all_gone']}")
        if cu["sdexec_failed"]:
            row(
                "sdexec execs that failed",
                str(cu["sdexec_failed"]),
                "",
                "",
                "",
                cu["sdexec_first_error"],
            )
    out = results.get("output")
    if out:
        mib = out["bytes"] // MIB
        note = " (quick: less than 1 GiB)" if mib < 1024 else ""
        row(
            f"3. output, {mib} MiB each{note}", "sdexec", "raw pipe", "x raw", "CPU s/GiB"
        )  # server+client CPU
        for kind, label in (
            ("text", "UTF-8 text, 1/8 lines multi-byte"),
            ("ascii", "UTF-8 text, ASCII only"),
            ("binary", "binary (base64)"),
        ):
            r = out[kind]
            ratio = r["sdexec_MBps"] / r["raw_MBps"]
            target = f">=0.3x raw: {verdict(ratio >= 0.3)}"
            if kind != "binary":
                target += f"; >=500 MB/s: {verdict(r['sdexec_MBps'] >= 500)}"
            cpu = f"{r['server_cpu_s_per_GiB']:.1f}+{r['client_cpu_s_per_GiB']:.1f}"
            row(
                label,
                f"{r['sdexec_MBps']:.0f} MB/s",
                f"{r['raw_MBps']:.0f} MB/s",
                f"{ratio:.2f}",
                cpu,
                target,
            )
    si = results.get("stdin")
    if si:
        row(
            f"4. stdin, {si['bytes'] // MIB} MiB, stdin_BUFSIZE={si['stdin_BUFSIZE']}",
            "",
            "",
            "",
            "CPU s/GiB",
        )
        row(
            "into cat > /dev/null",
            f"{si['MBps']:.0f} MB/s",
            "",
            "",
            f"{si['server_cpu_s_per_GiB']:.1f}+{si['client_cpu_s_per_GiB']:.1f}",
            f">=200 MB/s: {verdict(si['MBps'] >= 200)}",
        )
    if cu:
        row("5. server RSS", "")
        row("idle", f"{cu['rss_idle_kib'] / 1024:.1f} MB")
        row(
            f"with {cu['units']} background units",
            f"{cu['rss_units_kib'] / 1024:.1f} MB",
            "",
            "",
            "",
            f"<100 MB: {verdict(cu['rss_units_kib'] / 1024 < 100)}",
        )
        row("per unit", f"{cu['rss_per_unit_kib']:.1f} KiB")
    rpc = results.get("rpc_rate")
    if rpc:
        row("6. RPC round trips", "per s")
        for name, rate in rpc.items():
            row(name, f"{rate:,.0f}")
    if "proxy" in results:
        px = results["proxy"]
        if px is None:
            row("7. proxy: not available in this build", "")
        else:
            d, v = px["direct"], px["via proxy"]
            added = v["median_ms"] - d["median_ms"]
            row("7. proxy, exec /bin/true", "median", "p95", "added")
            row("direct", f"{d['median_ms']:.2f} ms", f"{d['p95_ms']:.2f} ms")
            row(
                "via sdexec proxy",
                f"{v['median_ms']:.2f} ms",
                f"{v['p95_ms']:.2f} ms",
                f"{added:.2f}",
                "",
                f"<=1 ms: {verdict(added <= 1.0)}",
            )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller run, under 2 minutes")
    parser.add_argument("--runs", type=int, help="exec latency rounds per case (default 300)")
    parser.add_argument("--units", type=int, help="concurrent units (1000; quick 400)")
    parser.add_argument("--output-mib", type=int, help="output per case (1024; quick 256)")
    parser.add_argument("--stdin-mib", type=int, default=100, help="stdin volume (default 100)")
    parser.add_argument("--rpc-seconds", type=float, help="seconds per RPC case (3; quick 1)")
    parser.add_argument("--only", help="comma-separated: latency,rpc,units,output,stdin,proxy")
    parser.add_argument(
        "--json",
        metavar="FILE",
        default=str(REPO / "bench" / "results.json"),
        help="where to write the results (default bench/results.json)",
    )
    args = parser.parse_args()
    if args.runs is None:
        args.runs = 50 if args.quick else 300
    if args.units is None:
        args.units = 400 if args.quick else 1000
    if args.output_mib is None:
        args.output_mib = 256 if args.quick else 1024
    if args.rpc_seconds is None:
        args.rpc_seconds = 1.0 if args.quick else 3.0
    # Bytecode as an installed package has it (pip compiles at install time);
    # without it every CLI run recompiles sdexec (PYTHONDONTWRITEBYTECODE).
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(REPO / "sdexec")],
        env={k: v for k, v in child_env().items() if k != "PYTHONDONTWRITEBYTECODE"},
        stdout=subprocess.DEVNULL,
        check=False,
    )
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # clean up on SIGTERM too
    env = Env()
    t0 = time.monotonic()
    try:
        env.start()
        results = asyncio.run(measure(env, args))
    finally:
        env.stop()
    elapsed = time.monotonic() - t0
    rows = table(results, args)
    mode = "quick" if args.quick else "full"
    print(
        f"sdexec benchmark ({mode} run, {env.mode} manager, {os.cpu_count()} CPUs, {elapsed:.0f} s)"
    )
    print("\n".join(rows))
    print("(MB = 10^6 bytes; ratios are of medians measured in this run)")
    write_results(args, env, elapsed, results, rows, mode=mode)
    return 0


def write_results(
    args: argparse.Namespace,
    env: Env,
    elapsed: float,
    results: dict[str, Any],
    rows: list[str],
    **extra: Any,
) -> None:
    """A run's results and printed table as JSON, to ``args.json``."""
    record = {
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "time": time.time(),
        **extra,
        "manager": env.mode,
        "args": vars(args),
        "elapsed_s": elapsed,
        "results": results,
        "table": rows,
    }
    Path(args.json).write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    sys.exit(main())
