"""Unit property updates -> lifecycle events (sdexec.systemd.unitstate).

The sequences below are the ones measured on systemd 252: PropertiesChanged
arrives in pairs (Service interface first, then Unit interface), and the start
job's JobRemoved comes either before the end (a normal run) or after it (an
exec failure, or a program that failed before systemd saw the exec).
"""

from __future__ import annotations

import errno
import os
import signal
from typing import Any

import pytest

from sdexec.systemd.unitstate import (
    CLD_DUMPED,
    CLD_EXITED,
    CLD_KILLED,
    Ambiguous,
    Event,
    ExecFailed,
    Finished,
    Phase,
    Started,
    UnitTracker,
    wait_status,
)

PID = 4242


def pair(tracker: UnitTracker, active: str, sub: str, **service: Any) -> list[Event]:
    """Feed one PropertiesChanged pair: Service interface, then Unit interface."""
    events = tracker.service_changed(service)
    events += tracker.unit_changed({"ActiveState": active, "SubState": sub})
    return events


def early_dead(tracker: UnitTracker) -> list[Event]:
    """The first pair systemd sends: already inactive/dead, before the process ran."""
    return pair(
        tracker,
        "inactive",
        "dead",
        ExecMainPID=0,
        ExecMainCode=0,
        ExecMainStatus=0,
        Result="success",
    )


def activating(tracker: UnitTracker) -> list[Event]:
    return pair(tracker, "activating", "start", ExecMainPID=PID)


def running(tracker: UnitTracker) -> list[Event]:
    """A tracker that saw a normal start (JobRemoved done) and reported Started."""
    assert early_dead(tracker) == []
    assert activating(tracker) == []
    assert pair(tracker, "active", "running") == []
    assert tracker.job_removed("done") == [Started(PID)]
    return []


def failed_before_job(tracker: UnitTracker, code: int, status: int) -> list[Event]:
    """The unit fails (failed/failed) before its start job is removed."""
    early_dead(tracker)
    activating(tracker)
    return pair(
        tracker, "failed", "failed", ExecMainCode=code, ExecMainStatus=status, Result="exit-code"
    )


# --- the measured sequences ----------------------------------------------------------


def test_first_inactive_dead_pair_is_not_an_end() -> None:
    tracker = UnitTracker()
    assert early_dead(tracker) == []
    assert tracker.phase is Phase.STARTING


def test_activating_and_running_report_nothing_before_the_job_is_done() -> None:
    tracker = UnitTracker()
    early_dead(tracker)
    assert activating(tracker) == []
    assert pair(tracker, "active", "running") == []


def test_job_removed_done_reports_started_with_the_main_pid() -> None:
    tracker = UnitTracker()
    early_dead(tracker)
    activating(tracker)
    pair(tracker, "active", "running")
    assert tracker.job_removed("done") == [Started(PID)]
    assert tracker.phase is Phase.RUNNING


def test_bin_true_sequence_ends_with_finished_status_zero() -> None:
    tracker = UnitTracker()
    running(tracker)
    events = pair(tracker, "inactive", "dead", ExecMainCode=CLD_EXITED, ExecMainStatus=0)
    assert events == [Finished(PID, 0)]
    assert tracker.phase is Phase.DONE


def test_exit_code_is_shifted_into_the_wait_status() -> None:
    tracker = UnitTracker()
    running(tracker)
    events = pair(tracker, "failed", "failed", ExecMainCode=CLD_EXITED, ExecMainStatus=3)
    assert events == [Finished(PID, 3 << 8)]


def test_program_that_exits_203_after_a_done_job_is_a_normal_finish() -> None:
    tracker = UnitTracker()
    running(tracker)
    events = pair(tracker, "failed", "failed", ExecMainCode=CLD_EXITED, ExecMainStatus=203)
    assert events == [Finished(PID, 203 << 8)]


def test_missing_executable_is_held_until_the_job_is_removed() -> None:
    tracker = UnitTracker()
    assert failed_before_job(tracker, CLD_EXITED, 203) == []
    assert tracker.phase is Phase.STARTING


def test_missing_executable_then_job_failed_is_ambiguous() -> None:
    tracker = UnitTracker()
    failed_before_job(tracker, CLD_EXITED, 203)
    assert tracker.job_removed("failed") == [Ambiguous(Finished(PID, 203 << 8))]
    assert tracker.phase is Phase.DONE


@pytest.mark.parametrize("status", [200, 203, 217, 243])
def test_systemd_range_exit_with_failed_job_is_ambiguous(status: int) -> None:
    tracker = UnitTracker()
    failed_before_job(tracker, CLD_EXITED, status)
    assert tracker.job_removed("failed") == [Ambiguous(Finished(PID, status << 8))]


