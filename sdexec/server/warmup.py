"""Warm the kernel's cgroup migration lock for the service's execs.

Both front doors (``sdexec serve`` and the Flux module) start one
:class:`~sdexec.systemd.migration.MigrationWarmer` for their process and
kick it when an exec arrives, and, for the standalone server, when a client
connects that announces one (see :mod:`sdexec.systemd.migration`).  Where
the warmer cannot work (no cgroup2, no permission to write the process's own
``cgroup.procs``, a threaded cgroup) it says why once and nothing changes.
"""

from __future__ import annotations

import structlog

from sdexec.broker.router import Router
from sdexec.server.service import Service
from sdexec.systemd.migration import MigrationWarmer, own_cgroup_procs
from sdexec.systemd.private import cgroup2_root
from sdexec.transport.link import EXEC_ANNOUNCE

log = structlog.get_logger("sdexec.server")


def warm_migrations(service: Service, router: Router | None = None) -> MigrationWarmer | None:
    """Start the warmer and hook it to ``service`` (and ``router``'s new
    connections); None when it cannot work here.  The caller closes it."""
    procs, reason = own_cgroup_procs(cgroup2_root())
    warmer = MigrationWarmer(procs)
    warmer.start()
    if warmer.disabled:
        log.info("cgroup migrations not warmed", reason=reason or warmer.disabled)
        return None
    log.info("cgroup migrations warmed", cgroup_procs=str(procs))
    service.before_exec = warmer.kick
    if router is not None:
        router.accept_hooks.append(
            lambda conn: warmer.kick() if conn.peer_name.startswith(EXEC_ANNOUNCE) else None
        )
    return warmer
