"""A Flux system instance as a site runs it, on one machine: N nodes in containers.

Each node is a ``systemd-nspawn`` container booted with systemd as PID 1
from the Debian root filesystem of ``rootfs.py``, with:

* sdexec installed from its ``.deb`` (``dpkg -i``, its dependencies are in
  the root filesystem);
* the host's installed flux-core and flux-security bind-mounted read-only
  at the same paths (``/usr/local``; ``/etc/flux/modprobe`` and
  ``/etc/flux/shell``), flux-core's own ``flux.service`` enabled, running
  the broker as the user ``flux``;
* one Flux system config for all nodes (``[bootstrap] hosts`` with a CURVE
  certificate, ``[systemd] enable``, ``[exec] service = "sdexec"`` with the
  IMP, guests allowed) and ``[modules.sdexec] module =`` the ``.deb``'s
  module file (or flux-core's C module with ``--module=c``);
* munge with one key for all nodes, and the IMP as a site installs it:
  ``/usr/libexec/flux/flux-imp`` setuid root (the only file taken from the
  host installation into the run's own tree, since a bind mount cannot add
  the setuid bit), its ``conf.d`` allowing ``flux`` to run job shells, and
  flux-security's signing set to munge;
* the guests ``alice`` (1001) and ``bob`` (1002).

Every node has a network namespace of its own, held by a process of the
harness, joined to the others by veth pairs on a bridge in one more such
namespace, with addresses in 10.23.0.0/24 that exist only there.

Confinement (see the project's notes on systemd): the supervisor moves
itself into cgroups of its own (``sdexec-site-<pid>`` in the v2 hierarchy
and in the ``name=systemd`` one) before anything starts, runs in a mount
namespace of its own (the overlay mounts of the nodes' root filesystems go
with it), and starts each container from a child cgroup
(``SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1``, ``--keep-unit --register=no``).

The supervisor (``up``) runs in the foreground until SIGTERM, SIGINT, or the
end of its standard input (or the death of its parent), then powers the
nodes off, kills whatever is left in its cgroups, removes them, its network
namespaces' holders, nspawn's ``/run/systemd/nspawn/propagate/NAME``, the
mounts and the run directory's node trees.  ``sweep`` (also run by ``up``
first) does the same for the leftovers of a supervisor that was SIGKILLed.

By hand (as root)::

    python3 tests/site/sitectl.py up --nodes 3 --run-dir /tmp/site --deb dist/sdexec_*.deb
    python3 tests/site/sitectl.py exec --run-dir /tmp/site 1 -- flux resource list
    python3 tests/site/sitectl.py exec --run-dir /tmp/site 0 --user alice -- flux run -N3 id
    python3 tests/site/sitectl.py down --run-dir /tmp/site     # or Ctrl-C the first one

``up`` prints ``ready`` once every node's ``flux.service`` reached its run
state, and writes ``RUN_DIR/site.json`` (the nodes, their leader pids and
addresses) that ``exec`` and the tests read.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rootfs

CGROUP_V2 = Path("/sys/fs/cgroup/unified")
CGROUP_SD = Path("/sys/fs/cgroup/systemd")
PREFIX = "sdexec-site-"
PROPAGATE = Path("/run/systemd/nspawn/propagate")
SUBNET = "10.23.0"
PORT = 8050
GUESTS = {"alice": 1001, "bob": 1002}


def _flux_prefix() -> Path:
    """Where flux-core and flux-security are installed: $SDEXEC_SITE_FLUX_PREFIX,
    else that of $SDEXEC_FLUX (PREFIX/bin/flux), else /usr/local."""
    given = os.environ.get("SDEXEC_SITE_FLUX_PREFIX")
    if given:
        return Path(given)
    flux = os.environ.get("SDEXEC_FLUX")
    return Path(flux).resolve().parents[1] if flux else Path("/usr/local")


FLUX_PREFIX = _flux_prefix()
FLUX_SYSCONF = Path("/etc/flux")
#: Entries of the host's /etc/flux that the nodes use as installed; the others
#: (system, security, imp) are each node's own configuration.
FLUX_ETC_SHARED = ("modprobe", "shell")
IMP = "/usr/libexec/flux/flux-imp"
OUR_MODULE = "/usr/lib/python3/dist-packages/sdexec/flux/module.py"
BOOT_TIMEOUT = 120.0
STOP_TIMEOUT = 20.0


def flux_missing() -> str | None:
    """Why the harness cannot run here, in one line, or None."""
    if os.geteuid() != 0:
        return "site tests skipped: they need root"
    if not (FLUX_PREFIX / "bin/flux").is_file():
        return f"site tests skipped: no flux-core installed under {FLUX_PREFIX}"
    if not (FLUX_PREFIX / "libexec/flux/flux-imp").is_file():
        return f"site tests skipped: no flux-security (flux-imp) under {FLUX_PREFIX}"
    if not (FLUX_PREFIX / "lib/systemd/system/flux.service").is_file():
        return "site tests skipped: flux-core was built without systemd (no flux.service)"
    for tool in ("systemd-nspawn", "debootstrap", "unshare", "nsenter", "ip"):
        if shutil.which(tool) is None:
            return f"site tests skipped: {tool} not found (scripts/bootstrap installs it)"
    if not CGROUP_V2.is_dir() and not Path("/sys/fs/cgroup/cgroup.controllers").is_file():
        return "site tests skipped: no cgroup v2 hierarchy"
    return None


def cgroup_v2_root() -> Path:
    return CGROUP_V2 if CGROUP_V2.is_dir() else Path("/sys/fs/cgroup")


@dataclass
class Node:
    index: int
    hostname: str
    machine: str
    address: str
    netns_pid: int = 0
    nspawn_pid: int = 0
    leader: int = 0  # the container's PID 1, as the host sees it


@dataclass
class SiteInfo:
    supervisor: int
    module: str
    nodes: list[Node]

    @classmethod
    def load(cls, run_dir: Path) -> SiteInfo:
        data = json.loads((run_dir / "site.json").read_text())
        return cls(data["supervisor"], data["module"], [Node(**n) for n in data["nodes"]])


def log(*words: object) -> None:
    print("sitectl:", *words, file=sys.stderr, flush=True)


def run(cmd: Sequence[str], **kw: object) -> subprocess.CompletedProcess[str]:
    """Run a set-up command; its failure is the harness's (with its output)."""
    result = subprocess.run(list(cmd), capture_output=True, text=True, check=False, **kw)  # type: ignore[call-overload]
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {result.returncode}: {result.stderr.strip()}")
    return result  # type: ignore[no-any-return]


