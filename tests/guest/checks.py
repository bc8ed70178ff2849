"""The batch of checks that runs inside the qemu guest, where cgroup limits are enforced.

It runs once at boot, as root, from a oneshot unit (``guestctl.py`` installs
it), with the guest's own systemd as PID 1 and our ``.deb`` installed.  It
uses the standard library and the ``sdexec`` command only.  Each check is a
record ``{"name", "ok", "detail"}``; all of them go to
:data:`RESULTS` as one JSON document, which the host reads from the image
after the guest has powered off.  A check that raises is a failed record,
never a lost batch.

The checks: the guest really has the controllers; a ``sdexec serve
--systemd=system`` server enforces ``MemoryMax`` (a 200 MB allocation under
64M is OOM-killed and ends 137, 10 MB passes), ``AllowedCPUs``, and accepts
``--strict-properties``; ``ps --stats`` shows memory from ``memory.current``;
no missing-controller warning is printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path("/var/lib/sdexec-guest/results.json")
USER = "sdxuser"  # made by guestctl.py, lingering, with the controllers delegated
SOCKET = "/run/sdexec-guest.sock"
URI = f"local://{SOCKET}"
ALLOC = "import sys; b = bytearray(int(sys.argv[1]) << 20); b[::4096] = b'x' * len(b[::4096])"

results: list[dict[str, Any]] = []


def check(name: str) -> Callable[[Callable[[], str]], Callable[[], str]]:
    """Run the decorated function now; its return value is the detail of a passed check."""

    def run(fn: Callable[[], str]) -> Callable[[], str]:
        t0 = time.monotonic()
        try:
            detail, ok = fn(), True
        except Exception:
            detail, ok = traceback.format_exc(limit=3), False
        results.append(
            {"name": name, "ok": ok, "detail": detail, "seconds": round(time.monotonic() - t0, 2)}
        )
        return fn

    return run


def sdexec(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sdexec", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "SDEXEC_URI": URI},
    )


def expect(cond: bool, what: str, r: subprocess.CompletedProcess[str] | None = None) -> None:
    if not cond:
        extra = f" (rc={r.returncode} out={r.stdout[-500:]!r} err={r.stderr[-500:]!r})" if r else ""
        raise AssertionError(what + extra)


def main() -> int:
    @check("controllers")
    def _controllers() -> str:
        have = Path("/sys/fs/cgroup/cgroup.controllers").read_text().split()
        expect({"cpuset", "memory", "pids"} <= set(have), f"controllers {have}")
        return " ".join(have)

    server = subprocess.Popen(
        ["sdexec", "serve", "--systemd=system", f"--uri={URI}", "--state-dir=/var/lib/sdx"],
        stdout=subprocess.DEVNULL,
        stderr=open("/var/lib/sdexec-guest/serve.log", "wb"),  # noqa: SIM115
    )
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(SOCKET):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("sdexec serve did not come up")
            time.sleep(0.1)

        @check("memorymax-oom-kills")
        def _oom() -> str:
            r = sdexec("exec", "-p", "MemoryMax=64M", "--", "python3", "-c", ALLOC, "200")
            expect(r.returncode == 137, "a 200 MB allocation under MemoryMax=64M ends 137", r)
            expect("not enforced" not in r.stderr, "no missing-controller warning", r)
            expect("oom-kill (killed by the kernel's OOM killer" in r.stderr, "the reason named", r)
            return r.stderr.strip()

        @check("oom-kill-in-ps-wait-and-log")
        def _oom_named() -> str:
            r = sdexec(
                "exec", "--bg", "--waitable", "--label=oom", "-p", "MemoryMax=32M",
                "--", "python3", "-c", ALLOC, "200",
            )  # fmt: skip
            expect(r.returncode == 0, "background start", r)
            deadline = time.monotonic() + 60
            ps = sdexec("ps")
            while "Z (oom-kill)" not in ps.stdout and time.monotonic() < deadline:
                time.sleep(0.5)
                ps = sdexec("ps")
            expect("Z (oom-kill)" in ps.stdout, "ps shows the state with its reason", ps)
            w = sdexec("wait", "oom")
            expect(w.returncode == 137 and "oom-kill" in w.stderr, "wait names it", w)
            log = Path("/var/lib/sdexec-guest/serve.log").read_text(errors="replace")
            # JSON lines when not on a terminal, key=value on one.
            named = [x for x in log.splitlines() if "finished" in x and "oom-kill" in x]
            expect(bool(named), "the server's log names it in its finished event")
            line = next(x for x in ps.stdout.splitlines() if "oom-kill" in x)
            return line.strip()

        @check("memorymax-allows-less")
        def _fits() -> str:
            r = sdexec("exec", "-p", "MemoryMax=64M", "--", "python3", "-c", ALLOC, "10")
            expect(r.returncode == 0, "a 10 MB allocation under MemoryMax=64M passes", r)
            return "rc 0"

        @check("allowedcpus")
        def _cpus() -> str:
            r = sdexec(
                "exec",
                "-p",
                "AllowedCPUs=1",
                "--",
                "grep",
                "Cpus_allowed_list",
                "/proc/self/status",
            )
            expect(
                r.returncode == 0 and r.stdout.split() == ["Cpus_allowed_list:", "1"],
                "CPU 1 only",
                r,
            )
            return r.stdout.strip()

        @check("strict-properties")
        def _strict() -> str:
            r = sdexec(
                "exec",
                "--strict-properties",
                "-p",
                "MemoryMax=64M",
                "-p",
                "TasksMax=50",
                "--",
                "true",
            )
            expect(r.returncode == 0, "enforceable limits are accepted", r)
            return "rc 0"

        @check("ps-stats-memory")
        def _ps() -> str:
            r = sdexec(
                "exec",
                "--bg",
                "--label=hog",
                "--",
                "python3",
                "-c",
                ALLOC + "; import time; time.sleep(60)",
                "30",
            )
            expect(r.returncode == 0, "background start", r)
            time.sleep(3)
            ps = sdexec("ps", "--stats", "--json")
            sdexec("kill", "-s", "KILL", "hog")
            expect(ps.returncode == 0, "ps --stats", ps)
            procs = [p for p in json.loads(ps.stdout).get("procs", []) if p.get("label") == "hog"]
            expect(len(procs) == 1, f"one hog in {ps.stdout[:300]}")
            memory = procs[0].get("memory") or 0
            source = procs[0].get("memory_source")
            # "cgroup": the unit's memory.current (where there is no memory
            # controller, as on the test hosts, it would be the processes' "rss").
            expect(memory >= 30 << 20 and source == "cgroup", f"memory {memory} from {source}")
            return f"{memory} bytes from {source} (memory.current)"
    finally:
        server.terminate()
        server.wait(30)
    user_checks()
    return 0


def user_env() -> dict[str, str]:
    """The environment of :data:`USER`'s commands, with its own manager's bus."""
    uid = int(subprocess.run(["id", "-u", USER], capture_output=True, text=True).stdout)
    runtime = f"/run/user/{uid}"
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": f"/home/{USER}",
        "USER": USER,
        "LOGNAME": USER,
        "XDG_RUNTIME_DIR": runtime,
        "DBUS_SESSION_BUS_ADDRESS": f"unix:path={runtime}/bus",
    }


def wait_for_user_bus(runtime: str, timeout: float = 60) -> bool:
    """Whether the lingering user's manager has its bus up within ``timeout``."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(f"{runtime}/bus") and time.monotonic() < deadline:
        time.sleep(0.2)
    return os.path.exists(f"{runtime}/bus")