@pytest.mark.parametrize("status", [1, 3, 127, 199, 244, 255])
def test_ordinary_exit_code_with_failed_job_is_started_and_finished(status: int) -> None:
    tracker = UnitTracker()
    failed_before_job(tracker, CLD_EXITED, status)
    assert tracker.job_removed("failed") == [Started(PID), Finished(PID, status << 8)]


def test_fast_kill_with_failed_job_is_started_and_finished() -> None:
    tracker = UnitTracker()
    failed_before_job(tracker, CLD_KILLED, signal.SIGKILL)
    assert tracker.job_removed("failed") == [Started(PID), Finished(PID, signal.SIGKILL)]


def test_fast_core_dump_with_failed_job_is_started_and_finished() -> None:
    tracker = UnitTracker()
    failed_before_job(tracker, CLD_DUMPED, signal.SIGSEGV)
    assert tracker.job_removed("failed") == [Started(PID), Finished(PID, 139)]


def test_failed_job_without_any_process_end_is_an_exec_failure() -> None:
    tracker = UnitTracker()
    early_dead(tracker)
    activating(tracker)
    events = tracker.job_removed("failed")
    assert len(events) == 1
    assert isinstance(events[0], ExecFailed)
    assert events[0].errnum == errno.EIO
    assert "failed" in events[0].message


def test_failed_unit_without_exec_main_code_is_an_exec_failure() -> None:
    # The unit failed before any process ran (ExecMainCode still 0).
    tracker = UnitTracker()
    early_dead(tracker)
    assert pair(tracker, "failed", "failed", Result="resources") == []
    assert isinstance(tracker.job_removed("failed")[0], ExecFailed)


@pytest.mark.parametrize("result", ["canceled", "timeout", "dependency"])
def test_other_job_results_without_an_end_are_exec_failures(result: str) -> None:
    tracker = UnitTracker()
    early_dead(tracker)
    events = tracker.job_removed(result)
    assert [type(ev) for ev in events] == [ExecFailed]
    assert isinstance(events[0], ExecFailed)
    assert result in events[0].message


# --- held finish released by JobRemoved done ---------------------------------------------


def test_finish_before_job_done_is_held() -> None:
    tracker = UnitTracker()
    early_dead(tracker)
    activating(tracker)
    assert pair(tracker, "inactive", "dead", ExecMainCode=CLD_EXITED, ExecMainStatus=0) == []


def test_held_finish_is_released_after_started_by_job_done() -> None:
    tracker = UnitTracker()
    early_dead(tracker)
    activating(tracker)
    pair(tracker, "inactive", "dead", ExecMainCode=CLD_EXITED, ExecMainStatus=0)
    assert tracker.job_removed("done") == [Started(PID), Finished(PID, 0)]
    assert tracker.phase is Phase.DONE


def test_held_exit_in_systemd_range_released_by_job_done_is_a_normal_finish() -> None:
    # JobRemoved "done" means the exec happened: 203 is then the program's own code.
    tracker = UnitTracker()
    failed_before_job(tracker, CLD_EXITED, 203)
    assert tracker.job_removed("done") == [Started(PID), Finished(PID, 203 << 8)]


# --- RemainAfterExit ---------------------------------------------------------------------


def test_substate_exited_while_active_is_an_end() -> None:
    tracker = UnitTracker()
    running(tracker)
    events = pair(tracker, "active", "exited", ExecMainCode=CLD_EXITED, ExecMainStatus=7)
    assert events == [Finished(PID, 7 << 8)]


def test_remain_after_exit_end_is_reported_once() -> None:
    tracker = UnitTracker()
    running(tracker)
    pair(tracker, "active", "exited", ExecMainCode=CLD_EXITED, ExecMainStatus=0)
    assert pair(tracker, "deactivating", "stop") == []
    assert pair(tracker, "inactive", "dead") == []


# --- after the end ---------------------------------------------------------------------------


def test_nothing_is_reported_after_the_end() -> None:
    tracker = UnitTracker()
    running(tracker)
    pair(tracker, "inactive", "dead", ExecMainCode=CLD_EXITED, ExecMainStatus=0)
    assert pair(tracker, "failed", "failed", ExecMainCode=CLD_KILLED, ExecMainStatus=9) == []
    assert tracker.job_removed("done") == []


def test_second_job_removed_is_ignored() -> None:
    tracker = UnitTracker()
    running(tracker)
    assert tracker.job_removed("done") == []
    assert tracker.job_removed("failed") == []


def test_zero_pid_update_does_not_erase_the_known_pid() -> None:
    tracker = UnitTracker()
    early_dead(tracker)
    activating(tracker)
    tracker.service_changed({"ExecMainPID": 0})
    assert tracker.job_removed("done") == [Started(PID)]


