"""The demo's orchestration, with a fake server standing in for ``sdexec serve``.

The fake speaks the real wire protocol (the project's codec) and answers the
demo's requests with canned RFC 42 responses, so this checks the demo's own
logic end to end through the real CLI: start, readiness, each step's checks,
SIGTERM to the server, removal of the temporary directory, and the clean-up
of the background process when a step misbehaves.  No systemd is involved.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from sdexec.cli import demo

FAKE_SERVER = r"""
import asyncio, errno, os, signal, sys
from sdexec.proto.framing import FrameDecoder, encode_frame
from sdexec.proto.message import MsgType

args = sys.argv[1:]
assert args[0] == "serve"
path = args[args.index("--uri") + 1].removeprefix("local://")
wait_status = int(os.environ.get("FAKE_WAIT_STATUS", "15"))
marker = os.environ["FAKE_MARKER"]
procs = {}

def handle(msg, send):
    topic, body = msg.topic, (msg.json() if msg.payload else {})
    with open(marker, "a") as f:
        f.write(topic + "\n")
    if topic == "sdexec.exec" and msg.streaming:
        script = " ".join(body["cmd"]["cmdline"])
        send(msg.response({"type": "started", "pid": 100}))
        if "exit 3" in script:
            send(msg.response({"type": "finished", "status": 3 << 8}))
        else:
            for stream, data in (("stdout", "hello from fakehost\n"), ("stderr", "to stderr\n")):
                io = {"stream": stream, "rank": "0", "data": data}
                send(msg.response({"type": "output", "pid": 100, "io": io}))
            send(msg.response({"type": "finished", "status": 0}))
        send(msg.response(errnum=errno.ENODATA))
    elif topic == "sdexec.exec":
        procs[body["cmd"]["label"]] = "R"
        send(msg.response({"type": "started", "pid": 4242}))
    elif topic == "sdexec.list":
        rows = [{"pid": 4242, "cmd": "sleep", "label": k, "state": v} for k, v in procs.items()]
        send(msg.response({"rank": 0, "procs": rows}))
    elif topic == "sdexec.kill":
        if body.get("label") in procs:
            procs[body["label"]] = "Z"
            send(msg.response({}))
        else:
            send(msg.response(errnum=errno.ENOENT, text="not found"))
    elif topic == "attr.get" and body.get("name") == "security.owner":
        send(msg.response({"value": str(os.getuid()), "flags": 1}))
    elif topic == "sdexec.wait":
        if procs.pop(body.get("label"), None):
            send(msg.response({"status": wait_status}))
        else:
            send(msg.response(errnum=errno.ENOENT, text="not found"))

async def client(reader, writer):
    writer.write(b"\0")
    decoder = FrameDecoder()
    while data := await reader.read(65536):
        for msg in decoder.feed(data):
            if msg.type == MsgType.REQUEST and not msg.noresponse:
                handle(msg, lambda m: writer.write(encode_frame(m)))
    writer.close()

async def main():
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    server = await asyncio.start_unix_server(client, path)
    async with server:
        await stop.wait()
    with open(marker, "a") as f:
        f.write("SIGTERM\n")

asyncio.run(main())
"""


def fixed_mkdtemp(workdir: Path) -> Callable[..., str]:
    """A mkdtemp that makes ``workdir`` (inside pytest's tmp_path, so it can be checked)."""

    def mkdtemp(**kw: object) -> str:
        workdir.mkdir()
        return str(workdir)

    return mkdtemp


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], Path, Path]:
    script = tmp_path / "fake_server.py"
    script.write_text(FAKE_SERVER)
    marker = tmp_path / "marker"
    monkeypatch.setenv("FAKE_MARKER", str(marker))
    workdir = tmp_path / "demo"
    monkeypatch.setattr(tempfile, "mkdtemp", fixed_mkdtemp(workdir))
    return [sys.executable, str(script)], marker, workdir


def test_the_demo_runs_every_step_and_cleans_up(
    fake: tuple[list[str], Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    command, marker, workdir = fake
    assert demo.main(["--systemd", "private"], server_command=command) == 0
    out = capsys.readouterr().out
    assert "$ sdexec exec -- sh -c 'echo hello from $(hostname); echo to stderr >&2'" in out
    assert "$ sdexec kill -s TERM demo-sleep" in out
    assert "UNEXPECTED" not in out
    assert "every step behaved as expected" in out
    topics = marker.read_text().split()
    assert topics[-1] == "SIGTERM"
    assert topics.count("sdexec.wait") == 1
    assert not workdir.exists()


def test_a_misbehaving_step_fails_the_demo_and_still_cleans_up(
    fake: tuple[list[str], Path, Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    command, marker, workdir = fake
    monkeypatch.setenv("FAKE_WAIT_STATUS", "0")
    assert demo.main(["--systemd", "private"], server_command=command) == 1
    captured = capsys.readouterr()
    assert "[UNEXPECTED: exit status 0, expected 143]" in captured.out
    assert "sdexec demo: sdexec wait demo-sleep: exit status 0, expected 143" in captured.err
    topics = marker.read_text().split()
    assert topics[-1] == "SIGTERM"
    assert not workdir.exists()


def test_a_server_that_dies_at_start_fails_the_demo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    workdir = tmp_path / "demo"
    monkeypatch.setattr(tempfile, "mkdtemp", fixed_mkdtemp(workdir))
    command = [sys.executable, "-c", "import sys; print('no systemd here'); sys.exit(3)"]
    assert demo.main(["--systemd", "private"], server_command=command) == 1
    captured = capsys.readouterr()
    assert "the server exited with status 3" in captured.err
    assert "no systemd here" in captured.out  # the server's log is shown
    assert not workdir.exists()


def test_user_bus_detection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DBUS_SESSION_BUS_ADDRESS", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert not demo.has_user_bus()
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", "unix:path=/x")
    assert demo.has_user_bus()
