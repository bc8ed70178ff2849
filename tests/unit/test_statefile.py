"""The server's record of background processes: an append-only log, replayed and compacted."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from sdexec.server import statefile
from sdexec.server.statefile import ProcRecord, StateDir


def rec(n: int, label: str | None = None) -> ProcRecord:
    return ProcRecord(f"sdexec-0-{n}.service", label, ["sleep", str(n)], 16, 0, 1000, f"id{n}")


def lines(state: StateDir) -> list[dict[str, object]]:
    return [json.loads(line) for line in state.log.read_bytes().splitlines()]


def test_records_survive_a_new_reader_in_the_order_saved(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    for n in (3, 1, 2):
        state.save(rec(n, label=f"l{n}"))
    state.remove(rec(1).unit)
    assert StateDir(tmp_path).load_all() == [rec(3, "l3"), rec(2, "l2")]


def test_a_save_appends_one_line_and_a_remove_another(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.load_all()
    state.save(rec(1))
    state.remove(rec(1).unit)
    state.remove("never-saved.service")  # nothing to say about it
    assert [next(iter(e)) for e in lines(state)] == ["save", "remove"]
    assert stat.S_IMODE(state.log.stat().st_mode) == 0o600
    assert StateDir(tmp_path).load_all() == []


def test_reading_compacts_to_the_live_records(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    for n in range(10):
        state.save(rec(n))
    for n in range(9):
        state.remove(rec(n).unit)
    assert len(lines(state)) == 19
    again = StateDir(tmp_path)
    assert again.load_all() == [rec(9)]
    assert lines(again) == [{"save": json.loads(json.dumps(rec(9).__dict__))}]


def test_a_torn_last_line_is_skipped_and_never_glued_to_the_next(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.save(rec(1))
    state.save(rec(2))
    with state.log.open("ab") as f:  # a server killed in the middle of an append
        f.write(b'{"save":{"unit":"sdexec-0-3.ser')
    after = StateDir(tmp_path)
    after.save(rec(4))  # reads (and compacts) before its first append
    assert StateDir(tmp_path).load_all() == [rec(1), rec(2), rec(4)]


def test_foreign_lines_are_dropped(tmp_path: Path) -> None:
    tmp_path.joinpath("procs.log").write_bytes(
        b'not json\n{"save":{"unit":"x"}}\n[1]\n{"other":1}\n'
        + json.dumps({"save": rec(5).__dict__}).encode()
        + b"\n"
    )
    assert StateDir(tmp_path).load_all() == [rec(5)]


def test_the_log_is_compacted_while_it_grows(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.save(rec(0))
    for n in range(1, 3 * statefile._SLACK):
        state.save(rec(n))
        state.remove(rec(n).unit)
    assert len(lines(state)) <= 4 + statefile._SLACK + 1
    assert StateDir(tmp_path).load_all() == [rec(0)]


def test_records_of_the_file_per_unit_layout_are_folded_in(tmp_path: Path) -> None:
    legacy = tmp_path / "procs"
    legacy.mkdir()
    (legacy / f"{rec(7).unit}.json").write_text(json.dumps(rec(7).__dict__))
    (legacy / "bad.json").write_text("{not json")
    state = StateDir(tmp_path)
    assert state.load_all() == [rec(7)]
    assert not legacy.exists()
    assert StateDir(tmp_path).load_all() == [rec(7)]


def test_the_state_directory_holds_the_log_only(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    assert state.load_all() == []
    state.save(rec(1))
    state.close()
    assert os.listdir(tmp_path / "state") == ["procs.log"]


def reaped(n: int, label: str | None = None, pid: int = 0) -> statefile.Reaped:
    return statefile.Reaped(f"sdexec-0-{n}.service", label, f"id{n}", pid or 100 + n, 0, 1000, 1.0)


def test_a_reaped_process_ends_its_record_and_is_remembered(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.save(rec(1, label="job"))
    state.reaped(reaped(1, label="job"))
    again = StateDir(tmp_path)
    assert again.load_all() == []
    assert again.find_reaped(label="job") == reaped(1, label="job")
    assert again.find_reaped(pid=101) == reaped(1, label="job")
    assert again.find_reaped(label="other") is None


def test_the_newest_process_of_a_label_is_found(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    for n in (1, 2, 3):
        state.reaped(reaped(n, label="job" if n < 3 else "x"))
    assert state.find_reaped(label="job") == reaped(2, label="job")
    assert StateDir(tmp_path).find_reaped(label="job") == reaped(2, label="job")


def test_the_history_is_bounded_and_says_what_it_forgot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(statefile, "HISTORY_MAX", 3)
    state = StateDir(tmp_path)
    for n in range(5):
        state.reaped(reaped(n))
    assert [r.unit for r in state.history()] == [reaped(n).unit for n in (2, 3, 4)]
    assert state.evicted == [reaped(0).unit, reaped(1).unit]
    again = StateDir(tmp_path)
    assert [r.unit for r in again.history()] == [reaped(n).unit for n in (2, 3, 4)]
    assert len(lines(again)) == 3  # compacted: the forgotten ones are gone from the file


def test_ranks_sharing_a_state_directory_keep_their_records_apart(tmp_path: Path) -> None:
    zero, one = StateDir(tmp_path), StateDir(tmp_path, rank=1)
    zero.save(rec(1))
    one.save(rec(2))
    assert StateDir(tmp_path).load_all() == [rec(1)]
    assert StateDir(tmp_path, rank=1).load_all() == [rec(2)]
