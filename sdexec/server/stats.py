"""What a unit uses, read from its cgroup: CPU time, memory, start time.

Theory of operation
-------------------
Every unit is a cgroup-v2 directory of its own.  Its path comes from the
main process's ``/proc/PID/cgroup`` (the ``0::`` line; a service's main
process lives in the unit's own cgroup), so no D-Bus call is needed;
systemd's ``CPUUsageNSec``/``MemoryCurrent`` properties read the same
files.  In that directory:

* ``cpu.stat`` ``usage_usec``: CPU time of every process the unit ever
  had, children included.  cgroup v2 keeps it without any controller, so
  it is always there.
* ``memory.current``: the unit's memory, page cache included, when the
  memory controller is enabled for the unit's cgroup.  Where it is not (a
  hybrid machine whose memory controller is bound to cgroup v1, as on the
  project's test machines, or a manager without ``MemoryAccounting``),
  the memory shown is the sum of the resident set sizes of the unit's
  processes (``/proc/PID/statm``), and the entry says so
  (``memory_source`` ``"rss"`` instead of ``"cgroup"``).
* the start time is the main process's, from ``/proc/PID/stat``, as
  ``ps`` computes it: it survives a server restart.

Each read is a few small files (tens of microseconds); nothing is cached
but the boot time, and a unit that is gone, or a file that cannot be read,
just leaves its fields out.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sdexec.systemd.private import cgroup2_root

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")
_boot_time: list[float] = []


def boot_time() -> float:
    """When the machine booted, in seconds since the epoch (``btime`` of /proc/stat)."""
    if not _boot_time:
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime "):
                    _boot_time.append(float(line.split()[1]))
                    break
            else:
                _boot_time.append(0.0)
    return _boot_time[0]


def cgroup_dir(pid: int) -> Path | None:
    """The cgroup-v2 directory of ``pid``, or None."""
    try:
        with open(f"/proc/{pid}/cgroup", "rb") as f:
            for line in f:
                if line.startswith(b"0::"):
                    rel = line[3:].strip().decode(errors="replace").lstrip("/")
                    return cgroup2_root() / rel
    except OSError:
        pass
    return None


def start_time(pid: int) -> float | None:
    """When ``pid`` started, in seconds since the epoch."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()
    try:
        ticks = int(fields[19])  # field 22, counted from the state (field 3)
    except (IndexError, ValueError):
        return None
    return boot_time() + ticks / _CLK_TCK


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_bytes())
    except (OSError, ValueError):
        return None


def cpu_usec(cg: Path) -> int | None:
    try:
        with open(cg / "cpu.stat", "rb") as f:
            for line in f:
                if line.startswith(b"usage_usec "):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def rss_bytes(cg: Path) -> int | None:
    """The summed resident set of the cgroup's processes."""
    try:
        pids = (cg / "cgroup.procs").read_bytes().split()
    except OSError:
        return None
    total = 0
    for pid in pids:
        try:
            with open(b"/proc/%s/statm" % pid, "rb") as f:
                total += int(f.read().split()[1]) * _PAGE
        except (OSError, ValueError, IndexError):
            continue
    return total


def unit_stats(pid: int) -> dict[str, Any]:
    """The ``sdexec.list`` stats of the unit whose main process is ``pid``.

    Keys, each left out when it cannot be read: ``cpu_usec`` (int),
    ``memory`` (bytes) with ``memory_source`` (``"cgroup"`` or ``"rss"``),
    ``started`` (seconds since the epoch, a float).
    """
    out: dict[str, Any] = {}
    started = start_time(pid)
    if started is not None:
        out["started"] = round(started, 2)
    cg = cgroup_dir(pid)
    if cg is None:
        return out
    cpu = cpu_usec(cg)
    if cpu is not None:
        out["cpu_usec"] = cpu
    memory = _read_int(cg / "memory.current")
    if memory is not None:
        out["memory"], out["memory_source"] = memory, "cgroup"
    else:
        rss = rss_bytes(cg)
        if rss is not None:
            out["memory"], out["memory_source"] = rss, "rss"
    return out
