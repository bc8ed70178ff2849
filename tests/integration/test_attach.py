"""RFC 42 attach and stopped, through the CLI and through raw RPCs."""

from __future__ import annotations

import errno
import itertools
import signal
import subprocess
import time

from conftest import Server
from rpc import Raw, exec_payload, types

_n = itertools.count()


def label(stem: str) -> str:
    return f"{stem}-{next(_n)}"


def bg(server: Server, lab: str, *argv: str, waitable: bool = True) -> int:
    r = server.sdexec(
        "exec", "--bg", "--label", lab, *(["--waitable"] if waitable else []), "--", *argv
    )
    assert r.returncode == 0, r.stderr
    return int(r.stdout)


def attach(server: Server, target: str) -> subprocess.CompletedProcess[bytes]:
    """``sdexec attach TARGET``, then the wait that reaps it (attach does not), same status."""
    r = server.sdexec("attach", target)
    assert server.sdexec("wait", target).returncode == r.returncode
    return r


def test_attach_to_running_process_returns_its_exit_code(server: Server) -> None:
    lab = label("att")
    bg(server, lab, "sh", "-c", "sleep 1; exit 5")
    assert attach(server, lab).returncode == 5


def test_output_before_attach_is_replayed_then_followed(server: Server) -> None:
    lab = label("replay")
    bg(server, lab, "sh", "-c", "echo early; echo early-err >&2; sleep 1; echo late")
    time.sleep(0.5)
    r = attach(server, lab)
    assert r.returncode == 0
    assert r.stdout == b"early\nlate\n"
    assert r.stderr == b"early-err\n"


def test_cli_attach_does_not_reap_so_wait_still_has_the_status(server: Server) -> None:
    lab = label("done")
    bg(server, lab, "sh", "-c", "echo bye; exit 3")
    time.sleep(0.5)
    for _ in range(2):
        r = server.sdexec("attach", lab)
        assert (r.returncode, r.stdout) == (3, b"bye\n")
    assert server.sdexec("wait", lab).returncode == 3
    again = server.sdexec("attach", lab)
    assert again.returncode == 125
    assert b"was reaped" in again.stderr
    assert server.sdexec("logs", lab).stdout == b"bye\n"  # the journal still has it


def test_rfc_attach_to_a_finished_waitable_reaps_it(server: Server) -> None:
    lab = label("rfcreap")
    bg(server, lab, "sh", "-c", "exit 4")
    time.sleep(0.5)
    raw = Raw(server.socket_path)
    msgs = raw.stream(
        raw.send("sdexec.attach", {"pid": -1, "label": lab, "flags": 0}, streaming=True)
    )
    assert types(msgs)[-2:] == ["finished", f"errno={errno.ENODATA}"]
    assert raw.rpc("sdexec.wait", {"pid": -1, "label": lab}).errnum == errno.ENOENT
    raw.close()


def test_attach_stream_has_the_rfc_shape(server: Server) -> None:
    lab = label("shape")
    pid = bg(server, lab, "sh", "-c", "echo hi")
    time.sleep(0.5)
    raw = Raw(server.socket_path)
    msgs = raw.stream(
        raw.send("sdexec.attach", {"pid": -1, "label": lab, "flags": 3}, streaming=True)
    )
    raw.close()
    assert types(msgs) == [
        "attached",
        "output",
        "output",
        "output",
        "finished",
        f"errno={errno.ENODATA}",
    ]
    first = msgs[0].json()
    assert {k: first[k] for k in ("type", "pid", "flags")} == {
        "type": "attached",
        "pid": pid,
        "flags": 19,  # as the CLI sent
    }
    assert first["cmd"]["cmdline"] == ["sh", "-c", "echo hi"]
    assert msgs[1].json()["io"]["data"] == "hi\n"
    assert {m.json()["io"]["stream"] for m in msgs[2:4]} == {"stdout", "stderr"}
    assert all(m.json()["io"]["eof"] for m in msgs[2:4])
    assert msgs[4].json()["status"] == 0


def test_attach_by_pid_ignores_missing_label(server: Server) -> None:
    lab = label("bypid")
    pid = bg(server, lab, "true")
    time.sleep(0.3)
    assert attach(server, str(pid)).returncode == 0