def user_checks() -> None:
    """The same limits on a user's own manager, with the controllers delegated to it."""
    env = user_env()
    runtime = env["XDG_RUNTIME_DIR"]
    uid = int(runtime.rsplit("/", 1)[1])
    env["SDEXEC_URI"] = f"local://{runtime}/sdx.sock"
    as_user = ["/usr/sbin/runuser", "-u", USER, "--"]

    def user_sdexec(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*as_user, "sdexec", *args], capture_output=True, text=True,
                              timeout=120, env=env)  # fmt: skip

    @check("user-manager-delegated")
    def _delegated() -> str:
        expect(wait_for_user_bus(runtime), f"{USER}'s manager and its bus are up")
        cg = subprocess.run(["systemctl", "show", "-P", "ControlGroup", f"user@{uid}.service"],
                            capture_output=True, text=True).stdout.strip()  # fmt: skip
        expect(cg.startswith("/user.slice/"), f"user@{uid}.service runs (cgroup {cg!r})")
        have = Path(f"/sys/fs/cgroup{cg}/cgroup.controllers").read_text().split()
        expect({"memory", "cpuset"} <= set(have), f"{USER}'s manager has {have}")
        return " ".join(have)

    server = subprocess.Popen(
        [*as_user, "sdexec", "serve", "--systemd=user", f"--uri=local://{runtime}/sdx.sock"],
        stdout=subprocess.DEVNULL,
        stderr=open("/var/lib/sdexec-guest/serve-user.log", "wb"),  # noqa: SIM115
        env=env,
    )
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(f"{runtime}/sdx.sock"):
            if server.poll() is not None or time.monotonic() > deadline:
                seen = subprocess.run(
                    [*as_user, "sh", "-c", f"id; ls -ld /run/user {runtime}"],
                    capture_output=True, text=True, env=env,
                )  # fmt: skip
                mine = subprocess.run(["ls", "-ld", "/run", "/run/user", runtime],
                                      capture_output=True, text=True)  # fmt: skip
                raise RuntimeError(
                    f"the user's sdexec serve did not come up: {seen.stdout} {seen.stderr}"
                    f" root sees: {mine.stdout} {mine.stderr}"
                )
            time.sleep(0.1)

        @check("user-memorymax-oom-kills")
        def _user_oom() -> str:
            r = user_sdexec("exec", "-p", "MemoryMax=64M", "--", "python3", "-c", ALLOC, "200")
            expect(r.returncode == 137 and "oom-kill" in r.stderr, "137, oom-kill named", r)
            expect("not enforced" not in r.stderr, "no missing-controller warning", r)
            return r.stderr.strip()

        @check("user-allowedcpus")
        def _user_cpus() -> str:
            r = user_sdexec("exec", "-p", "AllowedCPUs=1", "--", "grep", "Cpus_allowed_list",
                            "/proc/self/status")  # fmt: skip
            expect(
                r.returncode == 0 and r.stdout.split() == ["Cpus_allowed_list:", "1"], "CPU 1", r
            )
            return r.stdout.strip()
    finally:
        server.terminate()
        server.wait(30)


def finish() -> None:
    """Write :data:`results` to :data:`RESULTS`, durably, and power off at once."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "w") as f:
        f.write(json.dumps(results, indent=1) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.sync()
    # Power off at once (reboot(2)): the results are on disk, nothing else matters.
    subprocess.run(["systemctl", "poweroff", "--force", "--force"], check=False)


if __name__ == "__main__":
    try:
        main()
    except Exception:
        results.append({"name": "batch", "ok": False, "detail": traceback.format_exc(limit=5)})
    finish()
    sys.exit(0)
