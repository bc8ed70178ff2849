"""RFC 42 auxiliary channels and msgchans against real systemd, over the raw protocol.

The CLI has no channel option, so these tests speak RFC 42 themselves with
:class:`~sdexec.client.blocking.BlockingHandle`: a streaming ``sdexec.exec``
with ``cmd.channels``, ``sdexec.write`` requests for the channel that never
exceed the credit the server gave, and the ``output`` responses read back.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from conftest import REPO, Server

from sdexec.client.blocking import BlockingHandle
from sdexec.client.exec import encode_io
from sdexec.client.rpc import RemoteError, response_payload
from sdexec.proto.iodata import decode_io_data
from sdexec.server import channels
from sdexec.unit import channel_exec

STDOUT, STDERR, CHANNEL, WRITE_CREDIT = 1, 2, 4, 8
ALL = STDOUT | STDERR | CHANNEL | WRITE_CREDIT
CH = "CH"
ECHO = ["sh", "-c", 'exec cat <&"$CH" >&"$CH"']
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin"}
CHUNK = 65536


@dataclass
class Run:
    """What one exec stream delivered."""

    pid: int = 0
    status: int | None = None
    output: dict[str, bytearray] = field(default_factory=dict)
    eof: list[str] = field(default_factory=list)
    credits: list[dict[str, int]] = field(default_factory=list)
    sent: int = 0
    max_outstanding: int = 0

    def out(self, stream: str) -> bytes:
        return bytes(self.output.get(stream, b""))


def command(
    cmdline: list[str],
    *,
    channels: tuple[str, ...] = (CH,),
    env: dict[str, str] | None = None,
    opts: dict[str, str] | None = None,
    msgchans: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    cmd: dict[str, Any] = {
        "cmdline": cmdline,
        "env": dict(ENV if env is None else env),
        "opts": opts or {},
        "channels": list(channels),
    }
    if msgchans is not None:
        cmd["msgchans"] = msgchans
    return cmd


def run(
    server: Server,
    cmd: dict[str, Any],
    *,
    flags: int = ALL,
    send: bytes = b"",
    stream: str = CH,
    close: bool = True,
    borrow: int = 0,
) -> Run:
    """Run ``cmd`` to the end, writing ``send`` to ``stream`` within the credit given.

    ``borrow`` bytes may be written before the first ``add-credit``, as
    RFC 42 "write" allows; the first credit for the stream repays them.
    """
    result = Run()
    credit = borrow  # what may be sent now: RFC 42's L plus what may still be borrowed
    repaid = False
    pending = memoryview(send)
    eof_sent = not close
    with BlockingHandle.connect(server.uri) as h:
        tag = h.request("sdexec.exec", {"cmd": cmd, "flags": flags}, streaming=True)
        while True:
            while credit > 0 and pending:
                chunk, pending = pending[: min(credit, CHUNK)], pending[min(credit, CHUNK) :]
                h.send("sdexec.write", {"matchtag": tag, "io": encode_io(stream, bytes(chunk))})
                credit -= len(chunk)
                result.sent += len(chunk)
            if not pending and not eof_sent and result.pid:
                h.send("sdexec.write", {"matchtag": tag, "io": encode_io(stream, eof=True)})
                eof_sent = True
            for msg in h.receive():
                assert msg.matchtag == tag
                if msg.errnum == errno.ENODATA:
                    return result
                resp = response_payload(msg)
                kind = resp["type"]
                if kind == "started":
                    result.pid = resp["pid"]
                elif kind == "add-credit":
                    result.credits.append(resp["channels"])
                    if stream in resp["channels"]:
                        credit += resp["channels"][stream] - (0 if repaid else borrow)
                        repaid = True
                elif kind == "output":
                    io = resp["io"]
                    result.output.setdefault(io["stream"], bytearray()).extend(decode_io_data(io))
                    if io.get("eof"):
                        result.eof.append(io["stream"])
                elif kind == "finished":
                    result.status = resp["status"]


# --- channels -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [8 * 1024, 80 * 1024, 800 * 1024], ids=["8K", "80K", "800K"])
def test_channel_round_trips_bytes_exactly(server: Server, size: int) -> None:
    data = os.urandom(size)  # binary: travels as base64 both ways
    r = run(server, command(ECHO), send=data)
    assert r.status == 0
    assert len(r.out(CH)) == size
    assert r.out(CH) == data


def test_channel_variable_holds_the_number_of_a_socket_fd(server: Server) -> None:
    r = run(server, command(["sh", "-c", 'echo "$CH"; readlink /proc/$$/fd/"$CH"']))
    number, target = r.out("stdout").decode().split()
    assert number == "3"
    assert target.startswith("socket:")


def test_two_channels_get_consecutive_fds_in_order(server: Server) -> None:
    cmd = command(["sh", "-c", 'echo "$A $B"'], channels=("A", "B"))
    assert run(server, cmd).out("stdout") == b"3 4\n"


def test_channel_output_arrives_under_the_channel_name_and_ends_with_eof(server: Server) -> None:
    r = run(server, command(["sh", "-c", 'printf "to the channel" >&"$CH"']), close=False)
    assert r.out(CH) == b"to the channel"
    assert r.eof.count(CH) == 1
    assert r.out("stdout") == b""


def test_channel_eof_from_client_reaches_process(server: Server) -> None:
    r = run(server, command(["sh", "-c", 'cat <&"$CH" >/dev/null; echo got-eof']))
    assert (r.status, r.out("stdout")) == (0, b"got-eof\n")


def test_channel_eof_reaches_process_while_its_output_stays_open(server: Server) -> None:
    # The process reads to EOF and only then answers on the same channel.
    r = run(
        server, command(["sh", "-c", 'n=$(wc -c <&"$CH"); echo "n=$n" >&"$CH"']), send=b"x" * 5000
    )
    assert r.out(CH) == b"n=5000\n"


def test_initial_channel_credit_is_the_channel_buffer_size(server: Server) -> None:
    r = run(server, command(["true"], opts={"CH_BUFSIZE": "8k"}))
    assert {CH: 8192} in r.credits


def test_channel_write_with_borrowed_credit_before_started_arrives(server: Server) -> None:
    data = os.urandom(4096)
    r = run(server, command(ECHO), send=data, borrow=4096)
    assert r.out(CH) == data


def test_channel_writes_are_paced_by_credit(server: Server) -> None:
    data = os.urandom(300 * 1024)
    r = run(server, command(ECHO), send=data)
    granted = sum(c.get(CH, 0) for c in r.credits)
    assert r.out(CH) == data
    assert r.sent <= granted  # every byte written was covered by credit


def test_channel_output_is_dropped_without_the_channel_flag(server: Server) -> None:
    # 1 MiB into the channel must not block the process when nobody forwards it.
    cmd = command(["sh", "-c", 'head -c 1048576 /dev/zero >&"$CH"; echo done'])
    r = run(server, cmd, flags=STDOUT | STDERR | WRITE_CREDIT, close=False)
    assert (r.status, r.out("stdout")) == (0, b"done\n")
    assert CH not in r.output and CH not in r.eof


def test_channel_exec_pid_is_the_commands_pid(server: Server) -> None:
    r = run(server, command(["sh", "-c", "echo $$"]))
    assert int(r.out("stdout")) == r.pid


def test_channel_command_exit_status_is_its_own(server: Server) -> None:
    r = run(server, command(["sh", "-c", "exit 7"]))
    assert r.status == 7 << 8


def test_channel_exec_keeps_stdin(server: Server) -> None:
    r = run(server, command(["cat"]), send=b"via stdin\n", stream="stdin")
    assert r.out("stdout") == b"via stdin\n"


def _environment(server: Server, channels: tuple[str, ...]) -> dict[str, str]:
    r = run(server, command(["env", "-0"], channels=channels))
    pairs = (e.split("=", 1) for e in r.out("stdout").decode().split("\0") if e)
    env = {k: v for k, v in pairs}
    for per_unit in ("INVOCATION_ID", "SYSTEMD_EXEC_PID"):
        env.pop(per_unit)
    return env


def test_helper_adds_only_the_channel_variables_to_the_environment(server: Server) -> None:
    plain = _environment(server, ())
    with_channel = _environment(server, (CH,))
    assert "LC_CTYPE" not in with_channel  # CPython's C-locale coercion does not leak
    assert with_channel.pop(CH) == "3"
    assert with_channel == plain


def test_helper_keeps_signal_dispositions(server: Server) -> None:
    # CPython ignores SIGPIPE and SIGXFSZ, and ignored signals survive execve.
    show = ["grep", "-E", "^Sig(Ign|Blk)", "/proc/self/status"]
    plain = run(server, command(show, channels=())).out("stdout")
    assert run(server, command(show)).out("stdout") == plain


@pytest.mark.parametrize("name", ["stdin", "A=B", "", "1X"])
def test_invalid_channel_name_is_einval(server: Server, name: str) -> None:
    with pytest.raises(RemoteError) as err:
        run(server, command(["true"], channels=(name,)))
    assert err.value.errno == errno.EINVAL


def test_unknown_channel_writes_are_ignored(server: Server) -> None:
    r = run(server, command(["sh", "-c", "echo ok"]), send=b"lost", stream="NOPE", close=False)
    assert (r.status, r.out("stdout")) == (0, b"ok\n")


def test_background_exec_with_a_channel_runs(server: Server) -> None:
    with BlockingHandle.connect(server.uri) as h:
        cmd = command(["sh", "-c", 'echo bg >&"$CH"'], channels=(CH,))
        cmd["label"] = "chan-bg"
        started = h.rpc("sdexec.exec", {"cmd": cmd, "flags": 16})
        assert started["type"] == "started"
        status = h.rpc("sdexec.wait", {"pid": 0, "label": "chan-bg"})
    assert status["status"] == 0


# --- msgchans -------------------------------------------------------------------------------

RPC_SNIPPET = """
import json, os
from sdexec.client.blocking import BlockingHandle
with BlockingHandle.connect(os.environ["MC"]) as h:
    print(json.dumps([h.rpc("attr.get", {"name": "rank"}), h.rpc("sdexec.list")]))
