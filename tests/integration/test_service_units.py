"""``units/``: sdexec.socket and sdexec.service in a real (private) systemd user manager.

The shipped user units are installed into the test manager's runtime unit
directory (``$XDG_RUNTIME_DIR/systemd/user``), changed in one way only:
``ExecStart`` runs this tree's code with the venv's python instead of
``/usr/bin/sdexec``.  The socket unit is started; the first connection
starts the service by socket activation; a command runs through it; and
stopping the service stops the server cleanly.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, Server

from sdexec.systemd.private import PrivateManager

UNITS = REPO / "units"
SHIPPED_EXEC = "/usr/bin/sdexec"


def _verify(unit_dir: Path, *, user: bool, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze verify`` both units of a copy of ``unit_dir``.

    ``/usr/bin/sdexec`` is not installed on the test machine, so the copy's
    ExecStart names the venv's ``sdexec`` (verify checks that it exists).
    """
    work = Path(env["TMPDIR_FOR_VERIFY"])
    for name in ("sdexec.service", "sdexec.socket"):
        text = (unit_dir / name).read_text()
        (work / name).write_text(
            text.replace(SHIPPED_EXEC, str(Path(sys.executable).parent / "sdexec"))
        )
    argv = ["systemd-analyze", *(["--user"] if user else []), "verify"]
    argv += [str(work / "sdexec.service"), str(work / "sdexec.socket")]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("variant", ["system", "user"])
def test_systemd_analyze_verify_passes(variant: str, tmp_path: Path) -> None:
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime), TMPDIR_FOR_VERIFY=str(tmp_path))
    r = _verify(UNITS / variant, user=variant == "user", env=env)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""


@pytest.mark.parametrize("variant", ["system", "user"])
def test_service_is_type_notify_and_runs_the_sdexec_command(variant: str) -> None:
    text = (UNITS / variant / "sdexec.service").read_text()
    assert "\nType=notify\n" in text
    assert f"\nExecStart={SHIPPED_EXEC} serve --systemd={variant}\n" in text


@pytest.mark.parametrize("variant", ["system", "user"])
def test_socket_names_its_fd_local(variant: str) -> None:
    assert "\nFileDescriptorName=local\n" in (UNITS / variant / "sdexec.socket").read_text()


class Installed:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.unit_dir = server.manager.runtime_dir / "systemd" / "user"
        self.socket_path = server.manager.runtime_dir / "sdexec" / "local"

    @property
    def uri(self) -> str:
        return f"local://{self.socket_path}"

    def show(self, unit: str, *props: str) -> dict[str, str]:
        r = self.server.systemctl("show", unit, *(f"-p{p}" for p in props))
        return dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)


@pytest.fixture
def installed(server: Server) -> Iterator[Installed]:
    inst = Installed(server)
    inst.unit_dir.mkdir(parents=True, exist_ok=True)
    service = (UNITS / "user" / "sdexec.service").read_text()
    exec_line = f"ExecStart={SHIPPED_EXEC} serve --systemd=user"
    assert exec_line in service
    service = service.replace(
        exec_line,
        f"Environment=PYTHONPATH={REPO}\n"
        f"ExecStart={sys.executable} -m sdexec.cli.main serve --systemd=user",
    )
    (inst.unit_dir / "sdexec.service").write_text(service)
    shutil.copy(UNITS / "user" / "sdexec.socket", inst.unit_dir / "sdexec.socket")
    assert server.systemctl("daemon-reload").returncode == 0
    try:
        yield inst
    finally:
        server.systemctl("stop", "sdexec.socket", "sdexec.service")
        for name in ("sdexec.service", "sdexec.socket"):
            (inst.unit_dir / name).unlink()
        server.systemctl("reset-failed", "sdexec.service", "sdexec.socket")
        server.systemctl("daemon-reload")


def test_socket_activation_starts_server_and_stop_is_clean(installed: Installed) -> None:
    srv = installed.server
    r = srv.systemctl("start", "sdexec.socket")
    assert r.returncode == 0, r.stderr
    assert installed.socket_path.is_socket()
    assert installed.show("sdexec.service", "ActiveState")["ActiveState"] == "inactive"

    # The first connection starts the service; the command runs through it.
    env = srv.env(SDEXEC_URI=installed.uri)
    run = srv.sdexec("exec", "--", "sh", "-c", 'echo "hello from $SDEXEC_URI"', env=env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.decode() == f"hello from {installed.uri}\n"
    state = installed.show("sdexec.service", "ActiveState", "SubState", "MainPID")
    assert (state["ActiveState"], state["SubState"]) == ("active", "running")  # READY=1 seen
    main_pid = int(state["MainPID"])
    assert Path(f"/proc/{main_pid}").exists()

    # Stopping the service stops the server cleanly; the socket stays for the next client.
    r = srv.systemctl("stop", "sdexec.service")
    assert r.returncode == 0, r.stderr
    after = installed.show(
        "sdexec.service", "ActiveState", "Result", "ExecMainCode", "ExecMainStatus"
    )
    assert after == {
        "ActiveState": "inactive",
        "Result": "success",
        "ExecMainCode": "1",  # exited, not killed
        "ExecMainStatus": "0",
    }
    deadline = time.monotonic() + 10
    while Path(f"/proc/{main_pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{main_pid}").exists()
    assert installed.socket_path.is_socket()
    assert installed.show("sdexec.socket", "ActiveState")["ActiveState"] == "active"


def test_second_activation_after_stop_serves_again(installed: Installed) -> None:
    srv = installed.server
    assert srv.systemctl("start", "sdexec.socket").returncode == 0
    env = srv.env(SDEXEC_URI=installed.uri)
    assert srv.sdexec("exec", "true", env=env).returncode == 0
    assert srv.systemctl("stop", "sdexec.service").returncode == 0
    again = srv.sdexec("exec", "--", "echo", "again", env=env)
    assert again.returncode == 0, again.stderr
    assert again.stdout == b"again\n"


def test_server_notifies_ready_after_listening_and_stopping_at_shutdown(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its own private manager: a server stopped with SIGTERM stops the manager it used.
    notify_path = workdir / "notify"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(notify_path))
    receiver.settimeout(60)
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify_path))
    state = workdir / "notify-state"
    srv = Server(PrivateManager(state), str(workdir / "notify-srv"), state, workdir / "notify.log")
    log = srv.log_path.open("ab")
    srv.proc = srv.popen(
        "serve", "--uri", srv.uri, "--systemd", "private", "--state-dir", str(state),
        stdin=subprocess.DEVNULL, stdout=log, stderr=log,
    )  # fmt: skip
    log.close()
    try:
        assert receiver.recv(4096) == b"READY=1"
        # READY means listening: a client is accepted at once.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(srv.socket_path)
            assert client.recv(1) == b"\0"
        srv.proc.send_signal(signal.SIGTERM)
        assert receiver.recv(4096) == b"STOPPING=1"
        # A repeated SIGTERM while shutting down does not cut the shutdown short.
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(60) == 0
        srv.proc = None
        # It stopped the manager it started, cgroup and all.
        assert srv.manager.pid() is None
        assert not srv.manager.slice.exists()
    finally:
        if srv.proc is not None:
            srv.stop()
        srv.manager.stop()  # a no-op unless the test failed half-way
        receiver.close()
