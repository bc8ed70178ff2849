"""`sdexec exec -- /bin/true` against `systemd-run --user --wait --pipe`, and where its time goes.

Usage::

    PYTHONPATH=. .venv/bin/python bench/startup.py [--runs N] [--idle-runs N] [--install DIR]

1. Installs sdexec as docs/admin/standalone.md's "Installing" says: ``scripts/install`` into a
   temporary directory (a virtual environment, not editable, the command run
   as ``python -S``).  ``--install DIR`` uses (and updates) DIR instead.
2. Starts a server on the embedded default, as ``bench/bench.py`` does, and
   measures whole processes, paired: the cases run round-robin, one launch
   of each per round (each round starting with the next case), each timed
   from spawn to reaped, with its CPU time
   (user + system, from ``wait4``).  Back to back (``--runs``, default 100),
   then with 100 ms of quiet before every launch (``--idle-runs``, 60):

   - ``sdexec exec -n -- /bin/true``, the installed command;
   - the same command run with the site module (``DIR/bin/python DIR/bin/sdexec``),
     as a console script that pip wrote would run: what ``-S`` saves;
   - ``systemd-run --user --wait --pipe -q /bin/true`` on the same manager;
   - ``python -S -c pass`` (the interpreter alone) and ``python -S`` importing
     what ``sdexec exec`` imports (the interpreter and the imports).

   The target (issue 17): sdexec <= 2.0x systemd-run in wall time, back to
   back and from idle; the stretch <= 1.2x.
3. The client's time line: the installed command under ``strace -f -ttt
   --seccomp-bpf`` (only execve, connect, sendto, recvfrom and exit_group
   stop the process), from idle: exec -> connect (the interpreter, the
   command line and the connector: ``sdexec exec`` connects before it
   imports the client) -> request sent (the client's imports, the
   handshake, the signing check, the request) -> ``started`` ->
   ``finished`` -> exit; medians.  Where ``perf`` is
   available (root), the manager's own ``write`` of each new process into
   its unit's ``cgroup.procs``, traced with ``perf trace``: the RCU grace
   period that the server's warm-up (sdexec.systemd.migration) takes off
   the manager's path, against systemd-run's.

It prints, never asserts; the results also go to ``bench/results-startup.json``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench import Env, write_results  # noqa: E402

TRUE = "/bin/true"
IDLE_S = 0.1
GOAL = 2.0
STRETCH = 1.2
# The modules `sdexec exec` imports, for the "interpreter + imports" case.
EXEC_IMPORTS = "import sdexec.cli.main, sdexec.cli.quick, sdexec.cli.exec"


def install(target: Path) -> Path:
    """scripts/install into ``target``; its bin/sdexec."""
    r = subprocess.run(
        [str(REPO / "scripts" / "install"), str(target)],
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode != 0:
        raise SystemExit(f"scripts/install failed:\n{r.stdout}{r.stderr}")
    return target / "bin" / "sdexec"


def launch(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Run ``argv`` to its end: (wall seconds, CPU seconds)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        close_fds=True,
        cwd="/",  # not this tree: `python -c` would import its sdexec/ from the cwd
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited {proc.returncode}")
    return wall, usage.ru_utime + usage.ru_stime


def paired(
    cases: dict[str, tuple[list[str], dict[str, str]]], runs: int, idle: float
) -> dict[str, dict[str, float]]:
    """Each case ``runs`` times, round-robin (``idle`` seconds of quiet before each launch)."""
    walls: dict[str, list[float]] = {name: [] for name in cases}
    cpus: dict[str, list[float]] = {name: [] for name in cases}
    for argv, env in cases.values():  # warm caches, bytecode, the manager's paths
        launch(argv, env)
        launch(argv, env)
    names = list(cases)
    for i in range(runs):
        # Each round in another order: a case never always follows the same
        # one (a launch right after an sdexec exec finds the kernel's
        # migration lock still warm, see sdexec.systemd.migration).
        k = i % len(names)
        for name in names[k:] + names[:k]:
            argv, env = cases[name]
            if idle:
                time.sleep(idle)
            wall, cpu = launch(argv, env)
            walls[name].append(wall)
            cpus[name].append(cpu)
    out = {}
    for name in cases:
        w = sorted(walls[name])
        out[name] = {
            "median_ms": statistics.median(w) * 1e3,
            "p95_ms": w[min(len(w) - 1, round(0.95 * (len(w) - 1)))] * 1e3,
            "min_ms": w[0] * 1e3,
            "cpu_ms": statistics.median(cpus[name]) * 1e3,
            "runs": len(w),
        }
    return out


# --- the client's time line (strace) ------------------------------------------------------------

_LINE = re.compile(r"^\d+\s+(\d+\.\d+) (\w+)\((.*)$")
PHASES = (
    ("exec -> connect (interpreter, command line, connector)", "execve", "connect"),
    ("connect -> request sent (client imports, handshake, signing)", "connect", "request"),
    ("request -> started (server, D-Bus, systemd)", "request", "started"),
    ("started -> finished", "started", "finished"),
    ("finished -> exit", "finished", "exit"),
)


def timeline_once(argv: list[str], env: dict[str, str], out: Path) -> dict[str, float] | None:
    """One traced run: the time of each event (seconds), or None if one is missing."""
    subprocess.run(
        [
            "strace",
            "-f",
            "-qq",
            "-ttt",
            "--seccomp-bpf",
            "-e",
            "trace=execve,connect,sendto,recvfrom,exit_group",
            "-s",
            "4096",
            "-o",
            str(out),
            "--",
            *argv,
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        check=True,
        cwd="/",
    )
    ev: dict[str, float] = {}
    for line in out.read_text().splitlines():
        m = _LINE.match(line)
        if m is None:
            continue
        t, call, rest = float(m.group(1)), m.group(2), m.group(3)
        if call == "execve":
            ev.setdefault("execve", t)
        elif call == "connect":
            ev.setdefault("connect", t)
        elif call == "sendto" and "sdexec.exec" in rest:
            ev.setdefault("request", t)
        elif call == "recvfrom":
            if '\\"type\\":\\"started\\"' in rest:
                ev.setdefault("started", t)
            if '\\"type\\":\\"finished\\"' in rest:
                ev.setdefault("finished", t)
        elif call == "exit_group":
            ev["exit"] = t
    names = {"execve", "connect", "request", "started", "finished", "exit"}
    return ev if names <= ev.keys() else None


def timeline(argv: list[str], env: dict[str, str], runs: int, scratch: Path) -> dict[str, Any]:
    """Medians of each phase of the client's time line, from idle."""
    samples: dict[str, list[float]] = {label: [] for label, _, _ in PHASES}
    totals: list[float] = []
    for i in range(runs):
        time.sleep(IDLE_S)
        ev = timeline_once(argv, env, scratch / f"strace-{i}.txt")
        if ev is None:
            continue
        for label, a, b in PHASES:
            samples[label].append(ev[b] - ev[a])
        totals.append(ev["exit"] - ev["execve"])
    if not totals:
        return {}
    return {
        "phases_ms": {k: statistics.median(v) * 1e3 for k, v in samples.items()},
        "traced_total_ms": statistics.median(totals) * 1e3,
        "runs": len(totals),
    }