def test_several_clients_attach_at_once_and_each_gets_everything(server: Server) -> None:
    lab = label("many")
    bg(server, lab, "sh", "-c", "echo one; sleep 1; echo two; exit 6")
    clis = [server.popen("attach", lab, stdout=subprocess.PIPE) for _ in range(3)]
    for cli in clis:  # each is attached: it has the replay
        assert cli.stdout is not None
        assert cli.stdout.readline() == b"one\n"
    raw = Raw(server.socket_path)
    w = raw.rpc("sdexec.wait", {"pid": -1, "label": lab})  # beside the attached clients
    assert (w.errnum, w.json()) == (0, {"status": 6 << 8})
    raw.close()
    for cli in clis:
        assert cli.stdout is not None
        out = cli.stdout.read()  # not communicate(): it would skip what readline buffered
        assert (cli.wait(20), out) == (6, b"two\n")


def _attach(raw: Raw, lab: str, **extra: object) -> int:
    return raw.send("sdexec.attach", {"pid": -1, "label": lab, "flags": 0, **extra}, streaming=True)


def test_one_attached_client_at_a_time_holds_the_input(server: Server) -> None:
    lab = label("holder")
    cmd = exec_payload(["sh", "-c", 'cat <&"$CH"'], flags=16, label=lab)
    cmd["cmd"]["channels"] = ["CH"]
    first = Raw(server.socket_path)
    assert first.rpc("sdexec.exec", cmd).json()["type"] == "started"
    holder = _attach(first, lab, stdin=True)
    assert first.recv(holder).json()["stdin"] is True
    second = Raw(server.socket_path)
    refused = second.rpc(
        "sdexec.attach", {"pid": -1, "label": lab, "flags": 0, "stdin": True}, streaming=True
    )
    assert refused.errnum == errno.EBUSY
    reader = _attach(second, lab, reap=False)  # without the input: always welcome
    assert "stdin" not in second.recv(reader).json()
    for raw, tag, data in ((second, reader, "dropped\n"), (first, holder, "kept\n")):
        raw.send(
            "sdexec.write",
            {"matchtag": tag, "io": {"stream": "CH", "rank": "0", "data": data}},
            noresponse=True,
        )
    first.close()  # the holder goes; its place is free again
    third = Raw(server.socket_path)
    again = _attach(third, lab, stdin=True, reap=False)
    assert third.recv(again).json()["type"] == "attached"
    third.send(
        "sdexec.write",
        {"matchtag": again, "io": {"stream": "CH", "rank": "0", "data": "more\n", "eof": True}},
        noresponse=True,
    )
    assert third.stream(again)[-1].errnum == errno.ENODATA
    assert second.stream(reader)[-1].errnum == errno.ENODATA
    second.close()
    third.close()
    assert server.sdexec("wait", lab).returncode == 0
    assert _logs_settled(server, lab) == b"kept\nmore\n"


def _logs_settled(server: Server, lab: str) -> bytes:
    """What ``logs`` prints once journald has written everything (it may lag the exit)."""
    deadline = time.monotonic() + 10
    last = b""
    while time.monotonic() < deadline:
        out = server.sdexec("logs", lab).stdout
        if out and out == last:
            return out
        last = out
        time.sleep(0.2)
    return last


def test_attach_with_a_bad_extension_member_is_eproto(server: Server) -> None:
    raw = Raw(server.socket_path)
    m = raw.rpc("sdexec.attach", {"pid": 1, "flags": 0, "stdin": "yes"}, streaming=True)
    assert m.errnum == errno.EPROTO
    raw.close()


def test_non_streaming_attach_is_eproto(server: Server) -> None:
    raw = Raw(server.socket_path)
    assert raw.rpc("sdexec.attach", {"pid": 1, "flags": 0}).errnum == errno.EPROTO
    raw.close()


def test_attach_to_unknown_process_is_enoent(server: Server) -> None:
    raw = Raw(server.socket_path)
    m = raw.rpc("sdexec.attach", {"pid": 999999, "flags": 0}, streaming=True)
    assert m.errnum == errno.ENOENT
    raw.close()


def test_attach_to_foreground_process_is_ebusy(server: Server) -> None:
    raw = Raw(server.socket_path)
    tag = raw.send("sdexec.exec", exec_payload(["sleep", "5"]), streaming=True)
    pid = raw.recv(tag).json()["pid"]
    other = Raw(server.socket_path)
    assert other.rpc("sdexec.attach", {"pid": pid, "flags": 0}, streaming=True).errnum == (
        errno.EBUSY
    )
    other.close()
    raw.close()


