"""Nothing lost across server restarts: re-adoption, replayable output, the journal, logs."""

from __future__ import annotations

import itertools
import json
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Server
from rpc import Raw, exec_payload

from sdexec.systemd.private import PrivateManager

WRITER = (
    'i=0; while [ $i -lt {n} ]; do i=$((i+1)); echo "{label} $i $(date +%s%N)"; sleep 0.01; done'
)


@pytest.fixture
def own(workdir: Path, request: pytest.FixtureRequest) -> Iterator[Server]:
    """A server with its own private manager, free to be killed and restarted."""
    name = f"rs{abs(hash(request.node.name)) % 10_000}"
    state = workdir / f"{name}-state"
    manager = PrivateManager(state)
    manager.start()
    srv = Server(manager, str(workdir / f"{name}.sock"), state, workdir / f"{name}.log")
    extra = getattr(request, "param", [])
    srv.extra_args = list(extra)
    srv.start()
    try:
        yield srv
    finally:
        if srv.proc is not None:
            srv.stop()
        for unit in srv.units():
            srv.systemctl("stop", unit)
        manager.stop()
        shutil.rmtree(state, ignore_errors=True)


def kill_and_restart(srv: Server, down: float = 2.0) -> None:
    srv.stop(signal.SIGKILL)
    time.sleep(down)
    srv.start()


def test_writers_survive_sigkill_of_the_server_and_replay_exactly(own: Server) -> None:
    n = 400
    labels = [f"writer{i}" for i in range(3)]
    for lab in labels:
        r = own.sdexec(
            "exec",
            "--bg",
            "--waitable",
            "--label",
            lab,
            "--",
            "sh",
            "-c",
            WRITER.format(n=n, label=lab),
        )
        assert r.returncode == 0, r.stderr
    time.sleep(1.0)
    kill_and_restart(own)
    ps = own.sdexec("ps", "-o", "{label} {state}").stdout.decode()
    for lab in labels:
        assert f"{lab} " in ps
    for lab in labels:
        r = own.sdexec("attach", lab, timeout=60)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.decode().splitlines()
        assert [int(line.split()[1]) for line in lines] == list(range(1, n + 1))
        assert all(line.split()[0] == lab for line in lines)
        stamps = [int(line.split()[2]) for line in lines]
        worst_gap = max(b - a for a, b in itertools.pairwise(stamps)) / 1e9
        # A writer blocked on the dead server would show a gap as long as the
        # server was down (2 s); scheduling noise on a loaded machine stays below.
        assert worst_gap < 1.9, f"{lab} stalled for {worst_gap:.2f} s"


def test_waitable_that_finished_while_down_reports_its_status_once(own: Server) -> None:
    assert (
        own.sdexec(
            "exec", "--bg", "--waitable", "--label", "fin", "--", "sh", "-c", "sleep 0.5; exit 6"
        ).returncode
        == 0
    )
    own.stop(signal.SIGKILL)
    time.sleep(1.5)
    own.start()
    assert own.sdexec("wait", "fin").returncode == 6
    again = own.sdexec("wait", "fin")
    assert again.returncode != 0
    assert b"has ended (exit 6) and was reaped" in again.stderr


def test_waitable_while_connected_is_owed_to_nobody_after_a_restart(own: Server) -> None:
    """SDEXEC_WAITABLE_WHILE_CONNECTED: the connection went with the old server,
    so a process that finished meanwhile, and one that finishes later, are
    forgotten (no Z entry), not kept for a wait."""
    scoped = {"SDEXEC_WAITABLE_WHILE_CONNECTED": "yes"}
    raw = Raw(own.socket_path)
    try:
        for label, script in (("gone-fin", "exit 6"), ("gone-run", "sleep 3; exit 7")):
            started = raw.rpc("sdexec.exec", exec_payload(["sh", "-c", script], 16 | 1 | 2,
                                                          label, scoped))  # fmt: skip
            assert started.json()["type"] == "started", started.error_text()
        own.stop(signal.SIGKILL)
    finally:
        raw.close()
    time.sleep(1.0)
    own.start()
    deadline = time.monotonic() + 30
    while any(lab in own.sdexec("ps", "-o", "{label}").stdout.decode()
              for lab in ("gone-fin", "gone-run")):  # fmt: skip
        assert time.monotonic() < deadline, own.sdexec("ps").stdout.decode()
        time.sleep(0.1)
    for label in ("gone-fin", "gone-run"):
        r = own.sdexec("wait", label)
        assert r.returncode != 0 and b"reaped" in r.stderr, r.stderr
    assert not [u for u in own.units() if "gone-" in u]


