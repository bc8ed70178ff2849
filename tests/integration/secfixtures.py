"""Fixtures for the security tests: a throwaway guest user, a private munged, more servers.

* ``guest``: a system user with a random name, created with ``useradd`` for
  the session and removed with ``userdel`` at teardown.  Commands run as it
  through ``setpriv`` with Debian's ``/usr/bin/python3`` and a world-readable
  copy of the ``sdexec`` package (the CLI needs nothing but the standard
  library), because the test interpreter and the work tree may live where
  other users cannot read (``/root``).
* ``munged``: a real ``munged`` from Debian's ``munge`` package with its own
  1 KiB key and socket, run in the foreground and stopped (by its pid) here.
* ``make_server``: more ``sdexec serve`` processes with other options, on the
  session's private systemd manager.  They run with ``--systemd user`` against
  that manager's bus, so stopping one never stops the shared manager.

Import the fixtures into a test module to use them.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO, Server

from sdexec.systemd.private import PrivateManager

GUEST_PYTHON = "/usr/bin/python3"


@dataclass
class Guest:
    """The throwaway user and how to run things as it."""

    name: str
    uid: int
    gid: int
    home: Path  # a world-readable directory with a copy of the sdexec package

    def argv(self, *argv: str) -> list[str]:
        return [
            "setpriv",
            f"--reuid={self.uid}",
            f"--regid={self.gid}",
            "--clear-groups",
            "--",
            *argv,
        ]

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "PYTHONPATH": str(self.home),
            "PYTHONDONTWRITEBYTECODE": "1",
            "HOME": str(self.home),
            "LANG": "C.UTF-8",
        }
        env.update(extra)
        return env

    def run(
        self, *argv: str, env: dict[str, str] | None = None, timeout: float = 60, **kw: object
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(  # type: ignore[call-overload, no-any-return]
            self.argv(*argv),
            env=env or self.env(),
            capture_output=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            **kw,
        )

    def sdexec(
        self, uri: str, *args: str, munge_socket: str = "", timeout: float = 60
    ) -> subprocess.CompletedProcess[bytes]:
        """The real CLI, run as the guest."""
        env = self.env(SDEXEC_URI=uri)
        if munge_socket:
            env["SDEXEC_MUNGE_SOCKET"] = munge_socket
        return self.run(GUEST_PYTHON, "-m", "sdexec.cli.main", *args, env=env, timeout=timeout)


@pytest.fixture(scope="session")
def guest() -> Iterator[Guest]:
    if not os.access(GUEST_PYTHON, os.X_OK):
        pytest.fail(f"{GUEST_PYTHON} is needed to run commands as the guest user")
    name = "sdxg" + secrets.token_hex(4)
    subprocess.run(
        [
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            name,
        ],
        check=True,
        capture_output=True,
    )
    home = Path(tempfile.mkdtemp(prefix="sdxg-", dir="/tmp"))
    try:
        import pwd

        pw = pwd.getpwnam(name)
        shutil.copytree(
            REPO / "sdexec", home / "sdexec", ignore=shutil.ignore_patterns("__pycache__")
        )
        for path in [home, *home.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        yield Guest(name, pw.pw_uid, pw.pw_gid, home)
    finally:
        shutil.rmtree(home, ignore_errors=True)
        subprocess.run(["userdel", name], capture_output=True)
        subprocess.run(["groupdel", name], capture_output=True)  # if userdel left it


@pytest.fixture(scope="session")
def munged() -> Iterator[str]:
    """The socket of a private munged (its directory is world-searchable)."""
    d = Path(tempfile.mkdtemp(prefix="sdxm-", dir="/tmp"))
    d.chmod(0o755)
    key = d / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    sock = d / "munge.socket"
    proc = subprocess.Popen(
        [
            "/usr/sbin/munged",
            "--foreground",  # not -f, which is --force and still forks away
            f"--key-file={key}",
            f"--socket={sock}",
            f"--pid-file={d / 'munged.pid'}",
            f"--log-file={d / 'munged.log'}",
            f"--seed-file={d / 'munged.seed'}",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                log = (
                    (d / "munged.log").read_text(errors="replace")
                    if (d / "munged.log").exists()
                    else ""
                )
                pytest.fail(f"munged did not start: {log}")
            time.sleep(0.02)
        assert proc.poll() is None, "munged forked away; it must stay in the foreground"
        yield str(sock)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def public_dir() -> Iterator[Path]:
    """A directory other users can search, for sockets a guest must reach."""
    d = Path(tempfile.mkdtemp(prefix="sdxs-", dir="/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


ServerFactory = Callable[..., Server]


@pytest.fixture(scope="module")
def make_server(manager: PrivateManager, public_dir: Path) -> Iterator[ServerFactory]:
    """Start ``sdexec serve`` with extra options; all are stopped at module teardown."""
    started: list[Server] = []

    def make(name: str, *args: str) -> Server:
        d = public_dir / name
        srv = Server(
            manager,
            str(d / "local"),
            public_dir / f"{name}.state",
            public_dir / f"{name}.log",
            extra_args=["--systemd", "user", *args],
        )
        srv.start()
        started.append(srv)
        return srv

    yield make
    for srv in started:
        with contextlib.suppress(Exception):
            srv.stop()