def test_service_changed_never_reports_an_event_by_itself() -> None:
    tracker = UnitTracker()
    running(tracker)
    assert tracker.service_changed({"ExecMainCode": CLD_EXITED, "ExecMainStatus": 0}) == []


# --- adopt (re-attaching after a server restart) ------------------------------------------


def test_adopt_running_unit_reports_started() -> None:
    tracker = UnitTracker()
    props = {
        "ExecMainPID": 77,
        "ExecMainCode": 0,
        "ExecMainStatus": 0,
        "Result": "success",
        "ActiveState": "active",
        "SubState": "running",
    }
    assert tracker.adopt(props) == [Started(77)]
    assert tracker.phase is Phase.RUNNING


def test_adopted_running_unit_reports_its_later_finish() -> None:
    tracker = UnitTracker()
    tracker.adopt({"ExecMainPID": 77, "ActiveState": "active", "SubState": "running"})
    events = pair(tracker, "inactive", "dead", ExecMainCode=CLD_KILLED, ExecMainStatus=15)
    assert events == [Finished(77, 15)]


def test_adopt_finished_unit_reports_started_and_finished() -> None:
    tracker = UnitTracker()
    props = {
        "ExecMainPID": 77,
        "ExecMainCode": CLD_EXITED,
        "ExecMainStatus": 2,
        "ActiveState": "failed",
        "SubState": "failed",
    }
    assert tracker.adopt(props) == [Started(77), Finished(77, 2 << 8)]
    assert tracker.phase is Phase.DONE


def test_adopt_remain_after_exit_unit_reports_finished() -> None:
    tracker = UnitTracker()
    props = {
        "ExecMainPID": 78,
        "ExecMainCode": CLD_EXITED,
        "ExecMainStatus": 0,
        "ActiveState": "active",
        "SubState": "exited",
    }
    assert tracker.adopt(props) == [Started(78), Finished(78, 0)]


def test_adopted_unit_ignores_job_removed() -> None:
    tracker = UnitTracker()
    tracker.adopt({"ExecMainPID": 77, "ActiveState": "active", "SubState": "running"})
    assert tracker.job_removed("failed") == []


# --- wait status ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        (CLD_EXITED, 0, 0),
        (CLD_EXITED, 1, 256),
        (CLD_EXITED, 3, 768),
        (CLD_EXITED, 203, 203 << 8),
        (CLD_EXITED, 255, 0xFF00),
        (CLD_KILLED, signal.SIGKILL, 9),
        (CLD_KILLED, signal.SIGTERM, 15),
        (CLD_KILLED, signal.SIGINT, 2),
        (CLD_DUMPED, signal.SIGSEGV, 139),
        (CLD_DUMPED, signal.SIGABRT, 134),
        (CLD_DUMPED, signal.SIGQUIT, 131),
    ],
)
def test_wait_status_table(code: int, status: int, expected: int) -> None:
    assert wait_status(code, status) == expected


def test_sigsegv_core_dump_is_139() -> None:
    assert wait_status(CLD_DUMPED, signal.SIGSEGV) == signal.SIGSEGV | 0x80 == 139


@pytest.mark.parametrize("code", [0, 4, 5, 6])
def test_wait_status_is_none_for_codes_that_are_not_an_end(code: int) -> None:
    # 0: not run yet; 4/5/6: CLD_TRAPPED, CLD_STOPPED, CLD_CONTINUED.
    assert wait_status(code, 0) is None


@pytest.mark.parametrize(
    ("code", "status"), [(CLD_EXITED, 0), (CLD_EXITED, 42), (CLD_KILLED, 9), (CLD_DUMPED, 11)]
)
def test_wait_status_decodes_with_the_os_wait_macros(code: int, status: int) -> None:
    ws = wait_status(code, status)
    assert ws is not None
    if code == CLD_EXITED:
        assert os.WIFEXITED(ws)
        assert os.WEXITSTATUS(ws) == status
    else:
        assert os.WIFSIGNALED(ws)
        assert os.WTERMSIG(ws) == status
        assert os.WCOREDUMP(ws) is (code == CLD_DUMPED)


def test_an_oom_kill_is_a_sigkill_with_its_reason() -> None:
    t = UnitTracker()
    running(t)
    events = pair(
        t, "failed", "failed", ExecMainCode=CLD_KILLED, ExecMainStatus=9, Result="oom-kill"
    )
    assert events == [Finished(PID, signal.SIGKILL, "oom-kill")]


@pytest.mark.parametrize("result", ["signal", "success"])
def test_a_result_the_status_tells_gives_no_reason(result: str) -> None:
    t = UnitTracker()
    running(t)
    events = pair(t, "failed", "failed", ExecMainCode=CLD_KILLED, ExecMainStatus=9, Result=result)
    assert events == [Finished(PID, signal.SIGKILL)]
