"""Remote transports for tests: a real OpenSSH server and ``tcp://`` CURVE keys.

The sshd is Debian's, started on a loopback port with a throwaway host key
and a throwaway user key (see SYSTEMD.md, "OpenSSH").  Keys for ``tcp://``
are made by the real ``sdexec keygen``.  Nothing here imports the fixtures,
so conftest.py and the test modules can share it.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SSHD = "/usr/sbin/sshd"
CLI = [sys.executable, "-m", "sdexec.cli.main"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Sshd:
    port: int
    ssh: str  # the SDEXEC_SSH command

    def settings(self) -> dict[str, str]:
        """What a client needs in its environment to reach servers through this sshd."""
        return {"SDEXEC_SSH": self.ssh, "SDEXEC_SSH_RCMD": shlex.join(CLI)}

    def uri(self, path: str) -> str:
        return f"ssh://root@127.0.0.1:{self.port}{path}"


@contextlib.contextmanager
def run_sshd(d: Path) -> Iterator[Sshd]:
    """An sshd on a free loopback port, configured and keyed under ``d``."""
    d.mkdir()
    for name in ("host_key", "user_key"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True
        )
    shutil.copy(d / "user_key.pub", d / "authorized_keys")
    port = free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\n"
        f"AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nPidFile {d}/sshd.pid\n"
        "UsePAM no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nLogLevel VERBOSE\n"
    )
    # sshd's privilege separation directory, looked for at every connection.  It
    # stays: another test run on this machine may be using it (removing it at
    # teardown reset that run's ssh connections: "kex_exchange_identification").
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    with open(d / "sshd.log", "wb") as log:
        proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stdout=log, stderr=log
        )
    ssh = (
        f"ssh -i {d}/user_key -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
        "-o BatchMode=yes -o LogLevel=ERROR"
    )
    try:
        deadline = time.monotonic() + 10
        while subprocess.run(
            [*shlex.split(ssh), "-p", str(port), "root@127.0.0.1", "true"], capture_output=True
        ).returncode:
            assert proc.poll() is None, (d / "sshd.log").read_text()
            assert time.monotonic() < deadline, "sshd did not come up"
            time.sleep(0.1)
        yield Sshd(port, ssh)
    finally:
        proc.terminate()
        proc.wait(10)


def keygen(keys: Path, name: str, *args: str, env: dict[str, str]) -> None:
    """``sdexec keygen`` a CURVE certificate pair NAME.key / NAME.key_secret in ``keys``."""
    r = subprocess.run(
        [*CLI, "keygen", "-d", str(keys), "--name", name, *args], capture_output=True, env=env
    )
    assert r.returncode == 0, r.stderr.decode()


def curve_settings(keys: Path, client: str = "client") -> dict[str, str]:
    """A client's environment for a ``tcp://`` server whose keys are in ``keys``."""
    return {
        "SDEXEC_CURVE_CERT": str(keys / f"{client}.key_secret"),
        "SDEXEC_CURVE_SERVER": str(keys / "server.key"),
    }
