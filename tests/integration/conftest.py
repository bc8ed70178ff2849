"""Integration fixtures: a real, confined systemd user manager and a real server.

The session starts one private ``systemd --user`` (with D-Bus and journald)
confined in its own cgroup and mount namespace, exactly as ``sdexec serve
--systemd=private`` does, and one ``sdexec serve`` on a temporary socket
that reuses it.  Teardown stops both and checks that nothing is left: no
sdexec unit, no cgroup directory, no manager process.  It runs even when
tests fail or the run is interrupted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from remote import Sshd, curve_settings, free_port, keygen, run_sshd

from sdexec.systemd.private import PrivateManager, booted_with_systemd

REPO = Path(__file__).resolve().parents[2]


def wait_for_socket(path: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening")
        if os.path.exists(path):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                if s.recv(1) == b"\0":
                    return
            except OSError:
                pass
            finally:
                s.close()
        time.sleep(0.02)
    raise RuntimeError("server did not start listening in time")


@dataclass
class Server:
    """A running ``sdexec serve`` and helpers to drive it through the real CLI."""

    manager: PrivateManager
    socket_path: str
    state_dir: Path
    log_path: Path
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"local://{self.socket_path}"

    def env(self, **extra: str) -> dict[str, str]:
        env = self.manager.env()
        env["SDEXEC_URI"] = self.uri
        env["PYTHONPATH"] = str(REPO)
        env.update(extra)
        return env

    def start(self, **popen: Any) -> None:
        """Start the server (``popen``: more arguments for :class:`subprocess.Popen`)."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "sdexec.cli.main",
                    "serve",
                    "--uri",
                    self.uri,
                    "--systemd",
                    "private",
                    "--state-dir",
                    str(self.state_dir),
                    "--log-level",
                    "debug",
                    *self.extra_args,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=self.env(),
                **popen,
            )
        wait_for_socket(self.socket_path, self.proc)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self.proc = None
        return rc

    def sdexec(
        self,
        *args: str,
        input: bytes | None = None,
        timeout: float = 60,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run the real CLI against this server."""
        return subprocess.run(
            [sys.executable, "-m", "sdexec.cli.main", *args],
            input=input,
            capture_output=True,
            timeout=timeout,
            env=env or self.env(),
            stdin=None if input is not None else subprocess.DEVNULL,
        )

    def popen(self, *args: str, **kw: object) -> subprocess.Popen[bytes]:
        return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
            [sys.executable, "-m", "sdexec.cli.main", *args], env=self.env(), **kw
        )

    def systemctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["systemctl", "--user", *args],
            env=self.manager.env(),
            capture_output=True,
            text=True,
            timeout=30,
        )

    def units(self, pattern: str = "sdexec-*") -> list[str]:
        r = self.systemctl("list-units", "--all", "--plain", "--no-legend", pattern)
        return [line.split()[0] for line in r.stdout.splitlines() if line.strip()]

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    # Short paths: UNIX socket names are limited to 107 bytes.
    d = Path(tempfile.mkdtemp(prefix="sdx-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def manager(workdir: Path) -> Iterator[PrivateManager]:
    if os.geteuid() != 0 and not booted_with_systemd():
        pytest.fail("integration tests need root (or a machine booted with systemd)")
    m = PrivateManager(workdir / "state")
    m.start()
    try:
        yield m
    finally:
        m.stop()
        leftovers = [p for p in (m.slice,) if p.exists()]
        assert not leftovers, f"cgroup left behind: {leftovers}"
        assert m.pid() is None


@pytest.fixture(scope="session")
def server(manager: PrivateManager, workdir: Path) -> Iterator[Server]:
    srv = Server(manager, str(workdir / "local"), manager.state_dir, workdir / "server.log")
    srv.start()
    try:
        yield srv
    finally:
        # A run must leave no sdexec unit behind: look before stopping the
        # server (which stops the manager), stop what a failed test left, report.
        left = srv.units()
        for unit in left:
            srv.systemctl("stop", unit)
        srv.systemctl("reset-failed")
        with contextlib.suppress(Exception):
            srv.stop()
        assert not left, f"units left behind: {left}"


@pytest.fixture(scope="session")
def sshd(workdir: Path) -> Iterator[Sshd]:
    """A real OpenSSH server on loopback that lets root in with a throwaway key."""
    with run_sshd(workdir / "sshd") as daemon:
        yield daemon


@dataclass
class Cluster:
    """Four servers, ranks 0-3, each on its own socket, and their hosts file.

    ``uris[r]`` is how the hosts file reaches rank r: rank 1 through its
    ``tcp://`` listener (CURVE keys in ``keys``), rank 2 through ``ssh://``,
    the others on their ``local://`` sockets.
    """

    servers: list[Server]
    uris: list[str]
    hosts_file: Path
    remote_env: dict[str, str]

    def env(self, **extra: str) -> dict[str, str]:
        env = self.servers[0].env(
            **{"SDEXEC_HOSTS": str(self.hosts_file), **self.remote_env, **extra}
        )
        env.pop("SDEXEC_URI", None)
        return env

    def sdexec(
        self, *args: str, input: bytes | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[bytes]:
        """Run the real CLI with ``SDEXEC_HOSTS`` naming the cluster's hosts file."""
        return self.servers[0].sdexec(*args, input=input, timeout=timeout, env=self.env())


TCP_RANK, SSH_RANK = 1, 2


@pytest.fixture(scope="session")
def cluster(
    manager: PrivateManager, workdir: Path, server: Server, sshd: Sshd
) -> Iterator[Cluster]:
    """Ranks 0-3 sharing the session's systemd manager, hosts file ``node0``..``node3``.

    Rank 0 is the session's ``server`` (one server per rank and state
    directory: a second rank-0 server there would be refused).  Rank 1 also
    listens on ``tcp://`` with CURVE and the hosts file reaches it there;
    rank 2 is reached through ``ssh://`` and the session's sshd.  The
    servers share the manager with the ``server`` fixture, so they are
    stopped with SIGKILL: a server stopped with SIGTERM also stops the
    private manager it uses, under everyone else's feet.
    """
    keys, authorized = workdir / "cluster-keys", workdir / "cluster-authorized"
    authorized.mkdir()
    for name in ("server", "client"):
        keygen(keys, name, env=server.env())
    shutil.copy(keys / "client.key", authorized / "client.key")
    tcp_uri = f"tcp://127.0.0.1:{free_port()}"
    tcp_args = [
        "--listen", tcp_uri,
        "--curve-key", str(keys / "server.key_secret"),
        "--curve-authorized", str(authorized),
    ]  # fmt: skip
    servers = [server] + [
        Server(
            manager,
            str(workdir / f"r{rank}"),
            manager.state_dir,
            workdir / f"r{rank}.log",
            extra_args=["--rank", str(rank), *(tcp_args if rank == TCP_RANK else [])],
        )
        for rank in range(1, 4)
    ]
    uris = [srv.uri for srv in servers]
    uris[TCP_RANK] = tcp_uri
    uris[SSH_RANK] = sshd.uri(servers[SSH_RANK].socket_path)
    hosts_file = workdir / "hosts"
    hosts_file.write_text(
        "# the test cluster\n" + "".join(f"{uri} node{rank}\n" for rank, uri in enumerate(uris))
    )
    try:
        for srv in servers[1:]:
            srv.start()
        yield Cluster(servers, uris, hosts_file, {**sshd.settings(), **curve_settings(keys)})
    finally:
        left = [u for u in servers[0].units() if u.split("-")[1:2] in (["1"], ["2"], ["3"])]
        for srv in servers[1:]:
            if srv.proc is not None:
                srv.stop(signal.SIGKILL)
        assert not left, f"units left behind by the cluster: {left}"
