"""Servers of a test's own, next to the session server, sharing its systemd manager.

They are stopped with SIGKILL: on a clean stop ``sdexec serve`` also stops a
private manager it finds idle, and the manager belongs to the session.
"""

from __future__ import annotations

import contextlib
import itertools
import signal
import socket
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


@contextlib.contextmanager
def own_server(
    manager: PrivateManager, workdir: Path, *args: str, **env: str
) -> Iterator[OwnServer]:
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
