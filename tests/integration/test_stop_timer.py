"""SDEXEC_STOP_TIMER_SEC: a unit that will not stop is signalled, then given up (EDEADLK)."""

from __future__ import annotations

import time

from conftest import Server

UNIT = "sdexec-stop-timer-test.service"


def test_unit_that_will_not_stop_is_given_up_with_edeadlk(server: Server) -> None:
    # The main process ends at once; a child that ignores SIGTERM and SIGUSR1
    # keeps the unit stopping (deactivating) for ever.
    stubborn = (
        "python3 -c 'import signal, time; signal.signal(15, signal.SIG_IGN); "
        "signal.signal(10, signal.SIG_IGN); time.sleep(60)' >/dev/null 2>&1 </dev/null & "
        "sleep 0.5; exit 0"
    )
    try:
        r = server.sdexec(
            "exec",
            "--setopt",
            f"SDEXEC_NAME={UNIT}",
            "--setopt",
            "SDEXEC_STOP_TIMER_SEC=1",
            "--setopt",
            "SDEXEC_STOP_TIMER_SIGNAL=10",
            "-p",
            "TimeoutStopSec=infinity",
            "--",
            "sh",
            "-c",
            stubborn,
            timeout=60,
        )
        assert r.returncode == 125, (r.returncode, r.stderr)
        assert b"SIGKILL timeout, unit may still be active" in r.stderr
        log = server.log_text()
        assert "stop timeout, signalling" in log and "abandoning unit after stop timeout" in log
        state = server.systemctl("show", "-p", "ActiveState", "--value", UNIT).stdout.strip()
        assert state == "deactivating"  # given up, not stopped: that is the point of EDEADLK
    finally:
        server.systemctl("kill", "--signal=KILL", UNIT)
        deadline = time.monotonic() + 30
        while server.systemctl("show", "-p", "ActiveState", "--value", UNIT).stdout.strip() not in (
            "inactive",
            "failed",
            "",
        ):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        server.systemctl("reset-failed", UNIT)
