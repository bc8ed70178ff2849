"""Which resource properties a manager can enforce: its cgroup's controllers.

systemd applies ``MemoryMax=``, ``CPUQuota=``, ``TasksMax=``... through
cgroup v2 controllers, and a manager can give its units only the controllers
its own cgroup has (``cgroup.controllers``; the parent must have delegated
them).  Without the ``memory`` controller a unit with ``MemoryMax=20M``
starts all the same and allocates what it likes: systemd says nothing.  So
the server reads the manager's cgroup (the ``ControlGroup`` property of the
systemd Manager object) and, for each property of an exec that needs a
controller the manager lacks, warns, or refuses the exec when asked to be
strict (the exec option ``SDEXEC_STRICT_PROPERTIES``, read with the request in
:mod:`sdexec.proto.rfc42`, or ``sdexec serve --strict-properties``).

Pure but for :func:`available`, which reads one small file.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable
from pathlib import Path

from sdexec.base.errors import SdexecError

#: The unit setting (as the user writes it) -> the cgroup v2 controller it needs.
PROPERTY_CONTROLLERS: dict[str, str] = {
    **dict.fromkeys(
        ("MemoryMax", "MemoryHigh", "MemoryMin", "MemoryLow", "MemorySwapMax"), "memory"
    ),
    **dict.fromkeys(("CPUQuota", "CPUQuotaPerSecUSec", "CPUWeight"), "cpu"),
    "IOWeight": "io",
    "TasksMax": "pids",
    **dict.fromkeys(("AllowedCPUs", "AllowedMemoryNodes"), "cpuset"),
}
#: Values that ask for no limit at all, so need no controller.
_NO_LIMIT = frozenset({"infinity", ""})


def needed(settings: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """Controller -> the ``Name=Value`` settings that need it."""
    out: dict[str, list[str]] = {}
    for name, value in settings:
        controller = PROPERTY_CONTROLLERS.get(name)
        if controller is not None and value.strip() not in _NO_LIMIT:
            out.setdefault(controller, []).append(f"{name}={value}")
    return out


def available(cgroup_root: Path, control_group: str) -> frozenset[str] | None:
    """The controllers of the manager's cgroup; None if they cannot be read."""
    path = cgroup_root / control_group.lstrip("/") / "cgroup.controllers"
    try:
        return frozenset(path.read_text().split())
    except OSError:
        return None


def unenforced(
    settings: Iterable[tuple[str, str]], controllers: frozenset[str] | None
) -> list[str]:
    """One warning per setting the manager cannot enforce (none if that is unknown)."""
    if controllers is None:
        return []
    return [
        f"{setting} is not enforced: the systemd manager has no {controller} controller (cgroup v2)"
        for controller, names in needed(settings).items()
        if controller not in controllers
        for setting in names
    ]


def check(
    settings: list[tuple[str, str]], controllers: frozenset[str] | None, strict: bool
) -> list[str]:
    """The warnings for ``settings``; EOPNOTSUPP with them instead when ``strict``."""
    warnings = unenforced(settings, controllers)
    if warnings and strict:
        raise SdexecError(errno.EOPNOTSUPP, "; ".join(warnings))
    return warnings
