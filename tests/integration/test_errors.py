"""Every RFC 42 error code, and the RFC 6 ones, seen as the errno a client gets."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Server
from rpc import Raw, exec_payload


@pytest.fixture
def raw(server: Server) -> Iterator[Raw]:
    r = Raw(server.socket_path)
    yield r
    r.close()


def test_exec_of_missing_command_is_enoent(raw: Raw) -> None:
    m = raw.rpc("sdexec.exec", exec_payload(["/no/such/cmd"]), streaming=True)
    assert m.errnum == errno.ENOENT


def test_exec_of_non_executable_is_eacces(raw: Raw, workdir: Path) -> None:
    script = workdir / "not-executable"
    script.write_text("#!/bin/sh\necho no\n")
    script.chmod(0o644)
    m = raw.rpc("sdexec.exec", exec_payload([str(script)]), streaming=True)
    assert m.errnum == errno.EACCES


def test_exec_of_a_file_that_is_no_program_is_enoexec(raw: Raw, workdir: Path) -> None:
    junk = workdir / "junk"
    junk.write_bytes(b"\x00\x01 not a program")
    junk.chmod(0o755)
    m = raw.rpc("sdexec.exec", exec_payload([str(junk)]), streaming=True)
    assert m.errnum == errno.ENOEXEC


def test_exec_with_duplicate_label_is_eexist(raw: Raw) -> None:
    assert (
        raw.rpc("sdexec.exec", exec_payload(["sleep", "30"], flags=0, label="dupe")).json()["type"]
        == "started"
    )
    assert (
        raw.rpc("sdexec.exec", exec_payload(["true"], flags=0, label="dupe")).errnum == errno.EEXIST
    )
    assert raw.rpc("sdexec.kill", {"pid": -1, "label": "dupe", "signum": 9}).errnum == 0


def test_exec_with_empty_label_is_einval(raw: Raw) -> None:
    assert raw.rpc("sdexec.exec", exec_payload(["true"], flags=0, label="")).errnum == errno.EINVAL


def test_exec_without_cmdline_is_eproto(raw: Raw) -> None:
    assert raw.rpc("sdexec.exec", {"cmd": {"env": {}}, "flags": 0}).errnum == errno.EPROTO


def test_exec_with_bad_property_is_einval(raw: Raw) -> None:
    m = raw.rpc(
        "sdexec.exec", exec_payload(["true"], opts={"SDEXEC_PROP_MemoryMax": "x"}), streaming=True
    )
    assert m.errnum == errno.EINVAL
    assert "MemoryMax" in (m.error_text() or "")


def test_background_exec_gets_exactly_one_response(raw: Raw) -> None:
    tag = raw.send("sdexec.exec", exec_payload(["true"], flags=0))
    assert raw.recv(tag).json()["type"] == "started"
    raw.sock.settimeout(1.0)
    with pytest.raises(TimeoutError):
        raw.recv(tag)


def test_kill_of_unknown_pid_is_esrch(raw: Raw) -> None:
    assert raw.rpc("sdexec.kill", {"pid": 999999, "signum": 15}).errnum == errno.ESRCH


def test_kill_of_unknown_label_is_esrch_as_flux_servers_say(raw: Raw) -> None:
    assert raw.rpc("sdexec.kill", {"pid": -1, "label": "nope", "signum": 15}).errnum == (
        errno.ESRCH
    )


def test_kill_with_bad_signal_is_einval(raw: Raw) -> None:
    assert raw.rpc("sdexec.kill", {"pid": 1, "signum": 0}).errnum == errno.EINVAL


def test_wait_on_non_waitable_is_einval(raw: Raw) -> None:
    pid = raw.rpc("sdexec.exec", exec_payload(["sleep", "30"], flags=0)).json()["pid"]
    assert raw.rpc("sdexec.wait", {"pid": pid}).errnum == errno.EINVAL
    assert raw.rpc("sdexec.kill", {"pid": pid, "signum": 9}).errnum == 0


def test_wait_on_unknown_pid_is_esrch(raw: Raw) -> None:
    assert raw.rpc("sdexec.wait", {"pid": 999999}).errnum == errno.ESRCH


def test_second_waiter_is_einval_as_flux_says(raw: Raw, server: Server) -> None:
    pid = raw.rpc("sdexec.exec", exec_payload(["sleep", "1"], flags=16)).json()["pid"]
    first = raw.send("sdexec.wait", {"pid": pid})
    other = Raw(server.socket_path)
    second = other.rpc("sdexec.wait", {"pid": pid})
    assert second.errnum == errno.EINVAL
    assert "already being waited on" in (second.error_text() or "")
    other.close()
    assert raw.recv(first).json() == {"status": 0}


def test_unknown_method_is_enosys(raw: Raw) -> None:
    m = raw.rpc("sdexec.nosuch", {})
    assert m.errnum == errno.ENOSYS


def test_unknown_service_is_enosys_with_flux_text(raw: Raw) -> None:
    m = raw.rpc("nosuch.exec", {})
    assert m.errnum == errno.ENOSYS
    assert m.error_text() == "No service matching nosuch.exec is registered"


def test_attr_get_answers_like_flux(raw: Raw) -> None:
    assert raw.rpc("attr.get", {"name": "size"}).json() == {"value": "1", "flags": 1}
    assert raw.rpc("attr.get", {"name": "rank"}).json() == {"value": "0", "flags": 1}
    assert raw.rpc("attr.get", {"name": "security.owner"}).json() == {
        "value": str(os.getuid()),
        "flags": 1,
    }
    assert raw.rpc("attr.get", {"name": "version"}).json()["flags"] == 0
    assert raw.rpc("attr.get", {"name": "nosuch"}).errnum == errno.ENOENT
    assert raw.rpc("state-machine.wait", None).errnum == 0


def test_malformed_frame_closes_only_that_connection(server: Server, raw: Raw) -> None:
    bad = Raw(server.socket_path)
    bad.sock.sendall(b"\x00" * 64)
    bad.sock.settimeout(5)
    assert bad.sock.recv(100) == b""
    bad.close()
    assert raw.rpc("sdexec.list", {}).errnum == 0


def test_disconnect_request_kills_that_senders_foreground_process(raw: Raw) -> None:
    tag = raw.send("sdexec.exec", exec_payload(["sleep", "60"]), streaming=True)
    pid = raw.recv(tag).json()["pid"]
    raw.send("sdexec.disconnect", None, noresponse=True)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        procs = raw.rpc("sdexec.list", {}).json()["procs"]
        if all(p["pid"] != pid for p in procs):
            break
        time.sleep(0.05)
    assert all(p["pid"] != pid for p in raw.rpc("sdexec.list", {}).json()["procs"])


def test_stdio_fallthrough_gives_the_unit_the_servers_stdio(server: Server, raw: Raw) -> None:
    marker = f"fallthrough-{os.getpid()}-{time.time_ns()}"
    payload = exec_payload(["echo", marker])
    payload["local_flags"] = 1
    msgs = raw.stream(raw.send("sdexec.exec", payload, streaming=True))
    assert msgs[-1].errnum == errno.ENODATA
    time.sleep(0.2)
    assert marker in server.log_text()


@pytest.mark.parametrize(
    ("local_flags", "kill_mode", "child_survives"),
    [(0, None, False), (2, None, True), (0, "process", True)],
)
def test_no_setpgrp_signals_only_the_main_process(
    raw: Raw, local_flags: int, kill_mode: str | None, child_survives: bool
) -> None:
    """So does a unit with KillMode=process (the IMP's, whose children are not ours)."""
    # The trap is set before the pid is told (the kill follows it), after the
    # child is forked (which must not inherit it).
    payload = exec_payload(["sh", "-c", "sleep 30 & trap '' TERM; echo $!; wait; exit 0"])
    payload["local_flags"] = local_flags
    if kill_mode is not None:
        payload["cmd"]["opts"]["SDEXEC_PROP_KillMode"] = kill_mode
    tag = raw.send("sdexec.exec", payload, streaming=True)
    pid = raw.recv(tag).json()["pid"]
    child = 0
    while not child:
        m = raw.recv(tag).json()
        if m["type"] == "output" and m["io"].get("data"):
            child = int(m["io"]["data"].split()[0])
    assert raw.rpc("sdexec.kill", {"pid": pid, "signum": signal.SIGTERM}).errnum == 0
    time.sleep(0.5)
    alive = subprocess.run(["kill", "-0", str(child)], capture_output=True).returncode == 0
    assert alive == child_survives
    raw.rpc("sdexec.kill", {"pid": pid, "signum": signal.SIGKILL})
    assert raw.stream(tag)[-1].errnum == errno.ENODATA
    if kill_mode == "process":  # its stop may leave the child running, as KillMode=process does
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
