"""A private, confined systemd user manager for machines booted without systemd.

Theory of operation
-------------------
``systemd --user`` started bare in the root cgroup takes over the whole
machine (it moves every process, PID 1 included, into its ``init.scope``).
So the manager is always started confined:

1. A fresh cgroup-v2 directory, named like a user session so that journald
   attributes unit output to user units:
   ``<cgroup2 root>/sdexec-<key>.slice/user@<uid>.service``.
   The launcher shell moves itself there before anything else.
2. ``unshare --mount --propagation private``; inside that namespace:
   cgroup2 is mounted over ``/sys/fs/cgroup`` on hybrid machines, a tmpfs
   over ``/run/systemd`` (with ``system/`` so the manager agrees to start),
   and a private journald is started whose journal lives in the state
   directory; then ``exec systemd --user --log-target=journal``.
3. The manager's runtime directory is ``<state-dir>/systemd``, a stable
   place: a restarted server finds the manager it started by the pid file
   there and reuses it if that pid is still a live ``systemd --user`` whose
   bus answers.  The ``<key>`` is a hash of the state directory, so two
   servers with different state directories never share a manager.

When PID 1 *is* systemd, no cgroup is made by hand: the launcher runs in a
delegated scope (``systemd-run --user --scope -p Delegate=yes``) instead.

Stopping asks the manager to exit over its bus, waits for its pid to go,
kills whatever is left in the cgroup (the private journald) with
``cgroup.kill`` and removes the cgroup tree deepest first.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from sdexec.base.errors import SdexecError

SYSTEMD = "/lib/systemd/systemd"
JOURNALD = "/lib/systemd/systemd-journald"

_JOURNALD_CONF = """\
[Journal]
Storage=persistent
ReadKMsg=no
ForwardToSyslog=no
ForwardToKMsg=no
ForwardToConsole=no
ForwardToWall=no
RateLimitIntervalSec=0
RateLimitBurst=0
"""

# Runs as `sh -c SCRIPT sh CGROUP_PROCS RUNTIME JOURNAL_DIR HYBRID` inside the
# new mount namespace (the cgroup move happens before unshare, in LAUNCH).
_INNER = r"""
set -e
runtime=$1; state=$2; hybrid=$3
# Not for journald or the manager: a server run as a Type=notify or
# socket-activated service keeps these for itself.
unset DBUS_SESSION_BUS_ADDRESS NOTIFY_SOCKET LISTEN_FDS LISTEN_PID LISTEN_FDNAMES
if [ "$hybrid" = 1 ]; then mount -t cgroup2 cgroup2 /sys/fs/cgroup; fi
mount -t tmpfs -o mode=0755 tmpfs /run/systemd
mkdir -p /run/systemd/system /run/systemd/journal
journal=0
if [ -x /lib/systemd/systemd-journald ] && [ -f /etc/systemd/journald.conf ] \
   && [ -d /var/log/journal ] && [ -d /run/log ]; then
  mount --bind "$state/journal" /var/log/journal
  mount --bind "$state/journald.conf" /etc/systemd/journald.conf
  mount --bind "$state/run-log" /run/log
  touch /run/systemd/journal/flushed
  /lib/systemd/systemd-journald </dev/null >/dev/null 2>&1 &
  i=0
  while [ ! -S /run/systemd/journal/stdout ] && [ $i -lt 500 ]; do sleep 0.01; i=$((i+1)); done
  [ -S /run/systemd/journal/stdout ] && journal=1
