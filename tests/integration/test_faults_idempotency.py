"""Exec with an idempotency key: a retry after a lost connection starts nothing twice (item 12).

Real server, real private systemd.  200 background launches, each with its
own key (``SDEXEC_IDEMPOTENCY_KEY``) and no label, are cut off by a SIGKILL
of the server; the client retries every one of them.  What must hold: one
unit per key, each retry answered with the pid of the process its first
try started (or, for a launch the crash cut off mid-way, the reason it
cannot tell), and a foreground exec's retry is told what became of it.
"""

from __future__ import annotations

import errno
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from faults import assert_no_traceback, eventually
from rpc import Raw, exec_payload
from servers import OwnServer, own_manager, own_server

KEY = "SDEXEC_IDEMPOTENCY_KEY"


@pytest.fixture
def own(workdir: Path) -> Iterator[OwnServer]:
    with own_manager(workdir) as manager, own_server(manager, workdir) as srv:
        yield srv
        assert_no_traceback(srv)


def launch(key: str) -> dict[str, object]:
    return exec_payload(["sleep", "300"], flags=0, opts={KEY: key})


def test_retried_launches_after_a_server_sigkill_start_each_command_once(own: OwnServer) -> None:
    keys = [f"job-{i}" for i in range(200)]
    raw = Raw(own.socket_path)
    tags = [raw.send("sdexec.exec", launch(k)) for k in keys]
    first_pids = {}
    for key, tag in list(zip(keys, tags, strict=True))[:50]:
        m = raw.recv(tag)
        assert m.json()["type"] == "started"
        first_pids[key] = m.json()["pid"]
    own.kill()  # most launches are in flight, or answered but never read
    raw.close()
    own.start()
    raw = Raw(own.socket_path)
    answers = {k: raw.rpc("sdexec.exec", launch(k)) for k in keys}
    raw.close()
    started = {k: m.json()["pid"] for k, m in answers.items() if not m.errnum}
    unsure = [k for k, m in answers.items() if m.errnum]
    for k in unsure:
        assert answers[k].errnum == errno.EEXIST
        assert "may have run" in (answers[k].error_text() or "")
    assert all(started[k] == pid for k, pid in first_pids.items())  # the same processes
    units = own.units()
    assert len(units) == len(started) <= 200  # one unit per key: nothing started twice
    ps = own.sdexec("ps", "-o", "{pid}").stdout.split()[1:]
    assert sorted(int(p) for p in ps) == sorted(started.values())
    again = Raw(own.socket_path)
    repeats = [again.rpc("sdexec.exec", launch(k)).json() for k in list(started)[:10]]
    again.close()
    assert all(r["type"] == "started" and r["repeat"] for r in repeats)
    assert len(own.units()) == len(units)
    for unit in units:
        own.systemctl("stop", unit)
    print(
        f"\nFIGURE 200 keyed launches cut off by SIGKILL, then retried: {len(started)} started "
        f"once each, {len(unsure)} answered 'may have run', 0 started twice"
    )


def test_a_foreground_retry_is_told_what_became_of_the_first_try(own: OwnServer) -> None:
    cli = own.popen(
        "exec", "--setopt", f"{KEY}=fg-once", "--", "sh", "-c", "echo up; exec sleep 300",
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert cli.stdout is not None
    assert cli.stdout.readline() == b"up\n"
    cli.send_signal(signal.SIGKILL)  # the client is lost; its command is stopped (RFC 42)
    cli.wait()
    assert eventually(lambda: own.units() == [])
    retry = own.sdexec("exec", "--setopt", f"{KEY}=fg-once", "--", "sh", "-c", "echo twice")
    assert retry.returncode != 0
    assert b"was started already" in retry.stderr and b"not started again" in retry.stderr
    assert b"twice" not in retry.stdout
    bad = own.sdexec("exec", "--setopt", f"{KEY}=has space", "--", "true")
    assert bad.returncode != 0 and b"SDEXEC_IDEMPOTENCY_KEY must be" in bad.stderr
