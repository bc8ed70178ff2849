"""RFC 42 as Flux's own clients read it, through a raw client (no sdexec client code).

What ``flux exec``, ``flux sproc``, libsubprocess and flux-core's Python
API expect of any RFC 42 server: the ``attached`` response's command
object, an exclusive attach that reaps, one waiter, the broker log line of
a background process's end, the words Flux's tools match on, labels that
look like pids, and unbuffered output that keeps its pieces.  sdexec's
followers (``attach`` with ``follow``) are checked beside them.
"""

from __future__ import annotations

import errno
import itertools
import time
from typing import Any

from conftest import Server
from rpc import Raw, exec_payload, types

from sdexec.proto.message import Message

_n = itertools.count()


def label(stem: str) -> str:
    return f"{stem}-{next(_n)}"


def bg(raw: Raw, argv: list[str], lab: str | None = None, waitable: bool = True) -> int:
    """A background exec as ``flux exec --bg`` sends it (no output flags)."""
    m = raw.rpc("sdexec.exec", exec_payload(argv, flags=16 if waitable else 0, label=lab))
    assert m.errnum == 0, m.error_text()
    pid = m.json()["pid"]
    assert isinstance(pid, int)
    return pid


def attach(raw: Raw, lab: str, flags: int = 3, **extra: Any) -> int:
    return raw.send(
        "sdexec.attach", {"pid": -1, "label": lab, "flags": flags, **extra}, streaming=True
    )


def state(raw: Raw, pid: int) -> str | None:
    procs = raw.rpc("sdexec.list", {}).json()["procs"]
    return next((p["state"] for p in procs if p["pid"] == pid), None)


def until_state(raw: Raw, pid: int, want: str) -> None:
    deadline = time.monotonic() + 10
    while state(raw, pid) != want:
        assert time.monotonic() < deadline, f"pid {pid} never reached {want}"
        time.sleep(0.05)


def error(m: Message) -> tuple[int, str]:
    return m.errnum, m.error_text() or ""


# --- 1. the attached response -----------------------------------------------------


def test_attached_response_carries_the_command_object_flux_rebuilds_channels_from(
    server: Server,
) -> None:
    raw = Raw(server.socket_path)
    lab = label("cmdobj")
    payload = exec_payload(["sleep", "30"], flags=0, label=lab, opts={"stdout_BUFSIZE": "8k"})
    pid = raw.rpc("sdexec.exec", payload).json()["pid"]
    tag = attach(raw, lab)
    first = raw.recv(tag).json()
    assert (first["type"], first["pid"]) == ("attached", pid)
    cmd = first["cmd"]
    # flux-core's cmd_fromjson requires these four; label and cwd as sent.
    assert cmd["cmdline"] == ["sleep", "30"]
    assert cmd["env"] == payload["cmd"]["env"]
    assert cmd["opts"] == {"stdout_BUFSIZE": "8k"}
    assert cmd["channels"] == []
    assert (cmd["label"], cmd["cwd"]) == (lab, "/")
    assert raw.rpc("sdexec.kill", {"pid": pid, "signum": 9}).errnum == 0
    assert types(raw.stream(tag))[-2:] == ["finished", f"errno={errno.ENODATA}"]
    raw.close()


# --- 2. attach as RFC 42 says, followers beside it ---------------------------------


def test_second_attach_while_one_client_is_attached_is_ebusy(server: Server) -> None:
    first, second = Raw(server.socket_path), Raw(server.socket_path)
    lab = label("busy")
    pid = bg(first, ["sleep", "30"], lab, waitable=False)
    tag = attach(first, lab)
    assert first.recv(tag).json()["type"] == "attached"
    refused = second.recv(attach(second, lab))
    assert refused.errnum == errno.EBUSY
    assert "already has a client attached" in (refused.error_text() or "")
    follower = attach(second, lab, follow=True)  # sdexec's extension: always welcome
    assert second.recv(follower).json()["type"] == "attached"
    first.close()  # the attached client goes: the process is in the background again
    again = Raw(server.socket_path)
    tag = attach(again, lab)
    assert again.recv(tag).json()["type"] == "attached"
    assert again.rpc("sdexec.kill", {"pid": pid, "signum": 15}).errnum == 0
    assert types(again.stream(tag))[-1] == f"errno={errno.ENODATA}"
    assert types(second.stream(follower))[-1] == f"errno={errno.ENODATA}"
    again.close()
    second.close()


