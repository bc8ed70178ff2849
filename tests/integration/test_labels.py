"""Labels are checked at exec: a label that would lose output, or could not be named, is EINVAL."""

from __future__ import annotations

import errno
import itertools
import time

import pytest
from conftest import Server
from rpc import Raw, exec_payload

from sdexec.proto.labels import LABEL_MAX

_n = itertools.count()


@pytest.mark.parametrize(
    "label", ["b" * 256, "c" * 255, "new\nline", "54321", "two words"], ids=repr
)
def test_exec_with_a_bad_label_is_einval_and_starts_nothing(server: Server, label: str) -> None:
    before = set(server.units())
    raw = Raw(server.socket_path)
    m = raw.rpc("sdexec.exec", exec_payload(["echo", "lost"], flags=0, label=label))
    raw.close()
    assert m.errnum == errno.EINVAL
    assert "label" in m.payload.decode()
    assert set(server.units()) == before


def test_the_cli_says_what_is_wrong_with_a_label(server: Server) -> None:
    r = server.sdexec("exec", "--bg", "--label", "x" * 300, "--", "true")
    assert r.returncode == 2
    assert f"at most {LABEL_MAX} bytes".encode() in r.stderr


def test_the_longest_label_keeps_its_output(server: Server) -> None:
    stem = f"long{next(_n)}-"
    label = stem + "l" * (LABEL_MAX - len(stem))
    assert len(label.encode()) == LABEL_MAX
    r = server.sdexec("exec", "--bg", "--waitable", "--label", label, "--", "echo", "kept")
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + 10
    while True:
        logs = server.sdexec("logs", label)
        if logs.stdout == b"kept\n" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert logs.stdout == b"kept\n", logs.stderr
    assert server.sdexec("wait", label).returncode == 0
