"""Resource limits enforced by a real kernel: one qemu guest boot, a batch of checks inside.

See ``guestctl.py`` for how the guest is made and booted, ``checks.py`` for
what runs inside.  The boot happens once for the module; each test asserts
one check's record.  Without root, qemu or debootstrap the tests skip with
one line.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import guestctl


@pytest.fixture(scope="module")
def guest(
    debian_package: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[guestctl.Boot]:
    reason = guestctl.missing()
    if reason is not None:
        pytest.skip(reason)
    # Not under /tmp: the image is large, and /var/tmp is on disk.
    work = Path("/var/tmp") / f"sdexec-guest-{os.getpid()}"
    work.mkdir()
    try:
        tree = guestctl.guest_tree()
        img = guestctl.make_image(tree, debian_package, work)
        booted = guestctl.boot(img, work)
        print(f"\nguest: boot, checks and power-off in {booted.seconds:.0f} s", file=sys.stderr)
        yield booted
    finally:
        shutil.rmtree(work, ignore_errors=True)


def record(boot: guestctl.Boot, name: str) -> dict[str, Any]:
    """A check's record, which must say it passed."""
    rec = boot.record(name)
    assert rec["ok"], f"{name}: {rec['detail']}\nserver log:\n{boot.serve_log[-2000:]}"
    return rec


def test_the_batch_ran_whole(guest: guestctl.Boot) -> None:
    assert not guest.hung
    failed = [r for r in guest.results if r["name"] == "batch"]
    assert not failed, failed


def test_the_guest_has_the_controllers(guest: guestctl.Boot) -> None:
    assert "memory" in record(guest, "controllers")["detail"]


def test_memorymax_oom_kills_an_allocation_over_it(guest: guestctl.Boot) -> None:
    record(guest, "memorymax-oom-kills")


def test_oom_kill_is_named_in_ps_wait_and_the_log(guest: guestctl.Boot) -> None:
    assert "Z (oom-kill)" in record(guest, "oom-kill-in-ps-wait-and-log")["detail"]


def test_memorymax_lets_an_allocation_under_it_run(guest: guestctl.Boot) -> None:
    record(guest, "memorymax-allows-less")


def test_allowedcpus_confines_the_process(guest: guestctl.Boot) -> None:
    assert record(guest, "allowedcpus")["detail"].split() == ["Cpus_allowed_list:", "1"]


def test_strict_properties_accepts_enforceable_limits(guest: guestctl.Boot) -> None:
    record(guest, "strict-properties")


def test_ps_stats_reads_memory_current(guest: guestctl.Boot) -> None:
    assert "(memory.current)" in record(guest, "ps-stats-memory")["detail"]


def test_a_users_manager_gets_the_delegated_controllers(guest: guestctl.Boot) -> None:
    assert "memory" in record(guest, "user-manager-delegated")["detail"]


def test_memorymax_oom_kills_on_a_users_manager_and_says_so(guest: guestctl.Boot) -> None:
    assert "oom-kill" in record(guest, "user-memorymax-oom-kills")["detail"]


def test_allowedcpus_on_a_users_manager(guest: guestctl.Boot) -> None:
    assert record(guest, "user-allowedcpus")["detail"].split() == ["Cpus_allowed_list:", "1"]