# --- cgroups ----------------------------------------------------------------------------


def cgroup_dirs(name: str) -> list[Path]:
    dirs = [cgroup_v2_root() / name]
    if CGROUP_SD.is_dir():
        dirs.append(CGROUP_SD / name)
    return dirs


def enter_cgroup(name: str, pid: int = 0) -> None:
    """Move ``pid`` (0: the caller) into cgroup ``name`` of each hierarchy, made if needed."""
    for d in cgroup_dirs(name):
        d.mkdir(parents=True, exist_ok=True)
        (d / "cgroup.procs").write_text(f"{pid or os.getpid()}\n")


def cgroup_pids(top: Path) -> list[int]:
    pids: list[int] = []
    for procs in top.rglob("cgroup.procs"):
        with contextlib.suppress(OSError):
            pids += [int(p) for p in procs.read_text().split()]
    return pids


def kill_cgroup_tree(name: str) -> None:
    """SIGKILL every process under cgroup ``name`` (v2 ``cgroup.kill``; else one by one)."""
    v2 = cgroup_v2_root() / name
    if not v2.is_dir():
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pids = [p for d in cgroup_dirs(name) for p in cgroup_pids(d)]
        if not pids:
            return
        if (v2 / "cgroup.kill").exists():
            with contextlib.suppress(OSError):
                (v2 / "cgroup.kill").write_text("1\n")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    raise RuntimeError(f"processes left in cgroup {name}: {pids}")