def test_labels_stay_unique_across_restarts(own: Server) -> None:
    assert own.sdexec("exec", "--bg", "--label", "uniq", "--", "sleep", "60").returncode == 0
    own.stop(signal.SIGTERM)
    own.start()
    dup = own.sdexec("exec", "--bg", "--label", "uniq", "--", "true")
    assert dup.returncode != 0
    assert b"in use" in dup.stderr
    assert own.sdexec("kill", "-s", "9", "uniq").returncode == 0


def test_kill_and_wait_by_label_after_graceful_restart(own: Server) -> None:
    assert (
        own.sdexec("exec", "--bg", "--waitable", "--label", "kw", "--", "sleep", "60").returncode
        == 0
    )
    own.stop(signal.SIGTERM)
    own.start()
    assert own.sdexec("kill", "-s", "15", "kw").returncode == 0
    assert own.sdexec("wait", "kw").returncode == 143


def test_private_manager_is_reused_not_restarted(own: Server) -> None:
    pid = own.manager.pid()
    assert pid is not None
    assert own.sdexec("exec", "--bg", "--label", "keep", "--", "sleep", "60").returncode == 0
    kill_and_restart(own, down=0.2)
    assert own.manager.pid() == pid
    assert own.sdexec("kill", "-s", "9", "keep").returncode == 0


