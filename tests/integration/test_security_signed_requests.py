"""RFC 42 signed requests against real servers, with ``none`` and a real munged.

The servers here are owned by the throwaway guest user, so the server's uid
(root) differs from the owner and every RFC 42 request must be signed by the
server's uid (RFC 42 "Request Authentication").  Each case runs once per
mechanism, against a server that accepts only that mechanism.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Server
from secfixtures import (  # noqa: F401 (fixtures)
    GUEST_PYTHON,
    Guest,
    ServerFactory,
    guest,
    make_server,
    munged,
    public_dir,
)

from sdexec.client.blocking import BlockingHandle
from sdexec.client.rpc import RemoteError
from sdexec.security import sign

EXEC = {
    "cmd": {"cmdline": ["true"], "env": {"PATH": "/usr/bin:/bin"}, "opts": {}, "channels": []},
    "flags": 0,
    "local_flags": 0,
}

GUEST_SIGN = """
import json, sys
from sdexec.security import sign
topic, payload, mech, sock = sys.argv[1:]
print(sign.signed_request(topic, json.loads(payload), mech, munge_socket=sock or None)["signature"])
"""


@pytest.fixture(scope="module", params=["none", "munge"])
def mech(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def signed(
    make_server: ServerFactory,  # noqa: F811
    guest: Guest,  # noqa: F811
    munged: str,  # noqa: F811
    mech: str,
) -> Server:
    return make_server(
        f"signed-{mech}",
        "--owner",
        str(guest.uid),
        "--sign-mechanisms",
        mech,
        "--munge-socket",
        munged,
    )


@pytest.fixture(scope="module")
def short_ttl(
    make_server: ServerFactory,  # noqa: F811
    guest: Guest,  # noqa: F811
    munged: str,  # noqa: F811
    mech: str,
) -> Server:
    return make_server(
        f"ttl-{mech}",
        "--owner",
        str(guest.uid),
        "--sign-mechanisms",
        mech,
        "--munge-socket",
        munged,
        "--sign-ttl",
        "2",
    )


def cli(srv: Server, munge_socket: str, mech: str, *args: str, **kw: Any) -> Any:
    env = srv.env(SDEXEC_MUNGE_SOCKET=munge_socket, SDEXEC_SIGN_MECHANISM=mech)
    return srv.sdexec(*args, env=env, **kw)


def rpc(srv: Server, topic: str, payload: dict[str, Any]) -> dict[str, Any]:
    with BlockingHandle.connect(srv.uri) as handle:
        return handle.rpc(topic, payload)


def errno_of(srv: Server, topic: str, payload: dict[str, Any]) -> int:
    with pytest.raises(RemoteError) as info:
        rpc(srv, topic, payload)
    return info.value.errno or 0


def signature(topic: str, obj: dict[str, Any], mech: str, munge_socket: str) -> str:
    return sign.signed_request(topic, obj, mech, munge_socket=munge_socket)["signature"]


def lptest(lines: int = 400, width: int = 79) -> bytes:
    """The classic printer test pattern: a rotating window over printable ASCII."""
    chars = "".join(chr(c) for c in range(0x21, 0x7F))
    out = []
    for i in range(lines):
        start = i % len(chars)
        out.append((chars * 2)[start : start + width])
    return ("\n".join(out) + "\n").encode()


# --- the cases ----------------------------------------------------------------------------------


def test_signed_exec_is_accepted(signed: Server, munged: str, mech: str) -> None:  # noqa: F811
    r = cli(signed, munged, mech, "exec", "--sign", "--", "echo", "signed")
    assert (r.returncode, r.stdout, r.stderr) == (0, b"signed\n", b"")


def test_cli_signs_by_itself_when_the_owner_is_not_the_caller(
    signed: Server,
    munged: str,  # noqa: F811
    mech: str,
) -> None:
    r = cli(signed, munged, mech, "exec", "--", "true")
    assert r.returncode == 0, r.stderr


def fanout(srv: Server, munge_socket: str, mech: str, hosts: Path, *args: str) -> Any:
    env = srv.env(
        SDEXEC_MUNGE_SOCKET=munge_socket, SDEXEC_SIGN_MECHANISM=mech, SDEXEC_HOSTS=str(hosts)
    )
    env.pop("SDEXEC_URI", None)
    return srv.sdexec(*args, env=env)


@pytest.mark.parametrize("how", [[], ["--sign"]])
def test_many_ranks_sign_each_request(
    signed: Server,
    munged: str,  # noqa: F811
    mech: str,
    tmp_path: Path,
    how: list[str],
) -> None:
    # Two ranks, both this server: exec, kill and wait through the asyncio client.
    hosts = tmp_path / "hosts"
    hosts.write_text(f"{signed.uri}\n{signed.uri}\n")
    r = fanout(signed, munged, mech, hosts, "exec", "-r", "all", "-l", *how, "--", "echo", "hi")
    assert (r.returncode, sorted(r.stdout.splitlines())) == (0, [b"0: hi", b"1: hi"]), r.stderr
    label = f"fan-signed-{mech}-{len(how)}"
    bg = fanout(signed, munged, mech, hosts, "exec", "-r", "0", "--bg", "--waitable",
                "--label", label, "--", "sleep", "60")  # fmt: skip
    assert bg.returncode == 0, bg.stderr
    assert fanout(signed, munged, mech, hosts, "kill", "-r", "0", label).returncode == 0
    assert fanout(signed, munged, mech, hosts, "wait", "-r", "0", label).returncode == 143


def test_many_ranks_unsigned_get_eperm_on_every_rank(
    signed: Server,
    munged: str,  # noqa: F811
    mech: str,
    tmp_path: Path,
) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text(f"{signed.uri}\n{signed.uri}\n")
    r = fanout(signed, munged, mech, hosts, "exec", "-r", "all", "--no-sign", "--", "true")
    assert r.returncode != 0
    assert "[0-1]: error: " in r.stderr.decode()


def test_unsigned_exec_gets_eperm(signed: Server, munged: str, mech: str) -> None:  # noqa: F811
    r = cli(signed, munged, mech, "exec", "--no-sign", "--", "true")
    assert r.returncode == 126
    assert b"this server requires signed requests" in r.stderr


def test_unsigned_list_gets_eperm(signed: Server) -> None:
    assert errno_of(signed, "sdexec.list", {}) == errno.EPERM


def test_attr_get_needs_no_signature(signed: Server, guest: Guest) -> None:  # noqa: F811
    assert rpc(signed, "attr.get", {"name": "security.owner"})["value"] == str(guest.uid)


def test_tampered_payload_gets_eperm(signed: Server, munged: str, mech: str) -> None:  # noqa: F811
    h, _, s = signature("sdexec.exec", EXEC, mech, munged).split(".")
    evil = dict(EXEC, cmd=dict(EXEC["cmd"], cmdline=["rm", "-rf", "/nonexistent"]))  # type: ignore[arg-type]
    p = base64.b64encode(json.dumps({**evil, "topic": "sdexec.exec"}).encode()).decode()
    assert errno_of(signed, "sdexec.exec", {"signature": f"{h}.{p}.{s}"}) == errno.EPERM


def test_topic_mismatch_gets_eperm(signed: Server, munged: str, mech: str) -> None:  # noqa: F811
    sig = signature("sdexec.list", EXEC, mech, munged)
    assert errno_of(signed, "sdexec.exec", {"signature": sig}) == errno.EPERM


@pytest.mark.parametrize("value", [42, None, ["a.b.c"], {"sig": "x"}])
def test_non_string_signature_gets_eproto(signed: Server, value: object) -> None:
    assert errno_of(signed, "sdexec.exec", {"signature": value}) == errno.EPROTO


def test_signature_by_another_uid_gets_eperm(
    signed: Server,
    guest: Guest,  # noqa: F811
    munged: str,  # noqa: F811
    mech: str,
) -> None:
    script = guest.home / "sign.py"
    script.write_text(GUEST_SIGN)
    script.chmod(0o644)
    made = guest.run(GUEST_PYTHON, str(script), "sdexec.list", "{}", mech, munged)
    assert made.returncode == 0, made.stderr
    sig = made.stdout.decode().strip()
    assert sign.peek_header(sig)["userid"] == guest.uid
    assert errno_of(signed, "sdexec.list", {"signature": sig}) == errno.EPERM


def test_replayed_signature_gets_eperm(signed: Server, munged: str, mech: str) -> None:  # noqa: F811
    sig = signature("sdexec.list", {}, mech, munged)
    assert "procs" in rpc(signed, "sdexec.list", {"signature": sig})
    assert errno_of(signed, "sdexec.list", {"signature": sig}) == errno.EPERM


def test_expired_signature_gets_eperm(short_ttl: Server, munged: str, mech: str) -> None:  # noqa: F811
    sig = signature("sdexec.list", {}, mech, munged)
    time.sleep(3.5)  # signing times have 1 s resolution: well past the 2 s TTL
    assert errno_of(short_ttl, "sdexec.list", {"signature": sig}) == errno.EPERM


def test_fresh_signature_is_accepted_by_the_short_ttl_server(
    short_ttl: Server,
    munged: str,  # noqa: F811
    mech: str,
) -> None:
    assert "procs" in rpc(
        short_ttl, "sdexec.list", {"signature": signature("sdexec.list", {}, mech, munged)}
    )


def test_other_mechanism_is_refused(signed: Server, munged: str, mech: str) -> None:  # noqa: F811
    other = "munge" if mech == "none" else "none"
    sig = signature("sdexec.list", {}, other, munged)
    assert errno_of(signed, "sdexec.list", {"signature": sig}) == errno.EPERM


def test_signed_writes_carry_lptest_data_intact(
    signed: Server,
    munged: str,  # noqa: F811
    mech: str,
) -> None:
    data = lptest()
    r = cli(signed, munged, mech, "exec", "--sign", "--", "cat", input=data)
    assert r.returncode == 0, r.stderr
    assert r.stdout == data


def test_signed_kill_and_wait_reach_a_background_process(
    signed: Server,
    munged: str,  # noqa: F811
    mech: str,
) -> None:
    label = f"signed-{mech}-{os.getpid()}-{time.monotonic_ns()}"
    r = cli(
        signed, munged, mech, "exec", "--bg", "--waitable", "--label", label, "--", "sleep", "60"
    )
    assert r.returncode == 0, r.stderr
    assert cli(signed, munged, mech, "kill", "--sign", label).returncode == 0
    assert cli(signed, munged, mech, "wait", "--sign", label).returncode == 143


def test_exec_is_audited_with_requester_signer_argv_and_unit(
    signed: Server,
    munged: str,  # noqa: F811
    mech: str,
) -> None:
    marker = f"audit-{mech}-{time.monotonic_ns()}"
    assert cli(signed, munged, mech, "exec", "--sign", "--", "echo", marker).returncode == 0
    events = [json.loads(line) for line in signed.log_text().splitlines() if marker in line]
    (event,) = [e for e in events if e.get("event") == "exec"]
    assert event["requester"] == os.getuid()
    assert event["signer"] == os.getuid()
    assert event["argv"] == ["echo", marker]
    assert event["unit"].endswith(".service")


def test_refusal_is_logged_with_uid_topic_and_reason(signed: Server) -> None:
    errno_of(signed, "sdexec.kill", {"pid": 1, "signum": 0})
    refusals = [
        json.loads(line)
        for line in signed.log_text().splitlines()
        if '"request refused"' in line and "sdexec.kill" in line
    ]
    assert refusals
    assert refusals[-1]["uid"] == os.getuid()
    assert refusals[-1]["reason"] == "this server requires signed requests"


def test_replay_of_a_whitespace_variant_gets_eperm(
    signed: Server,
    munged: str,  # noqa: F811
    mech: str,
) -> None:
    # munged decodes a credential with whitespace in it as the same credential.
    sig = signature("sdexec.list", {}, mech, munged)
    assert "procs" in rpc(signed, "sdexec.list", {"signature": sig})
    head, _, cred = sig.rpartition(".")
    variant = f"{head}.{cred[:7]}\n{cred[7:]}"
    assert errno_of(signed, "sdexec.list", {"signature": variant}) == errno.EPERM


def test_socket_of_a_server_owned_by_another_user_is_that_users_alone(
    signed: Server,
    guest: Guest,  # noqa: F811
) -> None:
    import stat
    from pathlib import Path

    path = Path(signed.socket_path)
    st = path.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o600, guest.uid)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o711


def test_owner_who_is_not_the_server_uid_is_admitted(
    signed: Server,
    guest: Guest,  # noqa: F811
) -> None:
    r = guest.sdexec(signed.uri, "ps", "--no-sign")
    # Admitted at the handshake, then refused: only the server's uid can sign.
    assert r.returncode == 1
    assert b"this server requires signed requests" in r.stderr


def test_a_signature_replayed_after_a_server_restart_gets_eperm(
    make_server: ServerFactory,  # noqa: F811
    guest: Guest,  # noqa: F811
    munged: str,  # noqa: F811
    mech: str,
    tmp_path: Path,
) -> None:
    """Issue 15, item 14: the replay cache lives in the state directory, for its TTL."""
    import signal

    from faults import assert_no_traceback

    srv = make_server(
        f"replay-restart-{mech}",
        "--owner", str(guest.uid), "--sign-mechanisms", mech, "--munge-socket", munged,
    )  # fmt: skip
    ran = tmp_path / "ran"
    payload = {
        **EXEC,
        "cmd": {**EXEC["cmd"], "cmdline": ["sh", "-c", f"echo once >> {ran}"]},  # type: ignore[dict-item]
    }
    sig = signature("sdexec.exec", payload, mech, munged)
    assert rpc(srv, "sdexec.exec", {"signature": sig})["type"] == "started"
    srv.stop(signal.SIGKILL)
    srv.start()
    assert errno_of(srv, "sdexec.exec", {"signature": sig}) == errno.EPERM
    deadline = time.monotonic() + 10
    while not ran.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ran.read_text() == "once\n"  # it ran once, not twice
    assert_no_traceback(srv)