# --- the manager's cgroup migration (perf trace) ------------------------------------------------

_PERF = re.compile(r"\(\s*([\d.]+) ms\): (clone|clone3|write)\(.*count: (\d+)")


def manager_migrations(
    manager_pid: int, argv: list[str], env: dict[str, str], runs: int, scratch: Path
) -> list[float] | None:
    """Durations (ms) of the manager's cgroup.procs writes while ``argv`` runs ``runs`` times
    from idle: the first small write after each fork.  None without perf."""
    if shutil.which("perf") is None or os.geteuid() != 0:
        return None
    out = scratch / "perf.txt"
    perf = subprocess.Popen(
        ["perf", "trace", "-p", str(manager_pid), "-e", "clone,clone3,write", "-o", str(out)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.0)  # perf attaches
        if perf.poll() is not None:
            return None
        for _ in range(runs):
            time.sleep(IDLE_S)
            launch(argv, env)
        time.sleep(0.3)
    finally:
        perf.send_signal(signal.SIGINT)
        perf.wait(30)
    durations: list[float] = []
    forked = False
    for line in out.read_text().splitlines() if out.exists() else []:
        if "clone" in line and "= " in line and "(" in line:
            forked = True
            continue
        m = _PERF.search(line)
        if m and m.group(2) == "write" and forked and int(m.group(3)) <= 8:
            durations.append(float(m.group(1)))
            forked = False
    return durations


# --- the report ---------------------------------------------------------------------------------


def verdict(ratio: float) -> str:
    goal = "met" if ratio <= GOAL else "MISSED"
    stretch = "met" if ratio <= STRETCH else "missed"
    return f"goal <={GOAL}x: {goal}; stretch <={STRETCH}x: {stretch}"


def table(results: dict[str, Any]) -> list[str]:
    rows: list[str] = []
    for key, title in (
        ("back_to_back", "back to back"),
        ("idle", f"{IDLE_S * 1000:.0f} ms idle before each launch"),
    ):
        lat = results[key]
        srun = lat["systemd-run"]
        rows.append(
            f"exec /bin/true, {title} ({srun['runs']} paired)"
            f"{'wall':>10}{'p95':>10}{'cpu':>9}{'x s-run':>9}"
        )
        width = len(rows[-1]) - 38
        for name, r in lat.items():
            ratio = r["median_ms"] / srun["median_ms"]
            target = f"  {verdict(ratio)}" if name == "sdexec exec" else ""
            rows.append(
                f"{name:<{width}}{r['median_ms']:>8.2f}ms{r['p95_ms']:>8.2f}ms"
                f"{r['cpu_ms']:>7.2f}ms{ratio:>9.2f}{target}"
            )
    lat = results["back_to_back"]
    interp = lat["python -S -c pass"]["median_ms"]
    imports = lat["python -S + exec imports"]["median_ms"] - interp
    rows.append("client breakdown (medians)")
    rows.append(f"  interpreter start and exit (python -S -c pass)   {interp:8.2f} ms")
    rows.append(f"  sdexec exec's imports (python -S + imports - above) {imports:6.2f} ms")
    site = lat["sdexec exec, with site"]["median_ms"] - lat["sdexec exec"]["median_ms"]
    rows.append(f"  site module, saved by python -S                  {site:8.2f} ms")
    tl = results.get("timeline")
    if tl:
        rows.append(f"  time line under strace, from idle ({tl['runs']} runs, traced total ")
        rows[-1] += f"{tl['traced_total_ms']:.2f} ms):"
        for label, value in tl["phases_ms"].items():
            rows.append(f"    {label:<62}{value:7.2f} ms")
    mig = results.get("migration")
    if mig:
        rows.append("manager's write of the new process into its cgroup (perf trace, from idle)")
        for name, durations in mig.items():
            if durations:
                med = statistics.median(durations)
                rows.append(
                    f"  {name:<20} median {med:6.2f} ms  max {max(durations):6.2f} ms"
                    f"  ({len(durations)} forks)"
                )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100, help="back-to-back rounds (100)")
    parser.add_argument("--idle-runs", type=int, default=60, help="rounds from idle (60)")
    parser.add_argument("--trace-runs", type=int, default=20, help="traced runs (20)")
    parser.add_argument("--install", metavar="DIR", help="install into DIR (default: a temp dir)")
    parser.add_argument(
        "--json",
        metavar="FILE",
        default=str(REPO / "bench" / "results-startup.json"),
        help="where to write the results (default bench/results-startup.json)",
    )
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="sdx-startup-"))
    print("... installing (scripts/install)", file=sys.stderr, flush=True)
    sdexec = install(Path(args.install) if args.install else scratch / "install")
    python = sdexec.with_name("python")
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    env = Env()
    t0 = time.monotonic()
    results: dict[str, Any] = {}
    interpreter = subprocess.run(
        [str(python), "-S", "-c", "import sys; print(sys.version.split()[0])"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    results["interpreter"] = f"{os.path.realpath(python)} {interpreter}"
    try:
        env.start()
        cli_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        cli_env["SDEXEC_URI"] = env.uri
        site_packages = next((sdexec.parents[1] / "lib").glob("python3*/site-packages"))
        imports = f"import sys; sys.path.append({str(site_packages)!r}); {EXEC_IMPORTS}"
        cases = {
            "sdexec exec": ([str(sdexec), "exec", "-n", "--", TRUE], cli_env),
            "sdexec exec, with site": (
                [str(python), str(sdexec), "exec", "-n", "--", TRUE],
                cli_env,
            ),
            "systemd-run": (
                ["systemd-run", "--user", "--wait", "--pipe", "-q", TRUE],
                env.manager_env,
            ),
            "python -S -c pass": ([str(python), "-S", "-c", "pass"], cli_env),
            "python -S + exec imports": ([str(python), "-S", "-c", imports], cli_env),
        }
        print("... back to back", file=sys.stderr, flush=True)
        results["back_to_back"] = paired(cases, args.runs, 0.0)
        print("... from idle", file=sys.stderr, flush=True)
        results["idle"] = paired(cases, args.idle_runs, IDLE_S)
        if shutil.which("strace") and args.trace_runs:
            print("... time line (strace)", file=sys.stderr, flush=True)
            results["timeline"] = timeline(
                cases["sdexec exec"][0], cli_env, args.trace_runs, scratch
            )
        if env.mode == "private" and args.trace_runs:
            from sdexec.systemd.private import PrivateManager

            pid = PrivateManager(env.state).pid()
            if pid is not None:
                print("... the manager's migrations (perf trace)", file=sys.stderr, flush=True)
                mig = {}
                for name in ("sdexec exec", "systemd-run"):
                    found = manager_migrations(pid, *cases[name], args.trace_runs, scratch)
                    if found is None:
                        break
                    mig[name] = found
                results["migration"] = mig
    finally:
        env.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    elapsed = time.monotonic() - t0
    rows = table(results)
    load = os.getloadavg()
    print(
        f"sdexec start-up benchmark ({env.mode} manager, {os.cpu_count()} CPUs, "
        f"{elapsed:.0f} s, load {load[0]:.2f}; {results['interpreter']})"
    )
    print("\n".join(rows))
    write_results(args, env, elapsed, results, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