def test_killed_attach_client_leaves_process_running_and_reattachable(server: Server) -> None:
    lab = label("survive")
    bg(server, lab, "sh", "-c", "echo start; sleep 2; echo end; exit 9")
    first = server.popen("attach", lab, stdout=subprocess.PIPE)
    assert first.stdout is not None
    assert first.stdout.readline() == b"start\n"
    first.send_signal(signal.SIGKILL)
    first.wait(5)
    r = attach(server, lab)
    assert r.returncode == 9
    assert r.stdout == b"start\nend\n"


def test_ctrl_c_detaches_and_leaves_the_process(server: Server) -> None:
    lab = label("ctrlc")
    bg(server, lab, "sh", "-c", "echo up; sleep 2; exit 2")
    cli = server.popen("attach", lab, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert cli.stdout is not None
    assert cli.stdout.readline() == b"up\n"
    cli.send_signal(signal.SIGINT)
    _, err = cli.communicate(timeout=10)
    assert cli.returncode == 130
    assert f"sdexec kill {lab}".encode() in err
    assert server.sdexec("wait", lab).returncode == 2


def test_sigstop_gives_stopped_and_sigcont_lets_cat_finish(server: Server) -> None:
    raw = Raw(server.socket_path)
    tag = raw.send("sdexec.exec", exec_payload(["cat"]), streaming=True)
    started = raw.recv(tag).json()
    assert started["type"] == "started"
    pid = started["pid"]
    t0 = time.monotonic()
    assert raw.rpc("sdexec.kill", {"pid": pid, "signum": signal.SIGSTOP}).errnum == 0
    while True:
        m = raw.recv(tag)
        if m.json()["type"] == "stopped":
            break
    delay = time.monotonic() - t0
    print(f"stopped detected {delay * 1000:.1f} ms after SIGSTOP was sent")
    listing = raw.rpc("sdexec.list", {}).json()["procs"]
    assert [p["state"] for p in listing if p["pid"] == pid] == ["T"]
    assert raw.rpc("sdexec.kill", {"pid": pid, "signum": signal.SIGCONT}).errnum == 0
    raw.send(
        "sdexec.write",
        {"matchtag": tag, "io": {"stream": "stdin", "rank": "0", "data": "x\n", "eof": True}},
        noresponse=True,
    )
    rest = raw.stream(tag)
    assert "stopped" not in types(rest)
    fin = [m.json() for m in rest if not m.errnum and m.json()["type"] == "finished"]
    assert fin == [{"type": "finished", "pid": pid, "status": 0}]
    out = [
        m.json()["io"].get("data") for m in rest if not m.errnum and m.json()["type"] == "output"
    ]
    assert "x\n" in out
    raw.close()


def test_output_io_rank_is_the_servers_rank_idset(server: Server) -> None:
    raw = Raw(server.socket_path)
    msgs = raw.stream(raw.send("sdexec.exec", exec_payload(["echo", "r"]), streaming=True))
    ranks = {m.json()["io"]["rank"] for m in msgs if not m.errnum and m.json()["type"] == "output"}
    assert ranks == {"0"}
    raw.close()


def test_stdin_credit_starts_at_buffer_size_option(server: Server) -> None:
    raw = Raw(server.socket_path)
    tag = raw.send(
        "sdexec.exec", exec_payload(["cat"], opts={"stdin_BUFSIZE": "8192"}), streaming=True
    )
    first = [raw.recv(tag).json() for _ in range(2)]
    assert first[1] == {"type": "add-credit", "channels": {"stdin": 8192}}
    raw.send(
        "sdexec.write",
        {"matchtag": tag, "io": {"stream": "stdin", "rank": "0", "eof": True}},
        noresponse=True,
    )
    assert raw.stream(tag)[-1].errnum == errno.ENODATA
    raw.close()


def test_write_to_unknown_channel_is_ignored(server: Server) -> None:
    raw = Raw(server.socket_path)
    tag = raw.send("sdexec.exec", exec_payload(["cat"]), streaming=True)
    assert raw.recv(tag).json()["type"] == "started"
    for stream, data in (("nosuch", "ignored"), ("stdin", "kept\n")):
        raw.send(
            "sdexec.write",
            {"matchtag": tag, "io": {"stream": stream, "rank": "0", "data": data}},
            noresponse=True,
        )
    raw.send(
        "sdexec.write",
        {"matchtag": tag, "io": {"stream": "stdin", "rank": "0", "eof": True}},
        noresponse=True,
    )
    msgs = raw.stream(tag)
    data = "".join(
        m.json()["io"].get("data", "")
        for m in msgs
        if not m.errnum and m.json()["type"] == "output"
    )
    assert data == "kept\n"
    raw.close()