def test_wait_while_a_client_is_attached_is_ebusy(server: Server) -> None:
    raw, other = Raw(server.socket_path), Raw(server.socket_path)
    lab = label("waitatt")
    pid = bg(raw, ["sleep", "30"], lab)
    tag = attach(raw, lab)
    assert raw.recv(tag).json()["type"] == "attached"
    refused = other.rpc("sdexec.wait", {"pid": -1, "label": lab})
    assert refused.errnum == errno.EBUSY
    assert "client attached" in (refused.error_text() or "")
    assert other.rpc("sdexec.kill", {"pid": pid, "signum": 9}).errnum == 0
    assert types(raw.stream(tag))[-2:] == ["finished", f"errno={errno.ENODATA}"]
    assert other.rpc("sdexec.wait", {"pid": -1, "label": lab}).errnum == errno.ENOENT
    raw.close()
    other.close()


def test_attach_while_a_wait_is_pending_is_ebusy_but_a_follower_is_welcome(
    server: Server,
) -> None:
    raw = Raw(server.socket_path)
    lab = label("attwait")
    pid = bg(raw, ["sleep", "30"], lab)
    waiter = raw.send("sdexec.wait", {"pid": -1, "label": lab})  # read first: pending
    refused = raw.recv(attach(raw, lab))
    assert refused.errnum == errno.EBUSY
    assert "being waited on" in (refused.error_text() or "")
    follower = attach(raw, lab, follow=True)
    assert raw.recv(follower).json()["type"] == "attached"
    assert raw.rpc("sdexec.kill", {"pid": pid, "signum": 9}).errnum == 0
    assert raw.recv(waiter).json() == {"status": 9}
    assert types(raw.stream(follower))[-2:] == ["finished", f"errno={errno.ENODATA}"]
    raw.close()


def test_attach_that_receives_finished_reaps_a_waitable_process(server: Server) -> None:
    raw = Raw(server.socket_path)
    lab = label("reaps")
    pid = bg(raw, ["sh", "-c", "echo kept; sleep 0.5; exit 3"], lab)
    msgs = raw.stream(attach(raw, lab))
    fin = [m.json() for m in msgs if not m.errnum and m.json()["type"] == "finished"]
    assert fin == [{"type": "finished", "pid": pid, "status": 3 << 8}]
    for topic, payload in (
        ("sdexec.wait", {"pid": pid}),
        ("sdexec.wait", {"pid": -1, "label": lab}),
    ):
        assert raw.rpc(topic, payload).errnum in (errno.ENOENT, errno.ESRCH)
    assert raw.recv(attach(raw, lab)).errnum == errno.ENOENT
    raw.close()
    deadline = time.monotonic() + 10
    while server.sdexec("logs", lab).stdout != b"kept\n":  # the journal still has it
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_follower_does_not_reap_so_wait_still_has_the_status(server: Server) -> None:
    raw = Raw(server.socket_path)
    lab = label("follows")
    bg(raw, ["sh", "-c", "exit 4"], lab)
    for _ in range(2):
        msgs = raw.stream(attach(raw, lab, follow=True))
        assert types(msgs)[-2:] == ["finished", f"errno={errno.ENODATA}"]
    assert raw.rpc("sdexec.wait", {"pid": -1, "label": lab}).json() == {"status": 4 << 8}
    raw.close()


