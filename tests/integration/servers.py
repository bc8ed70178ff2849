"""Servers of a test module's own, free to be killed and restarted.

Each module that needs them gets one private systemd manager of its own
(:func:`own_manager`), as test_restart.py does: a server adopts the units
and state records it finds for its rank and state directory, so two servers
must never share the session server's.  One server runs on a module's
manager at a time.  Tests kill servers with SIGKILL (a clean stop would also
stop an idle private manager); the module's fixture stops whatever is left,
then the manager, and checks nothing remains.
"""

from __future__ import annotations

import contextlib
import itertools
import shutil
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from conftest import Server

from sdexec.systemd.private import PrivateManager

_count = itertools.count()


@dataclass
class OwnServer(Server):
    """A :class:`Server` with extra environment, that tests may kill and restart."""

    extra_env: dict[str, str] = field(default_factory=dict)

    def env(self, **extra: str) -> dict[str, str]:
        env = super().env()
        env.update(self.extra_env)
        env.update(extra)
        return env

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def ensure_running(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = None
            self.start()


@contextlib.contextmanager
def own_manager(workdir: Path) -> Iterator[PrivateManager]:
    """A private systemd manager for one test module."""
    state = workdir / f"own{next(_count)}-state"
    manager = PrivateManager(state)
    manager.start()
    try:
        yield manager
    finally:
        manager.stop()
        shutil.rmtree(state, ignore_errors=True)
        assert not manager.slice.exists(), f"cgroup left behind: {manager.slice}"


@contextlib.contextmanager
def own_server(
    manager: PrivateManager, workdir: Path, *args: str, **env: str
) -> Iterator[OwnServer]:
    """A started server on ``manager`` (whose only server it must be)."""
    n = next(_count)
    srv = OwnServer(
        manager,
        str(workdir / f"own{n}"),
        manager.state_dir,
        workdir / f"own{n}.log",
        extra_args=list(args),
        extra_env=env,
    )
    srv.start()
    try:
        yield srv
    finally:
        if srv.proc is not None:
            srv.kill()
        # Units of a killed server may outlive it, as they should: stop them.
        for unit in srv.units():
            srv.systemctl("stop", unit)
        srv.systemctl("reset-failed")
