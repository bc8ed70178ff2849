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
   the journal's directories and configuration are bound to the state
   directory, the console to ``systemd.log``; then ``exec systemd --user``.
3. The private journald and the session dbus-daemon are units of that
   manager (:data:`JOURNAL_UNITS`, and a drop-in for Debian's
   ``dbus.service``), both socket-activated: one that dies is started again
   by the manager on the next message, and journald takes back the output
   streams it kept in the manager's fd store, so a running process loses no
   line.  Both run with a parent-death signal: however the manager ends,
   they end with it.
4. The manager's runtime directory is ``<state-dir>/systemd``, a stable
   place: a restarted server finds the manager it started by the pid file
   there and reuses it if that pid is still a live ``systemd --user`` whose
   bus answers.  The ``<key>`` is a hash of the state directory, so two
   servers with different state directories never share a manager.

When PID 1 *is* systemd, no cgroup is made by hand: the launcher runs in a
delegated scope (``systemd-run --user --scope -p Delegate=yes``) instead.

Stopping asks the manager to exit over its bus, waits for its pid to go,
kills whatever is left in the cgroup with ``cgroup.kill`` and removes the
cgroup tree deepest first.  A manager that died leaves its units' processes
running in that tree; the next :meth:`PrivateManager.start` (or
:meth:`PrivateManager.restart`, by a server that saw it die) records which
units still had processes (:attr:`PrivateManager.killed`) before it kills
them, so that the server can report that as their outcome.
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
from dataclasses import dataclass, field
from pathlib import Path

from sdexec.base.errors import SdexecError

SYSTEMD = "/lib/systemd/systemd"
JOURNALD = "/lib/systemd/systemd-journald"
SETPRIV = "/usr/bin/setpriv"
DBUS_DAEMON = "/usr/bin/dbus-daemon"
#: The manager's own helper units (not processes that sdexec started).
HELPER_UNITS = frozenset({"journald-private.service", "dbus.service"})

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
# What the manager writes to the console (before its journal is up) goes to
# systemd.log, not to the machine's console.
mount --bind "$state/systemd.log" /dev/console
if [ -e "$runtime/systemd/user/journald-private.socket" ]; then
  # journald is a unit of the manager (see JOURNAL_UNITS): only its files here.
  mount --bind "$state/journal" /var/log/journal
  mount --bind "$state/journald.conf" /etc/systemd/journald.conf
  mount --bind "$state/run-log" /run/log
  touch /run/systemd/journal/flushed
fi
export XDG_RUNTIME_DIR="$runtime"
# The manager opens its log before its journal socket unit listens, so its
# own messages (notice and worse) go to the console, i.e. systemd.log: a
# manager that logged to a journald it supervises itself would block when
# that journald is stopped.  The processes it forks open the journal when
# they log, so systemd's spawn-failure records (with the errno) are there.
exec /lib/systemd/systemd --user --log-target=journal --log-level=notice
"""

#: The private journald and dbus-daemon are units of the manager: socket
#: activated, so a journald or dbus-daemon that dies is started again on the
#: next message (journald also gets back the output streams it stored in the
#: manager's fd store, so running processes lose no line); and run with a
#: parent-death signal, so that they end with the manager however it ends.
JOURNAL_UNITS: dict[str, str] = {
    "journald-private.socket": """\
[Unit]
Description=sdexec private journal socket
DefaultDependencies=no
Before=sockets.target

[Socket]
ListenDatagram=/run/systemd/journal/socket
ListenStream=/run/systemd/journal/stdout
PassCredentials=yes
PassSecurity=yes
ReceiveBuffer=8M
SocketMode=0666
Timestamping=us
Service=journald-private.service
""",
    "journald-private.service": """\
[Unit]
Description=sdexec private journal
DefaultDependencies=no
Requires=journald-private.socket
After=journald-private.socket