def test_attach_flags_select_the_streams_forwarded(server: Server) -> None:
    raw = Raw(server.socket_path)
    lab = label("streams")
    bg(raw, ["sh", "-c", "echo out; echo err >&2; sleep 0.5"], lab)
    msgs = raw.stream(attach(raw, lab, flags=1))  # stdout only
    outputs = [m.json()["io"] for m in msgs if not m.errnum and m.json()["type"] == "output"]
    assert {io["stream"] for io in outputs} == {"stdout"}
    assert [io.get("data") for io in outputs if "data" in io] == ["out\n"]
    assert [io for io in outputs if io.get("eof")] == [
        {"stream": "stdout", "rank": "0", "eof": True}
    ]
    raw.close()


def test_attach_to_a_finished_waitable_gives_eofs_finished_and_reaps(server: Server) -> None:
    raw = Raw(server.socket_path)
    lab = label("zombie")
    pid = bg(raw, ["sh", "-c", "exit 7"], lab)
    until_state(raw, pid, "Z")
    msgs = raw.stream(attach(raw, lab))
    assert types(msgs) == [
        "attached",
        "output",
        "output",
        "finished",
        f"errno={errno.ENODATA}",
    ]
    assert msgs[3].json()["status"] == 7 << 8
    assert state(raw, pid) is None
    raw.close()


# --- 3. waitable is for background execs; one waiter ----------------------------------


def test_waitable_streaming_exec_is_einval(server: Server) -> None:
    raw = Raw(server.socket_path)
    m = raw.rpc("sdexec.exec", exec_payload(["true"], flags=16 | 3), streaming=True)
    assert m.errnum == errno.EINVAL
    assert "waitable flag only supported in background mode" in (m.error_text() or "")
    raw.close()


# (A second wait is EINVAL: tests/integration/test_errors.py.)


# --- 4. the broker log line of a background process's end ------------------------------


def test_background_end_is_logged_as_flux_servers_log_it(server: Server) -> None:
    raw = Raw(server.socket_path)
    lab = label("endline")
    killed = bg(raw, ["sleep", "30"], lab, waitable=False)
    exited = bg(raw, ["sh", "-c", "exit 2"], waitable=False)
    assert raw.rpc("sdexec.kill", {"pid": killed, "signum": 9}).errnum == 0
    raw.close()
    want = [f"{lab}: sleep[{killed}]: Killed by signal 9", f"sh[{exited}]: Exit 2"]
    deadline = time.monotonic() + 10
    while not all(w in server.log_text() for w in want):
        assert time.monotonic() < deadline, f"{want} not in the server's log"
        time.sleep(0.1)


# --- 5. the words Flux's tools match on ----------------------------------------------


def test_unknown_pid_and_label_do_not_belong_to_any_subprocess(server: Server) -> None:
    raw = Raw(server.socket_path)
    # flux-core's rexec says "does not belong to any subprocess", its sdexec "not found".
    for payload, text in (
        ({"pid": 999999, "signum": 15}, "pid 999999 not found"),
        ({"pid": -1, "label": "nosuch", "signum": 15}, "label nosuch not found"),
    ):
        m = raw.rpc("sdexec.kill", payload)
        # ESRCH, as both Flux servers: flux sproc kill --wait reads it as
        # "reaped by my wait meanwhile" and reports the wait's status.
        assert m.errnum == errno.ESRCH
        assert text in (m.error_text() or "")
        assert "does not belong to any subprocess" in (m.error_text() or "")
    m = raw.rpc("sdexec.wait", {"pid": 999999})
    assert "pid 999999 not found" in (m.error_text() or "")
    assert "does not belong to any subprocess" in (m.error_text() or "")
    raw.close()


def test_kill_of_an_exited_process_is_no_such_process(server: Server) -> None:
    raw = Raw(server.socket_path)
    pid = bg(raw, ["true"])
    until_state(raw, pid, "Z")
    m = raw.rpc("sdexec.kill", {"pid": pid, "signum": 15})
    assert m.errnum == errno.ESRCH
    assert "No such process" in (m.error_text() or "")
    assert raw.rpc("sdexec.wait", {"pid": pid}).json() == {"status": 0}
    raw.close()