"""


def test_msgchan_rpc_round_trips(server: Server) -> None:
    env = {**ENV, "PYTHONPATH": str(REPO)}
    cmd = command(
        [sys.executable, "-c", RPC_SNIPPET],
        channels=(),
        env=env,
        msgchans=[{"name": "MC", "uri": server.uri}],
    )
    r = run(server, cmd, close=False)
    assert r.status == 0, r.out("stderr")
    attr, listing = json.loads(r.out("stdout"))
    assert attr["value"] == "0"
    assert r.pid in [p["pid"] for p in listing["procs"]]  # it saw itself through the bridge


EXEC_AND_LEAVE = """
import os
from sdexec.client.blocking import BlockingHandle
h = BlockingHandle.connect(os.environ["MC"])
cmd = {"cmdline": ["sleep", "300"], "env": {"PATH": "/bin:/usr/bin"}, "opts": {},
       "channels": [], "label": os.environ["LABEL"]}
tag = h.request("sdexec.exec", {"cmd": cmd, "flags": 0}, streaming=True)
while not any(m.matchtag == tag and b"started" in m.payload for m in h.receive()):
    pass
print("started", flush=True)
"""


def _labels(server: Server) -> list[str]:
    with BlockingHandle.connect(server.uri) as h:
        return [p["label"] for p in h.rpc("sdexec.list")["procs"]]


def test_msgchan_disconnect_reaches_the_server(server: Server) -> None:
    # The process starts a foreground `sleep` through its msgchan and exits;
    # the bridge closes, so the server kills the orphaned foreground process.
    env = {**ENV, "PYTHONPATH": str(REPO), "LABEL": "msgchan-orphan"}
    cmd = command(
        [sys.executable, "-c", EXEC_AND_LEAVE],
        channels=(),
        env=env,
        msgchans=[{"name": "MC", "uri": server.uri}],
    )
    r = run(server, cmd, close=False)
    assert (r.status, r.out("stdout")) == (0, b"started\n"), r.out("stderr")
    deadline = time.monotonic() + 15
    while "msgchan-orphan" in _labels(server) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "msgchan-orphan" not in _labels(server)


def test_background_process_makes_an_rpc_through_its_msgchan(server: Server) -> None:
    snippet = (
        "import os; from sdexec.client.blocking import BlockingHandle as H; "
        "assert H.connect(os.environ['MC']).rpc('attr.get', {'name': 'size'})['value'] == '1'"
    )
    cmd = command(
        [sys.executable, "-c", snippet],
        channels=(),
        env={**ENV, "PYTHONPATH": str(REPO)},
        msgchans=[{"name": "MC", "uri": server.uri}],
    )
    cmd["label"] = "msgchan-bg"
    with BlockingHandle.connect(server.uri) as h:
        assert h.rpc("sdexec.exec", {"cmd": cmd, "flags": 16})["type"] == "started"
        assert h.rpc("sdexec.wait", {"pid": 0, "label": "msgchan-bg"})["status"] == 0


def test_msgchan_variable_is_a_local_uri_and_flux_core_spelling_works(server: Server) -> None:
    cmd = command(["sh", "-c", 'echo "$MC"'], channels=())
    cmd["msgchan"] = [{"name": "MC", "uri": server.uri}]
    uri = run(server, cmd, close=False).out("stdout").decode().strip()
    assert uri.startswith("local://")
    assert uri != server.uri


def test_msgchan_socket_is_removed_when_the_process_is_reaped(server: Server) -> None:
    cmd = command(
        ["sh", "-c", 'echo "$MC"'], channels=(), msgchans=[{"name": "MC", "uri": server.uri}]
    )
    path = run(server, cmd, close=False).out("stdout").decode().strip().removeprefix("local://")
    deadline = time.monotonic() + 5
    while os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not os.path.exists(path)


def test_msgchan_to_a_non_local_uri_is_einval(server: Server) -> None:
    cmd = command(["true"], channels=(), msgchans=[{"name": "MC", "uri": "tcp://1.2.3.4:5"}])
    with pytest.raises(RemoteError) as err:
        run(server, cmd)
    assert err.value.errno == errno.EINVAL


# --- cost --------------------------------------------------------------------------------


def _exec_seconds(h: BlockingHandle, cmd: dict[str, Any]) -> float:
    t0 = time.perf_counter()
    tag = h.request("sdexec.exec", {"cmd": cmd, "flags": STDOUT | STDERR}, streaming=True)
    while True:
        for msg in h.receive():
            if msg.matchtag == tag and msg.errnum == errno.ENODATA:
                return time.perf_counter() - t0
            if msg.matchtag == tag and msg.errnum:
                raise RemoteError(msg.errnum, msg.error_text())


def _run_helper(argv: list[str], names: list[str]) -> tuple[int, bytes, bytes, list[bytes]]:
    """Run the helper as the unit would, with a control message on stdin."""
    ctl_mine, ctl_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pairs = [socket.socketpair() for _ in names]
    r, w = os.pipe()
    header = channel_exec.encode_header(names, True)
    socket.send_fds(ctl_mine, [header], [r, *(far.fileno() for _, far in pairs)])
    os.close(r)
    ctl_mine.close()
    for _, far in pairs:
        far.close()
    proc = subprocess.Popen(
        channels.helper_argv(argv[0], argv[0], argv[1:]),
        stdin=ctl_theirs.fileno(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
    )
    ctl_theirs.close()
    os.write(w, b"real stdin")
    os.close(w)
    out, err = proc.communicate(timeout=30)
    received = []
    for mine, _ in pairs:
        received.append(mine.recv(1000))
        mine.close()
    return proc.returncode, out, err, received


def test_helper_puts_the_real_stdin_on_fd_0_and_channels_from_fd_3() -> None:
    script = 'cat; echo " $A $B"; echo to-a >&"$A"; echo to-b >&"$B"'
    code, out, _, received = _run_helper(["/bin/sh", "-c", script], ["A", "B"])
    assert (code, out) == (0, b"real stdin 3 4\n")
    assert received == [b"to-a\n", b"to-b\n"]


def test_helper_leaves_no_other_fd_open() -> None:
    _, out, _, _ = _run_helper(["/bin/sh", "-c", "ls /proc/$$/fd"], ["A"])
    assert sorted(int(n) for n in out.split()) == [0, 1, 2, 3]


def test_helper_reports_a_command_that_cannot_be_run_with_127() -> None:
    code, _, err, _ = _run_helper(["/nonexistent/cmd"], [])
    assert code == 127
    assert b"/nonexistent/cmd: No such file or directory" in err


def test_helper_without_a_control_message_fails_with_127() -> None:
    argv = channels.helper_argv("/bin/true", "true", [])
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    assert r.returncode == 127
    assert b"exec helper" in r.stderr