[Service]
Type=notify
ExecStart=/usr/bin/setpriv --pdeathsig KILL /lib/systemd/systemd-journald
Restart=always
RestartSec=0
FileDescriptorStoreMax=4224
Sockets=journald-private.socket
StandardOutput=null
""",
}
DBUS_DROPIN = """\
[Service]
ExecStart=
ExecStart=/usr/bin/setpriv --pdeathsig KILL /usr/bin/dbus-daemon --session \
--address=systemd: --nofork --nopidfile --systemd-activation --syslog-only
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
    _child: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    #: Units whose processes were still running when a dead manager's cgroup
    #: was cleaned up by :meth:`start` (unit name -> pids); they were killed.
    killed: dict[str, list[int]] = field(default_factory=dict, init=False)
    #: Whether :meth:`start` found the remains of a manager that had died.
    found_dead: bool = field(default=False, init=False)

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
        # A cgroup tree or pid file without a live manager: it died.
        self.found_dead = self.slice.is_dir() or self.pid_file.exists()
        self._cleanup_stale()
        for d in (self.state_dir, self.runtime_dir, self.state_dir / "journal"):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.state_dir / "run-log").mkdir(mode=0o755, exist_ok=True)
        (self.state_dir / "journald.conf").write_text(_JOURNALD_CONF)
        self._write_units()
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
                # Kept to reap the manager if it dies while we run; it may outlive us.
                self._child = proc
                return True
            time.sleep(0.01)
        raise SdexecError(110, "private systemd did not come up in time")

    def reap(self) -> None:
        """Collect the exit status of a manager this process started (no zombie stays)."""
        if self._child is not None and self._child.poll() is not None:
            self._child = None

    def _write_units(self) -> None:
        """The manager's own units for its journald and dbus-daemon (see JOURNAL_UNITS)."""
        units = self.runtime_dir / "systemd" / "user"
        units.mkdir(mode=0o755, parents=True, exist_ok=True)
        if self.journal_available():
            for name, text in JOURNAL_UNITS.items():
                (units / name).write_text(text)
            wants = units / "sockets.target.wants"
            wants.mkdir(exist_ok=True)
            for name in ("journald-private.socket", "journald-private.service"):
                link = wants / name
                link.unlink(missing_ok=True)
                link.symlink_to(units / name)
        if Path(DBUS_DAEMON).exists():
            dropin = units / "dbus.service.d"
            dropin.mkdir(exist_ok=True)
            (dropin / "sdexec.conf").write_text(DBUS_DROPIN)

    @staticmethod
    def journal_available() -> bool:
        """Whether this machine can give the manager a journald of its own."""
        return (
            os.access(JOURNALD, os.X_OK)
            and os.access(SETPRIV, os.X_OK)
            and Path("/etc/systemd/journald.conf").is_file()
            and Path("/var/log/journal").is_dir()
            and Path("/run/log").is_dir()
        )

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
            deadline = time.monotonic() + timeout
            with contextlib.suppress(subprocess.TimeoutExpired):
                subprocess.run(
                    ["systemctl", "--user", "exit"],
                    env=self.env(),
                    capture_output=True,
                    check=False,
                    timeout=timeout,
                )
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.02)
            if _pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self._cleanup_stale()
        self.reap()

    def leftovers(self) -> dict[str, list[int]]:
        """Units of a dead manager whose processes still run in our cgroup: name -> pids."""
        found: dict[str, list[int]] = {}
        if not self.cgroup.is_dir():
            return found
        for d in sorted(self.cgroup.rglob("*.service")):
            if d.name in HELPER_UNITS or not d.is_dir():
                continue
            pids: list[int] = []
            for procs in [d / "cgroup.procs", *d.rglob("*/cgroup.procs")]:
                with contextlib.suppress(OSError, ValueError):
                    pids += [int(p) for p in procs.read_text().split()]
            if pids:
                found[d.name] = sorted(pids)
        return found

    def _cleanup_stale(self) -> None:
        """Kill leftovers in our cgroup and remove the tree, deepest first.

        What still ran there under a manager that died is recorded first, in
        :attr:`killed` (unit name -> pids), for the server to report as
        those processes' outcome.
        """
        self.killed = {}
        if self.slice.is_dir():
            self.killed = self.leftovers()
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

    def restart(self, timeout: float = 20.0) -> dict[str, list[int]]:
        """Start a new manager after ours died; returns what was killed with the old one."""
        self.reap()
        self.start(timeout)
        return self.killed
