"""sdexec's Flux module against flux-core's C sdexec module, side by side, in one run.

Usage::

    PYTHONPATH=. .venv/bin/python bench/flux.py [--flux PATH] [--runs N] [--jobs N] [--units N]

One ``flux start --test-size=4`` instance on a confined private systemd user
manager, configured as a site is (``[systemd] enable``, ``[exec] service =
"sdexec"``).  The C module (rc1 loads it) and ours
(``flux module load --name=sdexec sdexec/flux/module.py``) are loaded in turn
on every rank, twice each (C, ours, C, ours), and every case runs on each:

1. ``flux exec -r all --service=sdexec true``, whole command, N/2 runs per
   round (the median of all 2N);
2. N jobs through job-exec: ``flux submit --cc=1-N --wait true``, total time
   (the median of the four rounds), once with job-exec's ``bulk-exec``
   method (foreground job shells) and once with ``bgexec`` (background,
   waitable job shells, waited for by label);
3. ``sdexec.list`` round trips per second through the broker, one client, to
   rank 0 and to rank 3 (through the overlay);
4. the module's resident memory, idle and with N background units: ours is a
   process of its own (its VmRSS); the C module is a thread of the broker, so
   its figure is the rank's broker process growth over the idle broker.

``flux`` is ``--flux``, else ``$SDEXEC_FLUX``, else ``flux`` on PATH (an installed flux-core).
It prints a table with ratios (ours / C) and writes ``bench/flux-results.json``.
This is a benchmark, not a test: it prints, it never asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "integration"))
sys.path.insert(0, str(REPO / "tests"))

import fluxcore  # noqa: E402
from fluxinstance import FluxInstance  # noqa: E402

from sdexec.client.handle import Handle  # noqa: E402
from sdexec.systemd.private import PrivateManager  # noqa: E402

SIZE = 4
ROUNDS = 4
CONFIG = '[systemd]\nenable = true\n\n[exec]\nservice = "sdexec"\n'


def find_flux(given: str | None) -> str:
    """``--flux``, else the installed flux-core the tests use (tests/fluxcore.py)."""
    if given:
        return given
    core, line = fluxcore.find()
    if core is None:
        sys.exit(f"bench/flux.py: {line}")
    return core.flux


class Bench:
    def __init__(self, inst: FluxInstance) -> None:
        self.inst = inst

    # --- which module ----------------------------------------------------------------

    def load(self, which: str) -> None:
        inst = self.inst
        if "sdexec" in inst.must("flux", "module", "list"):
            inst.must("flux", "exec", "-r", "all", "flux", "module", "remove", "sdexec")
        if which == "c":
            inst.must("flux", "exec", "-r", "all", "flux", "module", "load", "sdexec")
        else:
            inst.load_sdexec()
        inst.must("flux", "exec", "-r", "all", "--service=sdexec", "true")  # warm

    # --- the cases ---------------------------------------------------------------------

    def exec_all(self, runs: int) -> list[float]:
        times = []
        argv = [self.inst.flux, "exec", "-r", "all", "--service=sdexec", "true"]
        env = self.inst.env()
        for _ in range(runs):
            t0 = time.perf_counter()
            subprocess.run(argv, env=env, check=True, stdin=subprocess.DEVNULL)
            times.append(time.perf_counter() - t0)
        return times

    def jobs(self, n: int, method: str) -> float:
        self.inst.must("flux", "module", "reload", "job-exec", f"method={method}")
        t0 = time.perf_counter()
        self.inst.must("flux", "submit", f"--cc=1-{n}", "--quiet", "--wait", "true", timeout=600)
        return time.perf_counter() - t0

    async def _list_rate(self, rank: int, seconds: float) -> float:
        handle = await Handle.connect(self.inst.uri)
        try:
            n = 0
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                await handle.rpc("sdexec.list", {}, nodeid=rank)
                n += 1
            return n / seconds
        finally:
            await handle.close()

    def list_rate(self, rank: int, seconds: float = 3.0) -> float:
        return asyncio.run(self._list_rate(rank, seconds))

    def rss_kib(self, which: str, rank: int) -> int:
        """Ours: the module process; C: the rank's broker (its thread's share is the growth)."""
        if which == "ours":
            stats = json.loads(
                self.inst.must("flux", "exec", "-r", str(rank), "flux", "module", "stats", "sdexec")
            )
            pid = int(stats["pid"])
        else:
            pid = int(
                self.inst.must(
                    "flux", "exec", "-r", str(rank), "flux", "getattr", "broker.pid"
                ).strip()
            )
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def background_units(self, n: int) -> float:
        """Start n background sleeps on rank 1 (one client, 64 at a time); the time it took."""
        return asyncio.run(self._background_units(n))

    async def _background_units(self, n: int) -> float:
        cmd = {
            "cmdline": ["sleep", "600"],
            "env": {"PATH": "/usr/bin:/bin"},
            "opts": {},
            "channels": [],
            "cwd": "/tmp",
        }
        handle = await Handle.connect(self.inst.uri)
        t0 = time.perf_counter()
        try:
            for start in range(0, n, 64):
                await asyncio.gather(
                    *(
                        handle.rpc(
                            "sdexec.exec", {"cmd": cmd, "flags": 0, "local_flags": 0}, nodeid=1
                        )
                        for _ in range(start, min(n, start + 64))
                    )
                )
            return time.perf_counter() - t0
        finally:
            await handle.close()

    def kill_background(self) -> None:
        asyncio.run(self._kill_background())

    async def _kill_background(self) -> None:
        handle = await Handle.connect(self.inst.uri)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                procs = (await handle.rpc("sdexec.list", {}, nodeid=1)).get("procs", [])
                if not procs:
                    return
                for start in range(0, len(procs), 64):
                    await asyncio.gather(
                        *(
                            handle.rpc("sdexec.kill", {"pid": p["pid"], "signum": 9}, nodeid=1)
                            for p in procs[start : start + 64]
                        ),
                        return_exceptions=True,
                    )
                await asyncio.sleep(0.5)
        finally:
            await handle.close()


def measure(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    res: dict[str, Any] = {
        w: {"exec": [], "jobs": [], "bgjobs": [], "list0": [], "list3": []} for w in ("c", "ours")
    }
    # Four rounds, the modules alternating (C, ours, ours, C, ...), so that a
    # drift of the machine's load (other work on it) weighs on both alike.
    for rnd in range(ROUNDS):
        for which in ("c", "ours") if rnd % 2 == 0 else ("ours", "c"):
            step(f"round {rnd + 1}: {which} module")
            bench.load(which)
            r = res[which]
            r["exec"] += bench.exec_all(max(1, args.runs // 2))
            r["jobs"].append(bench.jobs(args.jobs, "bulk-exec"))
            r["bgjobs"].append(bench.jobs(args.jobs, "bgexec"))
            r["list0"].append(bench.list_rate(0))
            r["list3"].append(bench.list_rate(3))
    for which in ("c", "ours"):
        step(f"memory: {which} module, idle and with {args.units} background units")
        bench.load(which)
        time.sleep(1)
        idle = bench.rss_kib(which, 1)
        res[which]["start_units_s"] = bench.background_units(args.units)
        time.sleep(2)
        busy = bench.rss_kib(which, 1)
        bench.kill_background()
        res[which]["rss_idle_kib"] = idle
        res[which]["rss_units_kib"] = busy
    return res


def step(what: str) -> None:
    print(f"... {what}", file=sys.stderr, flush=True)


def table(res: dict[str, Any], args: argparse.Namespace) -> list[str]:
    c, ours = res["c"], res["ours"]
    out = [f"sdexec Flux module vs flux-core's C sdexec (test-size={SIZE}, {os.cpu_count()} CPUs)"]

    def row(name: str, a: str, b: str, ratio: str, target: str = "") -> None:
        out.append(f"{name:<40}{a:>12}{b:>12}{ratio:>8}  {target}")

    row("case", "C module", "ours", "ours/C")

    def ratio(key: str, what: str, unit: str, scale: float, target: float, fmt: str) -> None:
        cv, ov = statistics.median(c[key]), statistics.median(ours[key])
        verdict = "met" if ov / cv <= target else "MISSED"
        row(what, f"{cv * scale:{fmt}} {unit}", f"{ov * scale:{fmt}} {unit}", f"{ov / cv:.2f}",
            f"<={target}x: {verdict}")  # fmt: skip

    ratio("exec", f"flux exec -r all true (median of {len(c['exec'])})", "ms", 1000, 0.8, ".1f")
    ratio("jobs", f"{args.jobs} jobs, bulk-exec (submit --cc --wait)", "s", 1, 0.85, ".2f")
    ratio("bgjobs", f"{args.jobs} jobs, bgexec (submit --cc --wait)", "s", 1, 0.85, ".2f")
    for key, what in (
        ("list0", "sdexec.list rank 0, per s"),
        ("list3", "sdexec.list rank 3 (overlay), per s"),
    ):
        cl, ol = statistics.median(c[key]), statistics.median(ours[key])
        verdict = "met" if ol >= cl else "MISSED"
        row(what, f"{cl:,.0f}", f"{ol:,.0f}", f"{ol / cl:.2f}", f">=1.0x: {verdict}")
    row(
        "RSS idle (C: whole broker)",
        f"{c['rss_idle_kib'] / 1024:.1f} MB",
        f"{ours['rss_idle_kib'] / 1024:.1f} MB",
        "",
    )
    row(
        f"RSS with {args.units} bg units",
        f"{c['rss_units_kib'] / 1024:.1f} MB",
        f"{ours['rss_units_kib'] / 1024:.1f} MB",
        "",
    )
    cg = c["rss_units_kib"] - c["rss_idle_kib"]
    og = ours["rss_units_kib"] - ours["rss_idle_kib"]
    row("  growth per unit", f"{cg / args.units:.1f} KiB", f"{og / args.units:.1f} KiB", "")
    row(
        f"start {args.units} bg units (flux exec --bg)",
        f"{c['start_units_s']:.1f} s",
        f"{ours['start_units_s']:.1f} s",
        f"{ours['start_units_s'] / c['start_units_s']:.2f}",
    )
    out.append("(ratios are of medians in this run; the C module's RSS is its broker's)")
    load = res["machine"]["load"]
    out.append(
        "load average (1, 5, 15 min) before: {}, after: {}".format(
            ", ".join(f"{x:.2f}" for x in load["before"]),
            ", ".join(f"{x:.2f}" for x in load["after"]),
        )
    )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--flux", default=None)
    ap.add_argument("--runs", type=int, default=30, help="flux exec runs per round and module")
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--units", type=int, default=1000)
    ap.add_argument("--json", default=str(REPO / "bench" / "flux-results.json"))
    args = ap.parse_args()
    flux = find_flux(args.flux)
    work = Path(tempfile.mkdtemp(prefix="sdxf-", dir="/tmp"))
    manager = PrivateManager(work / "state")
    manager.start()
    inst = FluxInstance(
        flux,
        manager,
        work / "inst",
        size=SIZE,
        config=CONFIG,
        extra_env={"DBUS_SYSTEM_BUS_ADDRESS": manager.bus_address},
    )
    t0 = time.monotonic()
    load_before = os.getloadavg()
    try:
        inst.start()
        while "avail ✔" not in inst.run("flux", "resource", "status").stdout:
            time.sleep(0.2)
        res = measure(Bench(inst), args)
    finally:
        inst.stop()
        manager.stop()
    res["machine"] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "seconds": round(time.monotonic() - t0),
        "load": {"before": load_before, "after": os.getloadavg()},
    }
    lines = table(res, args)
    print("\n".join(lines))
    Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