def remove_cgroup_tree(name: str) -> None:
    """Remove cgroup ``name`` in every hierarchy, deepest directories first."""
    for top in cgroup_dirs(name):
        if not top.is_dir():
            continue
        dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
        for d in [*dirs, top]:
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)
            else:
                raise RuntimeError(f"cannot remove cgroup {d}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep() -> list[str]:
    """Remove what supervisors that no longer run left behind; what was removed."""
    removed: list[str] = []
    roots = [cgroup_v2_root(), *([CGROUP_SD] if CGROUP_SD.is_dir() else [])]
    names = {p.name for r in roots for p in r.glob(PREFIX + "*") if p.is_dir()}
    for name in sorted(names):
        owner = name.removeprefix(PREFIX)
        if owner.isdigit() and pid_alive(int(owner)) and owner_is_supervisor(int(owner)):
            continue
        kill_cgroup_tree(name)
        remove_cgroup_tree(name)
        removed.append(name)
        for path in PROPAGATE.glob(f"sdx{owner}n*"):
            shutil.rmtree(path, ignore_errors=True)
    for empty in (PROPAGATE, PROPAGATE.parent / "locks", PROPAGATE.parent):
        with contextlib.suppress(OSError):
            empty.rmdir()
    return removed


def owner_is_supervisor(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return f"/{PREFIX}{pid}/" in Path(f"/proc/{pid}/cgroup").read_text()
    return False


# --- the run's root filesystems ----------------------------------------------------------


def write(path: Path, text: str, mode: int = 0o644, owner: tuple[int, int] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    if owner is not None:
        os.chown(path, *owner)


def flux_config(nodes: Sequence[Node], module: str, exec_method: str | None = None) -> str:
    """The one system config of every node."""
    hosts = f"node[0-{len(nodes) - 1}]" if len(nodes) > 1 else "node0"
    modules = f'\n[modules.sdexec]\nmodule = "{OUR_MODULE}"\n' if module == "sdexec" else ""
    return f"""# The sdexec site harness's Flux system config, the same on every node.
[bootstrap]
curve_cert = "/etc/flux/system/curve.cert"
default_port = {PORT}
default_bind = "tcp://eth0:%p"
default_connect = "tcp://%h:%p"
hosts = [{{ host = "{hosts}" }}]

[systemd]
enable = true
{modules}
[exec]
service = "sdexec"
imp = "{IMP}"
{f'method = "{exec_method}"' if exec_method else ""}

[access]
allow-guest-user = true
allow-root-owner = true

[resource]
noverify = true
[[resource.config]]
hosts = "{hosts}"
cores = "0-1"

[job-manager]
# Nothing of the instance's own prolog/epilog unless a test configures one.

[exec.sdexec-properties]
"""


IMP_CONFIG = f"""# The IMP as a site configures it: only flux may use it, for job shells.
[exec]
allowed-users = ["flux"]
allowed-shells = ["{FLUX_PREFIX}/libexec/flux/flux-shell"]
"""

#: The site's prolog through sdexec (``--prolog``): job-manager runs the
#: command on rank 0 with the job's ranks in FLUX_JOB_RANKS; it runs the
#: IMP's ``run prolog`` (the site's script, as root) on each rank as a unit of
#: its own, and drains the ranks where it failed, with the report's reason.
PERILOG_CONFIG = """[job-manager]
plugins = [{ load = "perilog.so" }]

[job-manager.prolog]
command = ["/etc/flux/system/sdexec-perilog", "prolog"]
timeout = "2m"
"""

PERILOG_COMMAND = """#!/bin/sh
# Run the site's prolog or epilog (the IMP's "run PHASE", as root) on every
# rank of the job as a systemd unit of its own, and drain the nodes where it
# did not succeed, with the reason sdexec perilog gives and the script's
# last line of output.  Its whole output stays in each node's journal.
phase=$1
report=$(sdexec perilog run --phase "$phase" -r "$FLUX_JOB_RANKS" --timeout 60 \\
    --kill-timeout 10 --json -- /usr/libexec/flux/flux-imp run "$phase")
status=$?
printf '%s\\n' "$report" | jq -r '.drain[]? | [.host, .reason + ((.output // "")
    | if type == "array" then . else split("\\n") end | map(select(length > 0))
    | if length > 0 then ": " + .[-1] else "" end)] | @tsv' |
while IFS="$(printf '\\t')" read -r host reason; do
    flux resource drain "$host" "$reason"
done
printf '%s\\n' "$report" | jq -r '"\\(.phase) output: sdexec logs -r RANK \\(.label)"' >&2
exit $status
"""

IMP_RUN_CONFIG = """[run.prolog]
allowed-users = ["flux"]
path = "/etc/flux/system/prolog"

[run.epilog]
allowed-users = ["flux"]
path = "/etc/flux/system/epilog"
"""

#: The site's own prolog in the harness: it fails where /etc/site-prolog-fail exists.
SITE_PROLOG = """#!/bin/sh
echo "prolog on $(hostname) as $(id -un)"
if test -e /etc/site-prolog-fail; then
    echo "prolog: $(cat /etc/site-prolog-fail)" >&2
    exit 1
fi
"""

SIGN_CONFIG = """[sign]
max-ttl = 1209600
default-type = "munge"
allowed-types = ["munge"]
"""


def chroot(root: Path, *cmd: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "DEBIAN_FRONTEND": "noninteractive",
    }
    return run(["chroot", str(root), *cmd], env=env)


def prepare_site(
    rootfs_dir: Path,
    run_dir: Path,
    deb: Path,
    nodes: Sequence[Node],
    module: str,
    exec_method: str | None = None,
    sudo_user: str | None = None,
    prolog: bool = False,
) -> Path:
    """The layer every node shares: the .deb, users, munge, Flux and IMP config.

    Made on an overlay of the cached root filesystem (in this process's own
    mount namespace); returns its upper directory, a lower layer of each node.
    """
    upper, work, root = run_dir / "site/upper", run_dir / "site/work", run_dir / "site/root"
    for d in (upper, work, root):
        d.mkdir(parents=True, exist_ok=True)
    run(
        [
            "mount",
            "-t",
            "overlay",
            "overlay",
            "-o",
            f"lowerdir={rootfs_dir},upperdir={upper},workdir={work}",
            str(root),
        ]
    )
    try:
        for src, dst in (
            ("/proc", "proc"),
            ("/dev", "dev"),
            (str(FLUX_PREFIX), str(FLUX_PREFIX)[1:]),
        ):
            (root / dst).mkdir(parents=True, exist_ok=True)
            run(["mount", "--bind", src, str(root / dst)])
        shutil.copy(deb, root / "tmp/sdexec.deb")
        chroot(root, "dpkg", "-i", "/tmp/sdexec.deb")
        (root / "tmp/sdexec.deb").unlink()
        chroot(
            root,
            "useradd",
            "--system",
            "--user-group",
            "--home-dir",
            "/var/lib/flux",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "flux",
        )
        # flux is a system user: journald keeps its units' output in the
        # system journal, which it reads (sdexec logs, wait's output) as a
        # member of systemd-journal.
        chroot(root, "usermod", "--append", "--groups", "systemd-journal", "flux")
        for name, uid in GUESTS.items():
            chroot(
                root,
                "useradd",
                "--uid",
                str(uid),
                "--user-group",
                "--create-home",
                "--shell",
                "/bin/bash",
                name,
            )
        if sudo_user:
            # flux-core's own system tests run as a guest with sudo and a user1.
            chroot(
                root,
                "useradd",
                "--uid",
                "1003",
                "--user-group",
                "--create-home",
                "--shell",
                "/bin/bash",
                "user1",
            )
            write(
                root / "etc/sudoers.d/sitetest",
                f"{sudo_user} ALL=(ALL) NOPASSWD: ALL\n",
                mode=0o440,
            )
        flux_uid = int(chroot(root, "id", "-u", "flux").stdout)
        flux_gid = int(chroot(root, "id", "-g", "flux").stdout)
        munge_uid = int(chroot(root, "id", "-u", "munge").stdout)
        munge_gid = int(chroot(root, "id", "-g", "munge").stdout)
        key = root / "etc/munge/munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o400)
        os.chown(key, munge_uid, munge_gid)
        # The shared libraries of the bind-mounted installation, for setuid programs too.
        chroot(root, "ldconfig")
        etc = root / "etc/flux"
        for sub in FLUX_ETC_SHARED:
            (etc / sub).mkdir(parents=True, exist_ok=True)  # mount points
        (etc / "system/cron.d").mkdir(parents=True, exist_ok=True)
        write(etc / "system/conf.d/site.toml", flux_config(nodes, module, exec_method))
        run([str(FLUX_PREFIX / "bin/flux"), "keygen", str(etc / "system/curve.cert")])
        os.chown(etc / "system/curve.cert", flux_uid, flux_gid)
        (etc / "system/curve.cert").chmod(0o400)
        write(etc / "imp/conf.d/imp.toml", IMP_CONFIG)
        if prolog:
            write(etc / "system/conf.d/perilog.toml", PERILOG_CONFIG)
            write(etc / "system/sdexec-perilog", PERILOG_COMMAND, mode=0o755)
            write(etc / "imp/conf.d/run.toml", IMP_RUN_CONFIG)
            write(etc / "system/prolog", SITE_PROLOG, mode=0o755)
            write(etc / "system/epilog", "#!/bin/sh\necho epilog on $(hostname)\n", mode=0o755)
        write(etc / "security/conf.d/sign.toml", SIGN_CONFIG)
        imp = root / IMP.lstrip("/")
        imp.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(FLUX_PREFIX / "libexec/flux/flux-imp", imp)
        os.chown(imp, 0, 0)
        imp.chmod(0o4755)
        wants = root / "etc/systemd/system/multi-user.target.wants"
        wants.mkdir(parents=True, exist_ok=True)
        (wants / "flux.service").unlink(missing_ok=True)
        os.symlink(FLUX_PREFIX / "lib/systemd/system/flux.service", wants / "flux.service")
        hosts = "127.0.0.1 localhost\n" + "".join(f"{n.address} {n.hostname}\n" for n in nodes)
        write(root / "etc/hosts", hosts)
    finally:
        run(["umount", "-R", str(root)])
    return upper


def prepare_node(rootfs_dir: Path, site_upper: Path, run_dir: Path, node: Node) -> Path:
    base = run_dir / f"node{node.index}"
    upper, work, root = base / "upper", base / "work", base / "root"
    for d in (upper, work, root):
        d.mkdir(parents=True, exist_ok=True)
    write(upper / "etc/hostname", node.hostname + "\n")
    run(
        [
            "mount",
            "-t",
            "overlay",
            "overlay",
            "-o",
            f"lowerdir={site_upper}:{rootfs_dir},upperdir={upper},workdir={work}",
            str(root),
        ]
    )
    return root


# --- network ------------------------------------------------------------------------------


def hold_netns() -> subprocess.Popen[bytes]:
    """A process that holds a new network namespace for as long as it lives."""
    return subprocess.Popen(
        ["unshare", "--net", "--", "sleep", "infinity"], stdin=subprocess.DEVNULL
    )


def in_netns(pid: int, *cmd: str) -> None:
    run(["nsenter", f"--net=/proc/{pid}/ns/net", "--", *cmd])


def wait_netns(holder: subprocess.Popen[bytes]) -> None:
    """Until the holder has unshared (its namespace differs from ours)."""
    mine = os.readlink("/proc/self/ns/net")
    for _ in range(200):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{holder.pid}/ns/net") != mine:
                return
        time.sleep(0.01)
    raise RuntimeError("network namespace holder did not start")


# --- the supervisor ---------------------------------------------------------------------


class Supervisor:
    def __init__(
        self, run_dir: Path, n: int, deb: Path, module: str, exec_method: str | None = None
    ) -> None:
        self.run_dir = run_dir
        self.exec_method = exec_method
        self.extra_binds: list[str] = []
        self.sudo_user: str | None = None
        self.prolog = False
        self.deb = deb
        self.module = module
        me = os.getpid()
        self.cgroup = f"{PREFIX}{me}"
        self.nodes = [Node(i, f"node{i}", f"sdx{me}n{i}", f"{SUBNET}.{10 + i}") for i in range(n)]
        self.holders: list[subprocess.Popen[bytes]] = []
        self.nspawns: list[subprocess.Popen[bytes]] = []
        self.mounts: list[Path] = []
        self.locks: list[Path] = []

    def up(self) -> None:
        started = time.monotonic()
        rootfs_dir = rootfs.ensure()
        site_upper = prepare_site(
            rootfs_dir,
            self.run_dir,
            self.deb,
            self.nodes,
            self.module,
            self.exec_method,
            self.sudo_user,
            self.prolog,
        )
        log(f"site layer ready in {time.monotonic() - started:.1f} s")
        self.network()
        for node in self.nodes:
            root = prepare_node(rootfs_dir, site_upper, self.run_dir, node)
            self.mounts.append(root)
            st = root.stat()
            self.locks.append(PROPAGATE.parent / "locks" / f"inode-{st.st_dev}:{st.st_ino}")
            self.boot(node, root)
        boot_started = time.monotonic()
        for node in self.nodes:
            self.wait_booted(node)
        self.save()
        for node in self.nodes:
            self.wait_flux(node)
        log(
            f"{len(self.nodes)} nodes up in {time.monotonic() - boot_started:.1f} s "
            f"({time.monotonic() - started:.1f} s in all)"
        )

    def network(self) -> None:
        switch = hold_netns()
        self.holders.append(switch)
        wait_netns(switch)
        in_netns(switch.pid, "ip", "link", "add", "br0", "type", "bridge")
        in_netns(switch.pid, "ip", "link", "set", "br0", "up")
        for node in self.nodes:
            holder = hold_netns()
            self.holders.append(holder)
            wait_netns(holder)
            node.netns_pid = holder.pid
            port = f"p{node.index}"
            in_netns(
                switch.pid,
                "ip",
                "link",
                "add",
                port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                str(holder.pid),
            )
            in_netns(switch.pid, "ip", "link", "set", port, "master", "br0", "up")
            in_netns(holder.pid, "ip", "addr", "add", f"{node.address}/24", "dev", "eth0")
            in_netns(holder.pid, "ip", "link", "set", "eth0", "up")
            in_netns(holder.pid, "ip", "link", "set", "lo", "up")

    def boot(self, node: Node, root: Path) -> None:
        binds = [f"--bind-ro={FLUX_PREFIX}"]
        binds += [f"--bind-ro={FLUX_SYSCONF / sub}" for sub in FLUX_ETC_SHARED]
        binds += [f"--bind-ro={spec}" for spec in self.extra_binds]
        cmd = [
            "systemd-nspawn",
            "-D",
            str(root),
            "-M",
            node.machine,
            f"--hostname={node.hostname}",
            "--register=no",
            "--keep-unit",
            "--boot",
            "--console=pipe",
            "--link-journal=no",
            "--resolv-conf=off",
            "--timezone=off",
            f"--network-namespace-path=/proc/{node.netns_pid}/ns/net",
            *binds,
        ]
        logfile = open(self.run_dir / f"node{node.index}.console", "wb")  # noqa: SIM115
        cgroup = f"{self.cgroup}/node{node.index}"
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=logfile,
            stderr=subprocess.STDOUT,
            env={**os.environ, "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"},
            preexec_fn=lambda: enter_cgroup(cgroup),
        )
        logfile.close()
        self.nspawns.append(proc)
        node.nspawn_pid = proc.pid

    def wait_booted(self, node: Node) -> None:
        deadline = time.monotonic() + BOOT_TIMEOUT
        while time.monotonic() < deadline:
            leader = find_leader(node.nspawn_pid)
            if leader:
                node.leader = leader
                state = node_cmd(
                    node, ["systemctl", "is-system-running", "--wait"], timeout=BOOT_TIMEOUT
                )
                if state.stdout.strip() in ("running", "degraded"):
                    if state.stdout.strip() == "degraded":
                        failed = node_cmd(node, ["systemctl", "--failed", "--no-legend"])
                        log(f"{node.hostname} degraded: {failed.stdout.strip()}")
                    return
            if self.nspawns[node.index].poll() is not None:
                raise RuntimeError(
                    f"{node.hostname}: nspawn exited {self.nspawns[node.index].returncode}"
                    f" (see {self.run_dir}/node{node.index}.console)"
                )
            time.sleep(0.1)
        raise RuntimeError(f"{node.hostname} did not boot in {BOOT_TIMEOUT} s")

    def wait_flux(self, node: Node) -> None:
        deadline = time.monotonic() + BOOT_TIMEOUT
        last = ""
        while time.monotonic() < deadline:
            # "HH:MM:SS STATE DURATION, owner ...": this broker's own state.
            res = node_cmd(node, ["flux", "uptime"], timeout=10)
            if res.returncode == 0 and res.stdout.split()[1:2] == ["run"]:
                return
            last = res.stderr.strip() or res.stdout.strip()
            time.sleep(0.2)
        raise RuntimeError(f"{node.hostname}: flux did not come up: {last}")

    def save(self) -> None:
        info = {
            "supervisor": os.getpid(),
            "module": self.module,
            "nodes": [asdict(n) for n in self.nodes],
        }
        tmp = self.run_dir / "site.json.tmp"
        tmp.write_text(json.dumps(info, indent=1))
        tmp.rename(self.run_dir / "site.json")

    def down(self) -> None:
        """Power the nodes off and remove every trace; never raises before it is all done."""
        errors: list[str] = []
        for proc in self.nspawns:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)  # nspawn asks the container's systemd to power off
        deadline = time.monotonic() + STOP_TIMEOUT
        for proc in self.nspawns:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                errors.append(f"nspawn {proc.pid} did not stop in {STOP_TIMEOUT} s: killed")
        for node in self.nodes:
            try:
                kill_cgroup_tree(f"{self.cgroup}/node{node.index}")
            except RuntimeError as exc:
                errors.append(str(exc))
        for proc in self.nspawns:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        for holder in self.holders:
            holder.kill()
            holder.wait()
        for root in self.mounts:
            subprocess.run(["umount", "-R", str(root)], check=False, capture_output=True)
        for node in self.nodes:
            shutil.rmtree(PROPAGATE / node.machine, ignore_errors=True)
            shutil.rmtree(self.run_dir / f"node{node.index}", ignore_errors=True)
        for empty in (
            PROPAGATE,
            PROPAGATE.parent / "locks",
            PROPAGATE.parent,
        ):  # nspawn makes them; nothing else uses them
            with contextlib.suppress(OSError):
                empty.rmdir()
        shutil.rmtree(self.run_dir / "site", ignore_errors=True)
        (self.run_dir / "site.json").unlink(missing_ok=True)
        for e in errors:
            log(e)


def find_leader(nspawn_pid: int) -> int:
    """The container's PID 1 (a systemd among nspawn's descendants), or 0."""
    todo = [nspawn_pid]
    while todo:
        pid = todo.pop()
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        if comm == "systemd" and pid != nspawn_pid:
            return pid
        todo += [int(c) for c in children]
    return 0


def nsenter_argv(leader: int, cmd: Sequence[str], user: str | None = None) -> list[str]:
    """A command line that runs ``cmd`` in a node (as ``user``, with a clean environment)."""
    env = [
        "env",
        "-i",
        "PATH=/usr/local/bin:/usr/local/sbin:/usr/bin:/usr/sbin:/bin:/sbin",
        "LANG=C.UTF-8",
        "TERM=dumb",
    ]
    if user is None:
        inner = [*env, "HOME=/root", "USER=root", *cmd]
    else:
        inner = [
            "setpriv",
            f"--reuid={user}",
            f"--regid={user}",
            "--init-groups",
            *env,
            f"HOME=/home/{user}",
            f"USER={user}",
            f"LOGNAME={user}",
            *cmd,
        ]
    return [
        "nsenter",
        "-t",
        str(leader),
        "-m",
        "-u",
        "-i",
        "-n",
        "-p",
        "-C",
        "-r",
        "-w",
        "--",
        *inner,
    ]


def node_cmd(
    node: Node,
    cmd: Sequence[str],
    user: str | None = None,
    timeout: float = 60,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        nsenter_argv(node.leader, cmd, user),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
    )


def die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_PDEATHSIG = 1
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def cmd_up(args: argparse.Namespace) -> int:
    why = flux_missing()
    if why:
        log(why)
        return 77
    run_dir = args.run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    if not args.inside:
        for name in sweep():
            log(f"removed leftovers: {name}")
        # Into a cgroup of our own, then into a mount namespace of our own (by
        # exec: the pid, cgroup and parent-death signal stay ours).
        enter_cgroup(f"{PREFIX}{os.getpid()}/supervisor")
        if args.die_with_parent:
            die_with_parent()
        argv = [
            sys.executable,
            str(Path(__file__).resolve()),
            "up",
            "--inside",
            "--nodes",
            str(args.nodes),
            "--run-dir",
            str(run_dir),
            "--deb",
            str(args.deb),
            "--module",
            args.module,
        ]
        if args.exec_method:
            argv += ["--exec-method", args.exec_method]
        for spec in args.bind_ro or []:
            argv += ["--bind-ro", spec]
        if args.sudo_user:
            argv += ["--sudo-user", args.sudo_user]
        if args.prolog:
            argv.append("--prolog")
        os.execvp("unshare", ["unshare", "--mount", "--propagation", "private", "--", *argv])
    sup = Supervisor(run_dir, args.nodes, args.deb.resolve(), args.module, args.exec_method)
    sup.extra_binds = args.bind_ro or []
    sup.sudo_user = args.sudo_user
    sup.prolog = args.prolog
    (run_dir / "supervisor.pid").write_text(f"{os.getpid()}\n")
    stop = {"signal": 0}

    def on_signal(signum: int, _frame: object) -> None:
        stop["signal"] = signum
        raise KeyboardInterrupt

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)
    status = 0
    try:
        try:
            sup.up()
            print("ready", flush=True)
            sel = selectors.DefaultSelector()
            sel.register(sys.stdin, selectors.EVENT_READ)
            while True:  # until our input ends (the tests close it) or a signal
                sel.select()
                if not os.read(sys.stdin.fileno(), 4096):
                    break
        except KeyboardInterrupt:
            pass
        except Exception as exc:
            log(f"failed: {exc}")
            status = 1
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        sup.down()
        kill_cgroup_tree_except_self(sup.cgroup)
        (run_dir / "supervisor.pid").unlink(missing_ok=True)
        log("down")
    return status