def test_logs_and_journalctl_show_the_same_lines(own: Server) -> None:
    assert (
        own.sdexec(
            "exec",
            "--bg",
            "--waitable",
            "--label",
            "lg",
            "--",
            "sh",
            "-c",
            "for i in 1 2 3; do echo out $i; echo err $i >&2; done",
        ).returncode
        == 0
    )
    time.sleep(1.0)
    logs = own.sdexec("logs", "lg")
    assert logs.returncode == 0
    assert logs.stdout == b"out 1\nout 2\nout 3\n"
    assert logs.stderr == b"err 1\nerr 2\nerr 3\n"
    jc = subprocess.run(
        [
            "journalctl",
            "--directory",
            str(own.manager.journal_dir),
            "-t",
            "lg",
            "-o",
            "cat",
            "--no-pager",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert sorted(jc.stdout.splitlines()) == sorted(
        (logs.stdout + logs.stderr).decode().splitlines()
    )
    tail = own.sdexec("logs", "--tail", "2", "lg")
    assert len((tail.stdout + tail.stderr).splitlines()) == 2
    as_json = own.sdexec("logs", "--json", "lg")
    records = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert {r["stream"] for r in records} == {"stdout", "stderr"}
    assert own.sdexec("wait", "lg").returncode == 0


@pytest.mark.parametrize("own", [["--on-shutdown", "stop"]], indirect=True)
def test_on_shutdown_stop_leaves_no_unit(own: Server) -> None:
    for lab in ("s1", "s2"):
        assert own.sdexec("exec", "--bg", "--label", lab, "--", "sleep", "60").returncode == 0
    assert len(own.units()) == 2
    assert own.stop(signal.SIGTERM) == 0
    deadline = time.monotonic() + 10
    while own.manager.running() and own.units() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not own.manager.running() or own.units() == []


def test_streaming_clients_get_enosys_at_shutdown(own: Server) -> None:
    cli = own.popen(
        "exec",
        "--",
        "sh",
        "-c",
        "echo ready; exec sleep 60",
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert cli.stdout is not None
    assert cli.stdout.readline() == b"ready\n"
    own.stop(signal.SIGTERM)
    _out, err = cli.communicate(timeout=20)
    assert b"shutting down" in err
    assert cli.returncode != 0


def test_lifecycle_events_are_in_the_json_log(own: Server) -> None:
    assert (
        own.sdexec(
            "exec", "--bg", "--waitable", "--label", "ev", "--", "sh", "-c", "sleep 0.5; exit 2"
        ).returncode
        == 0
    )
    assert own.sdexec("attach", "ev").returncode == 2
    own.sdexec("exec", "--bg", "--label", "ev2", "--", "sleep", "60")
    own.sdexec("kill", "-s", "9", "ev2")
    own.sdexec("wait", "no-such-thing")
    own.stop(signal.SIGKILL)
    own.start()
    events: dict[str, list[dict[str, object]]] = {}
    for line in own.log_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        events.setdefault(str(rec.get("event")), []).append(rec)
    exec_ev = next(e for e in events["exec"] if e.get("label") == "ev")
    assert exec_ev["argv"] == ["sh", "-c", "sleep 0.5; exit 2"] and exec_ev["uid"] == 0
    assert any(e.get("label") == "ev" and e.get("pid") for e in events["started"])
    assert any(e.get("label") == "ev" and e.get("exit_code") == 2 for e in events["finished"])
    assert any(e.get("label") == "ev2" and e.get("signum") == 9 for e in events["kill"])
    assert any(e.get("label") == "ev2" and e.get("signal") == "SIGKILL" for e in events["finished"])
    assert not any("status" in e for e in events["finished"])  # not the raw wait status
    assert any(e.get("label") == "ev" for e in events["attach"])
    assert any(e.get("topic") == "sdexec.wait" for e in events["request failed"])
    assert "listening" in events


def _logs_of(srv: Server, lab: str) -> bytes:
    deadline = time.monotonic() + 10
    last = None
    while time.monotonic() < deadline:
        out = srv.sdexec("logs", lab).stdout
        if out and out == last:
            return out
        last = out
        time.sleep(0.2)
    return last or b""


def test_logs_of_gone_processes_survive_a_restart(own: Server) -> None:
    """Reaped before the restart, or ended while no server ran: logs still finds the output."""
    assert own.sdexec("exec", "--bg", "--label", "hist", "--", "echo", "kept").returncode == 0
    assert _logs_of(own, "hist") == b"kept\n"
    r = own.sdexec("exec", "--bg", "--label", "late", "--", "sh", "-c", "sleep 1; echo later")
    assert r.returncode == 0
    own.stop(signal.SIGKILL)
    time.sleep(2)  # "late" ends while no server runs
    own.start()
    assert _logs_of(own, "hist") == b"kept\n"
    assert _logs_of(own, "late") == b"later\n"


def test_attach_after_a_restart_leaves_no_unknown_child_warning(own: Server) -> None:
    """Readers of adopted processes (attach, logs) are the server's own children,
    reaped by asyncio's child watcher alone: nothing else may reap them."""
    r = own.sdexec(
        "exec", "--bg", "--waitable", "--label", "adopted", "--",
        "sh", "-c", "echo before; sleep 1; echo after",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    r = own.sdexec("exec", "--bg", "--waitable", "--label", "done-before", "--", "echo", "early")
    assert r.returncode == 0, r.stderr
    own.stop(signal.SIGKILL)
    own.start()
    mark = own.log_path.stat().st_size
    att = own.sdexec("attach", "adopted")
    assert (att.returncode, att.stdout) == (0, b"before\nafter\n"), att.stderr
    for _ in range(10):
        assert own.sdexec("attach", "done-before").stdout == b"early\n"
        assert own.sdexec("logs", "adopted").returncode == 0
    assert own.sdexec("wait", "adopted").returncode == 0
    assert own.sdexec("wait", "done-before").returncode == 0
    with open(own.log_path, "rb") as f:
        f.seek(mark)
        text = f.read().decode(errors="replace")
    assert "Unknown child process" not in text
    assert "returncode 255" not in text
