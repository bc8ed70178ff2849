"""Running one of flux-core's sharness test programs: its environment, the run, its counts.

Standard library only: the host's Flux tests use it through
:mod:`fluxinstance`, and the qemu guest's runner (``tests/guest/fluxtests.py``)
is given a copy of this file, since it runs where no project test code is
installed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path

#: Variables of the caller's own Flux, systemd or test harness that would
#: mislead a test instance started by the sharness program.
SCRUBBED = (
    *("NOTIFY_SOCKET", "INVOCATION_ID", "FLUX_URI", "FLUX_MODULE_PATH", "FLUX_CONFIG"),
    *("HARNESS_ACTIVE", "DBUS_SYSTEM_BUS_ADDRESS", "SDEXEC_URI", "PYTHONPATH"),
)


def environment(base: Mapping[str, str], flux_core: Path) -> dict[str, str]:
    """``base`` made into the environment of a sharness program of the build tree ``flux_core``."""
    env = {k: v for k, v in base.items() if k not in SCRUBBED}
    env.update(
        SHARNESS_TEST_SRCDIR=str(flux_core / "t"),
        SHARNESS_BUILD_DIRECTORY=str(flux_core),
        FLUX_BUILD_DIR=str(flux_core),
        FLUX_SOURCE_DIR=str(flux_core),
    )
    return env


def run_logged(argv: list[str], cwd: Path, env: dict[str, str], timeout: float) -> tuple[int, str]:
    """Run a test program of flux-core's in a session of its own, output to ``cwd/test.log``;
    (exit status, -1 if killed after ``timeout``; the log's text)."""
    log_path = cwd / "test.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the test's own session
            proc.wait()
            rc = -1
    return rc, log_path.read_text(errors="replace")


def counts(log: str) -> dict[str, int]:
    """A TAP log's passed, skipped and failed tests, and its plan (-1: none printed)."""
    plan = re.search(r"^1\.\.(\d+)", log, re.M)
    return {
        "ok": len(re.findall(r"^ok \d+ - ", log, re.M)),
        "skip": len(re.findall(r"^ok \d+ # skip", log, re.M)),
        "fail": len(re.findall(r"^not ok \d+ - ", log, re.M)),
        "plan": int(plan.group(1)) if plan else -1,
    }
