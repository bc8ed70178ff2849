"""Faults around unit names, properties and flags (issue 15, items 4, 5, 7, 8).

Each test runs against a real private systemd; the module's own server may
be killed and restarted.  No test may leave a traceback in the server's log.
"""

from __future__ import annotations

import errno
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Server
from faults import assert_no_traceback, eventually, no_traceback
from rpc import Raw, exec_payload
from servers import OwnServer, own_manager, own_server

from sdexec.systemd.private import PrivateManager


@pytest.fixture(scope="module")
def own_mgr(workdir: Path) -> Iterator[PrivateManager]:
    with own_manager(workdir) as manager:
        yield manager


@pytest.fixture
def own(own_mgr: PrivateManager, workdir: Path) -> Iterator[OwnServer]:
    with own_server(own_mgr, workdir) as srv:
        yield srv
        assert_no_traceback(srv)


def _name(n: str) -> str:
    return f"SDEXEC_NAME={n}"


# --- 15.4: a failed start never touches a unit it did not create ----------------------


def test_exec_naming_a_unit_of_another_job_leaves_that_job_alone(own: OwnServer) -> None:
    first = own.sdexec(
        "exec", "--bg", "--waitable", "--label", "holder", "--setopt", _name("held-x"),
        "--", "sleep", "300",
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    dup = own.sdexec("exec", "--setopt", _name("held-x"), "--", "true")
    assert dup.returncode != 0
    assert b"held-x.service is already in use" in dup.stderr
    # The first job is still watched, recorded and waitable, across a crash too.
    own.kill()
    own.start()
    assert own.sdexec("kill", "-s", "9", "holder").returncode == 0
    assert own.sdexec("wait", "holder", timeout=30).returncode == 137
    assert eventually(lambda: own.units("held-x*") == [])  # released after the wait


def test_exec_naming_a_foreign_unit_is_eexist_and_leaves_it_running(own: OwnServer) -> None:
    r = subprocess.run(
        ["systemd-run", "--user", "--unit", "foreign-x", "sleep", "300"],
        env=own.manager.env(), capture_output=True, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    try:
        raw = Raw(own.socket_path)
        m = raw.rpc(
            "sdexec.exec",
            exec_payload(["true"], flags=0, opts={"SDEXEC_NAME": "foreign-x.service"}),
        )
        raw.close()
        assert m.errnum == errno.EEXIST
        assert own.systemctl("is-active", "foreign-x.service").stdout.strip() == "active"
    finally:
        own.systemctl("stop", "foreign-x.service")


# --- 15.5: every unit is found again after a crash, whatever its name -------------------


def test_foreground_unit_with_a_custom_name_is_stopped_after_a_server_crash(
    own: OwnServer,
) -> None:
    cli = own.popen(
        "exec", "--setopt", _name("fg-custom"), "--", "sh", "-c", "echo up; exec sleep 300",
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert cli.stdout is not None
    assert cli.stdout.readline() == b"up\n"
    own.kill()
    cli.kill()
    cli.wait()
    assert own.units("fg-custom*") == ["fg-custom.service"]
    own.start()
    assert eventually(lambda: own.units("fg-custom*") == [], timeout=30)
    assert "stopping orphaned foreground unit" in own.log_text()


def test_background_unit_with_a_custom_name_is_adopted_after_a_crash(own: OwnServer) -> None:
    r = own.sdexec(
        "exec", "--bg", "--waitable", "--label", "bgc", "--setopt", _name("bg-custom"),
        "--", "sh", "-c", "sleep 1; exit 4",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    own.kill()
    own.start()
    assert own.sdexec("wait", "bgc", timeout=30).returncode == 4


def test_a_second_server_on_the_same_manager_leaves_foreground_units_alone(
    own: OwnServer, workdir: Path
) -> None:
    """Units are found by record, not by name: another server's units are not ours."""
    cli = own.popen(
        "exec", "--", "sh", "-c", "echo up; exec sleep 300",
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert cli.stdout is not None
    assert cli.stdout.readline() == b"up\n"
    before = own.units()
    assert len(before) == 1
    # Same rank, same manager, its own state directory (the user-manager mode
    # never starts or stops the manager).
    other = Server(
        own.manager, str(workdir / "second.sock"), workdir / "second-state",
        workdir / "second.log", extra_args=["--systemd", "user"],
    )  # fmt: skip
    other.start()
    try:
        assert other.sdexec("ps").returncode == 0
        assert own.units() == before
    finally:
        other.stop(signal.SIGTERM)
        assert_no_traceback(other)
    cli.send_signal(signal.SIGINT)
    cli.communicate(timeout=30)


# --- 15.7: properties that would break the mapping of unit states --------------------


def test_remain_after_exit_is_refused_before_anything_starts(server: Server) -> None:
    with no_traceback(server):
        r = server.sdexec("exec", "-p", "RemainAfterExit=yes", "--", "true", timeout=30)
        assert r.returncode != 0
        assert b"RemainAfterExit" in r.stderr and b"refused" in r.stderr
        raw = Raw(server.socket_path)
        m = raw.rpc(
            "sdexec.exec",
            exec_payload(["true"], flags=0, opts={"SDEXEC_PROP_RemainAfterExit": "yes"}),
        )
        raw.close()
        assert m.errnum == errno.EINVAL


# --- 15.8: unknown flag bits ---------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "local_flags"), [(-1, 0), (2**63, 0), (1 << 5, 0), (3, -1), (3, 2**63), (3, 8)]
)
def test_unknown_flag_bits_are_einval(server: Server, flags: int, local_flags: int) -> None:
    with no_traceback(server):
        raw = Raw(server.socket_path)
        payload = exec_payload(["echo", "fell-through-into-the-log"], flags=flags)
        payload["local_flags"] = local_flags
        m = raw.rpc("sdexec.exec", payload, streaming=True)
        raw.close()
        assert m.errnum == errno.EINVAL
        assert "unknown bits" in (m.error_text() or "")
    assert "fell-through-into-the-log" not in server.log_text()
