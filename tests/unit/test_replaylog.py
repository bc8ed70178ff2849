"""The replay log: accepted signatures stay refused across restarts, for their TTL."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from sdexec.base.errors import SdexecError
from sdexec.security.replay import ReplayCache
from sdexec.security.replaylog import ReplayLog

TTL = 60.0


def test_a_signature_accepted_before_a_restart_is_refused_after_it(tmp_path: Path) -> None:
    log = ReplayLog(tmp_path / "replay.log", TTL)
    log.load(ReplayCache(), now=1000.0)
    log.append(b"\x01" * 32, issued=1000.0, now=1000.0)
    log.close()
    cache = ReplayCache()
    assert ReplayLog(tmp_path / "replay.log", TTL).load(cache, now=1030.0) == 1
    with pytest.raises(SdexecError) as info:
        cache.accept(b"\x01" * 32, 1061.0, 1030.0)
    assert info.value.errno == errno.EPERM


def test_expired_entries_and_torn_lines_are_dropped(tmp_path: Path) -> None:
    path = tmp_path / "replay.log"
    path.write_bytes(b"aa" * 32 + b" 100.0\n" + b"bb" * 32 + b" 1000.0\n" + b"cc" * 10)
    cache = ReplayCache()
    assert ReplayLog(path, TTL).load(cache, now=1000.0) == 1
    assert bytes.fromhex("bb" * 32) in cache and bytes.fromhex("aa" * 32) not in cache
    assert path.read_bytes() == b"bb" * 32 + b" 1000.000000\n"  # rewritten, compacted


def test_the_file_is_private(tmp_path: Path) -> None:
    log = ReplayLog(tmp_path / "replay.log", TTL)
    log.load(ReplayCache(), now=0.0)
    log.append(b"\x02" * 32, 0.0, 0.0)
    log.close()
    assert (tmp_path / "replay.log").stat().st_mode & 0o777 == 0o600
