"""The AllowedCPUs post-start check (sdexec.server.cpuset), on a fake /proc and cgroup tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdexec.server import cpuset


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    mount = tmp_path / "cgroup"
    (mount / "app.slice" / "u.service").mkdir(parents=True)
    (tmp_path / "proc" / "7").mkdir(parents=True)
    (tmp_path / "proc" / "7" / "cgroup").write_text("0::/app.slice/u.service\n")
    info = tmp_path / "mountinfo"
    info.write_text(f"30 25 0:26 / {mount} rw,nosuid - cgroup2 cgroup2 rw\n")
    real = cpuset.cgroup2_mount
    monkeypatch.setattr(cpuset, "cgroup2_mount", lambda: real(str(info)))
    return tmp_path


def test_matching_cpus_pass(tree: Path) -> None:
    (tree / "cgroup/app.slice/u.service/cpuset.cpus").write_text("0-3\n")
    assert cpuset.check_cpus(7, {0, 1, 2, 3}, proc=str(tree / "proc")) is None


def test_other_cpus_fail_saying_what_was_expected(tree: Path) -> None:
    (tree / "cgroup/app.slice/u.service/cpuset.cpus").write_text("0-7\n")
    problem = cpuset.check_cpus(7, {1}, proc=str(tree / "proc"))
    assert problem is not None and "expected 1 got 0-7" in problem


def test_no_cpuset_file_means_not_enforced(tree: Path) -> None:
    problem = cpuset.check_cpus(7, {1}, proc=str(tree / "proc"))
    assert problem is not None and "cpuset.cpus unavailable" in problem


def test_a_process_that_is_gone_cannot_be_checked(tree: Path) -> None:
    problem = cpuset.check_cpus(8, {1}, proc=str(tree / "proc"))
    assert problem is not None and "cannot read cgroup for pid 8" in problem