def kill_cgroup_tree_except_self(name: str) -> None:
    """Kill what else is in our cgroups, move out and remove them."""
    me = os.getpid()
    for d in cgroup_dirs(name):
        for pid in cgroup_pids(d):
            if pid != me:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    for d in cgroup_dirs(name):
        (d.parent / "cgroup.procs").write_text(f"{me}\n")
    remove_cgroup_tree(name)


def cmd_exec(args: argparse.Namespace) -> int:
    info = SiteInfo.load(args.run_dir)
    node = info.nodes[args.node]
    argv = nsenter_argv(node.leader, args.cmd, args.user)
    os.execvp(argv[0], argv)


def cmd_down(args: argparse.Namespace) -> int:
    pid = int((args.run_dir / "supervisor.pid").read_text())
    os.kill(pid, signal.SIGTERM)
    while pid_alive(pid):
        time.sleep(0.1)
    return 0


def cmd_sweep(_args: argparse.Namespace) -> int:
    for name in sweep():
        print(name)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="boot the site and hold it until interrupted")
    up.add_argument("--nodes", type=int, default=3, choices=range(1, 5))
    up.add_argument("--run-dir", type=Path, required=True)
    up.add_argument("--deb", type=Path, required=True)
    up.add_argument("--module", choices=("sdexec", "c"), default="sdexec")
    up.add_argument(
        "--exec-method",
        choices=("bulk-exec", "bgexec"),
        help="job-exec's [exec] method (default: flux-core's)",
    )
    up.add_argument(
        "--bind-ro",
        action="append",
        metavar="SRC[:DST]",
        help="also bind SRC read-only into every node (at DST)",
    )
    up.add_argument(
        "--sudo-user",
        metavar="USER",
        help="let USER sudo without a password, and add user1 (flux-core's tests)",
    )
    up.add_argument(
        "--prolog",
        action="store_true",
        help="the site's prolog through sdexec perilog and the IMP's run",
    )
    up.add_argument("--die-with-parent", action="store_true")
    up.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    up.set_defaults(func=cmd_up)
    ex = sub.add_parser("exec", help="run a command in a node")
    ex.add_argument("--run-dir", type=Path, required=True)
    ex.add_argument("--user")
    ex.add_argument("node", type=int)
    ex.add_argument("cmd", nargs="+")
    ex.set_defaults(func=cmd_exec)
    down = sub.add_parser("down", help="stop the site of a run directory")
    down.add_argument("--run-dir", type=Path, required=True)
    down.set_defaults(func=cmd_down)
    sw = sub.add_parser("sweep", help="remove what crashed supervisors left")
    sw.set_defaults(func=cmd_sweep)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
