"""The exec idempotency key: what may be one, and how reaped processes are found by it."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from sdexec.base.errors import SdexecError
from sdexec.proto.rfc42 import KEY_OPTION, parse_exec
from sdexec.server.statefile import Reaped, StateDir


def idempotency_key(opts: dict[str, str]) -> str | None:
    payload = {"cmd": {"cmdline": ["true"], "env": {}, "opts": opts}, "flags": 0}
    return parse_exec(payload).options.key


def test_no_key_is_none() -> None:
    assert idempotency_key({}) is None


@pytest.mark.parametrize("key", ["job-1", "x", "ünï", "a" * 128])
def test_keys_that_are_accepted(key: str) -> None:
    assert idempotency_key({KEY_OPTION: key}) == key


@pytest.mark.parametrize("key", ["", "a b", "a\nb", "a" * 129, "\x00", "é" * 65])
def test_keys_that_are_einval(key: str) -> None:
    with pytest.raises(SdexecError) as info:
        idempotency_key({KEY_OPTION: key})
    assert info.value.errno == errno.EINVAL


def test_reaped_processes_are_found_by_key_and_uid_across_a_reload(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.reaped(Reaped("u1.service", None, "u1", 11, 0, 1000, 1.0, key="k"))
    state.reaped(Reaped("u2.service", None, "u2", 12, None, 1000, 2.0, key="k2", foreground=True))
    state.close()
    again = StateDir(tmp_path)
    got = again.find_key(1000, "k")
    assert got is not None and got.pid == 11
    assert again.find_key(1001, "k") is None  # keys are per uid
    fg = again.find_key(1000, "k2")
    assert fg is not None and fg.foreground
    assert again.find_reaped(pid=12) is None  # a foreground entry is only there for its key
