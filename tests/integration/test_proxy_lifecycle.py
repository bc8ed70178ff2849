"""``sdexec proxy`` when the server goes away: version checks, SIGHUP, --nohup."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import OwnServer, own_manager, own_server

from sdexec.systemd.private import PrivateManager

SDEXEC = f"{shlex.quote(sys.executable)} -m sdexec.cli.main"


@pytest.fixture(scope="module")
def own(workdir: Path) -> Iterator[PrivateManager]:
    with own_manager(workdir) as manager:
        yield manager


@pytest.fixture
def other_version(own: PrivateManager, workdir: Path) -> Iterator[OwnServer]:
    with own_server(own, workdir, SDEXEC_TEST_FAKE_VERSION="99.7.0") as srv:
        yield srv


@pytest.fixture
def doomed(own: PrivateManager, workdir: Path) -> Iterator[OwnServer]:
    """A server the test will kill."""
    with own_server(own, workdir) as srv:
        yield srv


def test_version_mismatch_fails_without_force(other_version: OwnServer) -> None:
    r = other_version.sdexec("proxy", other_version.uri, "true")
    assert r.returncode == 125
    assert "99.7.0" in r.stderr.decode()
    assert "--force" in r.stderr.decode()


def test_version_mismatch_does_not_run_the_command(
    other_version: OwnServer, tmp_path: Path
) -> None:
    flag = tmp_path / "ran"
    other_version.sdexec("proxy", other_version.uri, "touch", str(flag))
    assert not flag.exists()


def test_version_mismatch_with_force_warns_and_runs(other_version: OwnServer) -> None:
    r = other_version.sdexec("proxy", "--force", other_version.uri, "sh", "-c", "exit 3")
    assert r.returncode == 3
    assert "warning" in r.stderr.decode()
    assert "99.7.0" in r.stderr.decode()


def _start_proxy(
    srv: OwnServer, *args: str, script: str
) -> tuple[subprocess.Popen[bytes], list[bytes]]:
    """Start a proxy running ``script``, which must first print ``ready [WORDS]``."""
    p = srv.popen(
        "proxy",
        *args,
        srv.uri,
        "sh",
        "-c",
        script,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    assert p.stdout is not None
    words = p.stdout.readline().split()
    assert words[:1] == [b"ready"]
    return p, words[1:]


def _wait_stopped(pid: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
        assert time.monotonic() < deadline, "the child did not stop"
        time.sleep(0.01)


def test_server_killed_under_the_proxy_hangs_up_on_the_child(doomed: OwnServer) -> None:
    p, _ = _start_proxy(doomed, script="echo ready; exec sleep 60")
    doomed.kill()
    _, err = p.communicate(timeout=30)
    assert p.returncode == 129
    assert "lost connection" in err.decode()


def test_child_gets_sigcont_after_sighup(doomed: OwnServer) -> None:
    # A stopped child would never see SIGHUP without the SIGCONT that follows it.
    p, (pid,) = _start_proxy(doomed, script="echo ready $$; kill -STOP $$; exit 0")
    _wait_stopped(int(pid))
    doomed.kill()
    p.communicate(timeout=30)
    assert p.returncode == 129


def test_nohup_leaves_the_child_alone(doomed: OwnServer, tmp_path: Path) -> None:
    flag = tmp_path / "go"
    script = (
        "trap 'echo got-HUP; exit 99' HUP; echo ready; "
        f"while [ ! -e {flag} ]; do sleep 0.05; done; exit 5"
    )
    p, _ = _start_proxy(doomed, "--nohup", script=script)
    doomed.kill()
    assert p.stderr is not None
    assert b"lost connection" in p.stderr.readline()
    flag.touch()
    out, _ = p.communicate(timeout=30)
    assert p.returncode == 5
    assert b"got-HUP" not in out


def test_after_connection_loss_the_proxy_socket_is_closed(doomed: OwnServer) -> None:
    script = 'echo ready; trap "" HUP; p=${SDEXEC_URI#local://}; sleep 1; test -e "$p"; echo $?'
    p, _ = _start_proxy(doomed, "--nohup", script=script)
    doomed.kill()
    out, _ = p.communicate(timeout=30)
    assert out.strip() == b"1"


def test_connection_loss_is_reported_in_one_line(doomed: OwnServer) -> None:
    # A client stays connected to the proxy's socket while the server goes away.
    script = f"echo ready; {SDEXEC} exec -n -- sleep 60 2>/dev/null; exit 0"
    p, _ = _start_proxy(doomed, script=script)
    time.sleep(1.0)
    doomed.kill()
    _, err = p.communicate(timeout=30)
    assert err.decode() == "sdexec proxy: lost connection to server\n"