def test_kill_after_a_wait_reaped_the_process_is_esrch_and_the_wait_has_the_status(
    server: Server,
) -> None:
    """flux sproc kill --wait: its wait goes first and may reap the process before the kill."""
    raw = Raw(server.socket_path)
    bg(raw, ["true"], "reaped-first")
    assert raw.rpc("sdexec.wait", {"pid": -1, "label": "reaped-first"}).json() == {"status": 0}
    m = raw.rpc("sdexec.kill", {"pid": -1, "label": "reaped-first", "signum": 15})
    assert m.errnum == errno.ESRCH
    raw.close()


def test_command_that_cannot_be_launched_says_error_launching_process(server: Server) -> None:
    raw = Raw(server.socket_path)
    for argv, num, text in (
        (["./nosuchprocess"], errno.ENOENT, "No such file or directory"),
        (["/dev/null"], errno.EACCES, "Permission denied"),
    ):
        for streaming, flags in ((True, 3), (False, 0)):
            m = raw.rpc("sdexec.exec", exec_payload(argv, flags=flags), streaming=streaming)
            assert m.errnum == num
            assert (m.error_text() or "").startswith("error launching process: ")
            assert text in (m.error_text() or "")
    raw.close()


# --- 6. a label of digits is looked up like any other -----------------------------------


def test_lookup_by_a_digits_only_label_is_not_found(server: Server) -> None:
    raw = Raw(server.socket_path)
    m = raw.rpc("sdexec.attach", {"pid": -1, "label": "4294967297", "flags": 3}, streaming=True)
    assert m.errnum == errno.ENOENT
    assert "label 4294967297 not found" in (m.error_text() or "")
    for topic, extra, num in (
        ("sdexec.wait", {}, errno.ENOENT),
        ("sdexec.kill", {"signum": 15}, errno.ESRCH),
    ):
        m = raw.rpc(topic, {"pid": -1, "label": "4294967297", **extra})
        assert m.errnum == num
    # Where a label is made, digits only are still refused: no pid could name it.
    m = raw.rpc("sdexec.exec", exec_payload(["true"], flags=0, label="12345"))
    assert m.errnum == errno.EINVAL
    raw.close()


# --- 7. unbuffered output keeps the pieces it was written in --------------------------


def test_unbuffered_output_written_at_once_at_start_comes_in_pieces(server: Server) -> None:
    """As flux-core's "line buffering can be disabled": 2200 small writes made
    as soon as the command starts, with line buffering off, are more than one
    output response.  Racy by nature, as flux-core's test is; what made it
    fail (output written before the server learnt that the unit started came
    out of the pipe as one chunk) is checked without a race in
    tests/unit/test_handlers_fuzz.py."""
    raw = Raw(server.socket_path)
    script = "yes hi | dd bs=3 count=2200 iflag=fullblock status=none"
    payload = exec_payload(["sh", "-c", script], opts={"stdout_LINE_BUFFER": "false"})
    msgs = raw.stream(raw.send("sdexec.exec", payload, streaming=True))
    data = [
        m.json()["io"]["data"]
        for m in msgs
        if not m.errnum and m.json()["type"] == "output" and "data" in m.json()["io"]
    ]
    assert "".join(data) == "hi\n" * 2200
    assert len(data) > 1, "all of the output came in one response"
    raw.close()


def test_line_buffered_output_is_one_response_per_line(server: Server) -> None:
    raw = Raw(server.socket_path)
    script = "i=0; while [ $i -lt 2200 ]; do printf hi; i=$((i+1)); done; echo; echo two"
    payload = exec_payload(["sh", "-c", script], opts={"stdout_LINE_BUFFER": "true"})
    msgs = raw.stream(raw.send("sdexec.exec", payload, streaming=True))
    data = [
        m.json()["io"]["data"]
        for m in msgs
        if not m.errnum and m.json()["type"] == "output" and "data" in m.json()["io"]
    ]
    assert data == ["hi" * 2200 + "\n", "two\n"]
    raw.close()
