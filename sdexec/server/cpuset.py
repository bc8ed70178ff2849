"""Is a unit's CPU set what was asked for?  (``AllowedCPUs`` after the start.)

systemd accepts ``AllowedCPUs=`` even where it cannot apply it: a user
manager without the cpuset controller delegated to it simply does not.  A
Flux job confined to its cores must not run unconfined, so when the cores
came from the resource mapper, the process's cgroup is read once it has
started: ``cpuset.cpus`` of the cgroup in ``/proc/PID/cgroup`` must hold
exactly the expected CPUs.  The texts are those of flux-core's sdexec.
"""

from __future__ import annotations

import os

from sdexec.base.errors import SdexecError
from sdexec.proto import idset

HINT = "is cpuset controller delegated to the user instance?"


def cgroup2_mount(mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """Where the unified (v2) cgroup hierarchy is mounted here, if it is."""
    try:
        with open(mountinfo) as f:
            for line in f:
                left, _, right = line.partition(" - ")
                if right.split(" ", 1)[0] == "cgroup2":
                    return left.split()[4]
    except OSError:
        return None
    return None


def check_cpus(pid: int, expected: set[int], proc: str = "/proc") -> str | None:
    """None if ``pid``'s cgroup allows exactly ``expected``; else why not."""
    try:
        with open(f"{proc}/{pid}/cgroup") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        return f"AllowedCPUs: cannot read cgroup for pid {pid}: {os.strerror(exc.errno or 0)}"
    path = next((line[3:] for line in lines if line.startswith("0::")), None)
    mount = cgroup2_mount()
    if path is None or mount is None:
        return f"AllowedCPUs not enforced: cpuset.cpus unavailable ({HINT})"
    try:
        with open(os.path.join(mount, path.lstrip("/"), "cpuset.cpus")) as f:
            text = f.read().strip()
    except OSError:
        return f"AllowedCPUs not enforced: cpuset.cpus unavailable ({HINT})"
    try:
        got = idset.decode(text)
    except SdexecError:
        got = set()
    if got != expected:
        return (
            f"AllowedCPUs not enforced: expected {idset.encode(expected)} got {text or '(none)'}"
            f" ({HINT})"
        )
    return None