fi
export XDG_RUNTIME_DIR="$runtime"
if [ $journal = 1 ]; then exec /lib/systemd/systemd --user --log-target=journal; fi
exec /lib/systemd/systemd --user --log-target=kmsg
"""


def cgroup2_root() -> Path:
    """Where the cgroup-v2 hierarchy is mounted (hybrid or unified machine)."""
    unified = Path("/sys/fs/cgroup/unified")
    if (unified / "cgroup.procs").exists():
        return unified
    return Path("/sys/fs/cgroup")


def booted_with_systemd() -> bool:
    return Path("/run/systemd/system").is_dir() and Path("/proc/1/comm").read_text().strip() == (
        "systemd"
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is not alive for our purposes.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _is_user_manager(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return len(argv) >= 2 and argv[0].endswith(b"systemd") and argv[1] == b"--user"


def _bus_answers(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(1.0)
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


@dataclass
class PrivateManager:
    """A confined ``systemd --user`` whose state lives under ``state_dir``."""

    state_dir: Path

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir).absolute()
        key = hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:12]
        self.slice = cgroup2_root() / f"sdexec-{key}.slice"
        self.cgroup = self.slice / f"user@{os.getuid()}.service"

    # --- paths ---------------------------------------------------------------

    @property
    def runtime_dir(self) -> Path:
        return self.state_dir / "systemd"

    @property
    def bus_path(self) -> Path:
        return self.runtime_dir / "bus"

    @property
    def bus_address(self) -> str:
        return f"unix:path={self.bus_path}"

    @property
    def journal_dir(self) -> Path:
        """The journal directory to pass to ``journalctl --directory``."""
        machine_id = Path("/etc/machine-id").read_text().strip()
        return self.state_dir / "journal" / machine_id

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "systemd.pid"

    def env(self) -> dict[str, str]:
        """Environment for systemctl/journalctl/systemd-run against this manager."""
        env = dict(os.environ)
        env["XDG_RUNTIME_DIR"] = str(self.runtime_dir)
        env["DBUS_SESSION_BUS_ADDRESS"] = self.bus_address
        return env

    # --- lifecycle -------------------------------------------------------------

    def pid(self) -> int | None:
        """The pid of our live manager, or None."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if _pid_alive(pid) and _is_user_manager(pid):
            return pid
        return None

    def running(self) -> bool:
        return self.pid() is not None and _bus_answers(self.bus_path)

    def start(self, timeout: float = 20.0) -> bool:
        """Start the manager unless ours is already running; True if started now."""
        if self.running():
            return False
        if os.geteuid() != 0 and not booted_with_systemd():
            raise SdexecError(
                1, "a private systemd manager needs root on a machine without systemd"
            )
        if not Path(SYSTEMD).exists():
            raise SdexecError(2, f"{SYSTEMD} was not found")
        self._cleanup_stale()
        for d in (self.state_dir, self.runtime_dir, self.state_dir / "journal"):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.state_dir / "run-log").mkdir(mode=0o755, exist_ok=True)
        (self.state_dir / "journald.conf").write_text(_JOURNALD_CONF)
        hybrid = "1" if cgroup2_root() != Path("/sys/fs/cgroup") else "0"
        inner = ["/bin/sh", "-c", _INNER, "sh", str(self.runtime_dir), str(self.state_dir), hybrid]
        if booted_with_systemd():
            # A real systemd: no hand-made cgroups; a delegated scope of the
            # caller's own manager (the system one for root) confines us.
            scope = ["systemd-run", "--scope", "-q", "-p", "Delegate=yes"]
            if os.geteuid() != 0:
                scope.insert(1, "--user")
            argv = [*scope, "unshare", "--mount", "--propagation", "private", *inner]
        else:
            self.cgroup.mkdir(parents=True, exist_ok=True)
            # The launcher moves itself into the new cgroup, then becomes
            # `unshare ... sh -c INNER`, which becomes the manager: one pid.
            argv = [
                "/bin/sh",
                "-c",
                'echo $$ > "$1/cgroup.procs" || exit 1; shift; exec unshare '
                '--mount --propagation private "$@"',
                "launch",
                str(self.cgroup),
                *inner,
            ]
        log = open(self.state_dir / "systemd.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                close_fds=True,
            )
        finally:
            log.close()
        self.pid_file.write_text(f"{proc.pid}\n")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SdexecError(
                    5,
                    f"private systemd exited with status {proc.returncode}; "
                    f"see {self.state_dir / 'systemd.log'}",
                )
            if self.bus_path.exists() and _bus_answers(self.bus_path) and self._ready():
                # The Popen object is dropped on purpose: the manager outlives us.
                proc.returncode = 0  # keep Popen.__del__ from warning
                return True
            time.sleep(0.01)
        raise SdexecError(110, "private systemd did not come up in time")

    def _ready(self) -> bool:
        r = subprocess.run(
            # Not `is-system-running`: outside the namespace that answers "offline"
            # because this machine's /run/systemd/system does not exist.
            ["systemctl", "--user", "show", "-p", "SystemState", "--value"],
            env=self.env(),
            capture_output=True,
            text=True,
            check=False,
        )
        return r.stdout.strip() in ("running", "degraded")

    def stop(self, timeout: float = 20.0) -> None:
        """Ask the manager to exit, wait for it, and remove every trace."""
        pid = self.pid()
        if pid is not None:
            subprocess.run(
                ["systemctl", "--user", "exit"],
                env=self.env(),
                capture_output=True,
                check=False,
                timeout=timeout,
            )
            deadline = time.monotonic() + timeout
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.02)
            if _pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        self._cleanup_stale()

    def _cleanup_stale(self) -> None:
        """Kill leftovers in our cgroup (journald) and remove the tree, deepest first."""
        if self.slice.is_dir():
            kill = self.slice / "cgroup.kill"
            if kill.exists():
                with contextlib.suppress(OSError):
                    kill.write_text("1")
            deadline = time.monotonic() + 10
            dirs = sorted(
                (p for p in self.slice.rglob("*") if p.is_dir()),
                key=lambda p: len(p.parts),
                reverse=True,
            )
            for d in [*dirs, self.slice]:
                while True:
                    try:
                        d.rmdir()
                        break
                    except FileNotFoundError:
                        break
                    except OSError:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.02)
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()
        if self.runtime_dir.is_dir():
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
