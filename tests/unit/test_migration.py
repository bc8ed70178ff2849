"""sdexec.systemd.migration: which cgroup the warmer writes to, and what it writes."""

from __future__ import annotations

import time
from pathlib import Path

from sdexec.systemd.migration import MigrationWarmer, own_cgroup_procs


def _wait_for(predicate: object, limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.005)


def test_own_cgroup_procs_is_the_v2_membership(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("4:memory:/elsewhere\n0::/a.slice/b.service\n")
    cg = tmp_path / "root" / "a.slice" / "b.service"
    cg.mkdir(parents=True)
    (cg / "cgroup.type").write_text("domain\n")
    path, reason = own_cgroup_procs(tmp_path / "root", str(proc))
    assert (path, reason) == (cg / "cgroup.procs", "")


def test_the_root_cgroup_has_no_type_and_is_used(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("0::/\n")
    path, reason = own_cgroup_procs(tmp_path, str(proc))
    assert (path, reason) == (tmp_path / "cgroup.procs", "")


def test_a_threaded_cgroup_is_not_used(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("0::/t\n")
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "cgroup.type").write_text("threaded\n")
    path, reason = own_cgroup_procs(tmp_path, str(proc))
    assert path is None
    assert "threaded" in reason


def test_no_v2_membership(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("1:name=systemd:/\n")
    assert own_cgroup_procs(tmp_path, str(proc)) == (None, "no cgroup-v2 membership")


def test_a_kick_writes_this_process_until_the_hold_ends(tmp_path: Path) -> None:
    procs = tmp_path / "cgroup.procs"
    procs.write_text("")
    warmer = MigrationWarmer(procs, hold=0.05, interval=0.001)
    warmer.start()
    try:
        assert warmer.disabled == ""
        assert warmer.writes == 0  # nothing before a kick
        warmer.kick()
        _wait_for(lambda: warmer.writes >= 2)
        assert warmer.writes >= 2
        assert set(procs.read_text()) == {"0"}  # "0": the writing process
        # Once the hold is over the thread waits for the next kick.
        time.sleep(0.3)
        settled = warmer.writes
        time.sleep(0.1)
        assert warmer.writes == settled
    finally:
        warmer.close()
    assert warmer._thread is None


def test_a_failed_write_disables_the_warmer(tmp_path: Path) -> None:
    warmer = MigrationWarmer(Path("/dev/full"), interval=0.001)
    warmer.start()
    try:
        warmer.kick()
        _wait_for(lambda: warmer.disabled != "")
        assert warmer.disabled.startswith("cannot write /dev/full")
        assert warmer.writes == 0
        warmer.kick()  # harmless once disabled
    finally:
        warmer.close()


def test_an_unopenable_file_disables_the_warmer(tmp_path: Path) -> None:
    warmer = MigrationWarmer(tmp_path)  # a directory
    warmer.start()
    assert warmer.disabled.startswith(f"cannot open {tmp_path}")
    warmer.kick()
    warmer.close()


def test_no_path_means_disabled() -> None:
    warmer = MigrationWarmer(None)
    warmer.start()
    warmer.kick()
    assert warmer.disabled == "no cgroup.procs"
    warmer.close()
