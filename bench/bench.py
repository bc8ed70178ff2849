"""Exec latency of sdexec next to its peers, measured side by side in one run.

Usage::

    .venv/bin/python bench/bench.py [--runs 300] [--quick] [--json FILE]

It starts a server on the embedded default (a private confined systemd user
manager when this machine has no user manager), then measures "exec to
finished" for ``/bin/true`` through:

* ``sdexec API``   - the asyncio client over one persistent connection;
* ``raw floor``    - dbus-fast StartTransientUnit with stdio fds to the unit's
                     end, nothing else: the floor for any systemd launcher;
* ``systemd-run``  - ``systemd-run --user --wait --pipe -q /bin/true`` as a
                     whole process;
* ``asyncio child``- a direct ``asyncio.create_subprocess_exec``, no systemd.

The cases are interleaved round-robin so that each sees the same machine
state (latency on an idle VM depends on how long the CPU has slept; a case
run alone in a tight loop looks faster than one run between others).
This is a benchmark, not a test: it prints, it never asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sdexec.client.handle import Handle  # noqa: E402
from sdexec.client.process import run  # noqa: E402
from sdexec.systemd import properties  # noqa: E402
from sdexec.systemd.bus import SystemdBus  # noqa: E402
from sdexec.systemd.unitstate import Finished, UnitTracker  # noqa: E402

TRUE = "/bin/true"


class Env:
    """A server (and the manager under it) for the benchmark's lifetime."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="sdx-bench-", dir="/tmp"))
        self.socket = str(self.dir / "local")
        self.uri = f"local://{self.socket}"
        self.state = self.dir / "state"
        self.proc: subprocess.Popen[bytes] | None = None
        self.bus_address = ""
        self.manager_env: dict[str, str] = dict(os.environ)

    def start(self) -> None:
        from sdexec.server.daemon import user_bus_address

        args = ["--systemd", "user"] if user_bus_address() else ["--systemd", "private"]
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
                *args,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd=REPO,
        )
        deadline = time.monotonic() + 30
        while not os.path.exists(self.socket):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not start; see {self.dir / 'server.log'}")
            time.sleep(0.02)
        if args[1] == "private":
            from sdexec.systemd.private import PrivateManager

            m = PrivateManager(self.state)
            self.bus_address = m.bus_address
            self.manager_env = m.env()
        else:
            self.bus_address = user_bus_address() or ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)
        shutil.rmtree(self.dir, ignore_errors=True)


class RawFloor:
    """StartTransientUnit to the finished signal with stdio fds; nothing else."""

    def __init__(self, address: str) -> None:
        self.bus = SystemdBus(address)
        self.n = 0

    async def once(self) -> None:
        self.n += 1
        unit = f"bench-raw-{os.getpid()}-{self.n}.service"
        tracker = UnitTracker()
        done = asyncio.get_running_loop().create_future()

        class Listener:
            def service_changed(self, props: dict[str, object]) -> None:
                tracker.service_changed(props)

            def unit_changed(self, props: dict[str, object]) -> None:
                self._events(tracker.unit_changed(props))

            def job_removed(self, result: str) -> None:
                self._events(tracker.job_removed(result))

            def _events(self, events: list[object]) -> None:
                if any(isinstance(e, Finished) for e in events) and not done.done():
                    done.set_result(None)

        self.bus.watch(unit, Listener())
        r, w = os.pipe()
        null = os.open(os.devnull, os.O_RDONLY)
        spec = properties.UnitSpec(argv=[TRUE], stdin_fd=0, stdout_fd=1, stderr_fd=1)
        try:
            await self.bus.start_transient(unit, spec.properties(), [null, w])
        finally:
            os.close(w)
            os.close(null)
        await done
        while os.read(r, 65536):
            pass
        os.close(r)
        self.bus.unwatch(unit)


async def asyncio_child() -> None:
    proc = await asyncio.create_subprocess_exec(
        TRUE,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    await proc.communicate()


def systemd_run(env: dict[str, str]) -> Callable[[], Awaitable[None]]:
    async def once() -> None:
        proc = await asyncio.create_subprocess_exec(
            "systemd-run",
            "--user",
            "--wait",
            "--pipe",
            "-q",
            TRUE,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
        )
        if await proc.wait() != 0:
            raise RuntimeError("systemd-run failed")

    return once


def summary(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {
        "median_ms": statistics.median(s) * 1e3,
        "p95_ms": s[min(len(s) - 1, round(0.95 * (len(s) - 1)))] * 1e3,
        "min_ms": s[0] * 1e3,
        "runs": len(s),
    }


async def measure(env: Env, runs: int) -> dict[str, dict[str, float]]:
    handle = await Handle.connect(env.uri)
    floor = RawFloor(env.bus_address)
    await floor.bus.connect()
    renv = dict(env.manager_env)

    async def api() -> None:
        result = await run(handle, [TRUE], env={"PATH": "/usr/bin:/bin"})
        if result.status != 0:
            raise RuntimeError("exec failed")

    cases: dict[str, Callable[[], Awaitable[None]]] = {
        "sdexec API": api,
        "raw floor": floor.once,
        "systemd-run": systemd_run(renv),
        "asyncio child": asyncio_child,
    }
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for fn in cases.values():  # warm up each path once
        await fn()
    for _ in range(runs):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            await fn()
            samples[name].append(time.perf_counter() - t0)
    await handle.close()
    floor.bus.close()
    return {name: summary(s) for name, s in samples.items()}


def print_table(results: dict[str, dict[str, float]]) -> None:
    floor = results["raw floor"]["median_ms"]
    srun = results["systemd-run"]["median_ms"]
    print(
        f"{'exec to finished, /bin/true':<28}{'median':>9}{'p95':>9}{'x floor':>9}"
        f"{'x systemd-run':>15}"
    )
    for name, r in results.items():
        print(
            f"{name:<28}{r['median_ms']:>8.2f}m{r['p95_ms']:>8.2f}m"
            f"{r['median_ms'] / floor:>9.2f}{r['median_ms'] / srun:>15.2f}"
        )
    print("(ms; ratios of medians measured in this run)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=300, help="rounds per case (default 300)")
    parser.add_argument("--quick", action="store_true", help="50 rounds")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args()
    runs = 50 if args.quick else args.runs
    env = Env()
    try:
        env.start()
        results = asyncio.run(measure(env, runs))
    finally:
        env.stop()
    print_table(results)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "host": socket.gethostname(),
                    "time": time.time(),
                    "runs": runs,
                    "exec_latency": results,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
