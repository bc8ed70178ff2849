"""Resource properties against the manager's cgroup controllers (sdexec.systemd.controllers)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from sdexec.base.errors import SdexecError
from sdexec.systemd import controllers

NONE: frozenset[str] = frozenset()
ALL = frozenset({"memory", "cpu", "io", "pids", "cpuset"})


def test_each_limit_names_what_it_needs() -> None:
    settings = [("MemoryMax", "20M"), ("CPUQuota", "50%"), ("TasksMax", "10"), ("Nice", "5")]
    assert controllers.needed(settings) == {
        "memory": ["MemoryMax=20M"],
        "cpu": ["CPUQuota=50%"],
        "pids": ["TasksMax=10"],
    }


def test_no_limit_needs_no_controller() -> None:
    assert controllers.needed([("MemoryMax", "infinity")]) == {}


def test_a_missing_controller_is_a_warning() -> None:
    (warning,) = controllers.check([("MemoryMax", "20M")], frozenset({"cpu"}), strict=False)
    assert warning.startswith("MemoryMax=20M is not enforced")
    assert "no memory controller" in warning
    assert controllers.check([("MemoryMax", "20M")], ALL, strict=False) == []


def test_strict_makes_it_eopnotsupp() -> None:
    with pytest.raises(SdexecError) as info:
        controllers.check([("TasksMax", "5")], NONE, strict=True)
    assert info.value.errno == errno.EOPNOTSUPP
    assert "TasksMax=5 is not enforced" in info.value.message


def test_unknown_controllers_check_nothing() -> None:
    assert controllers.check([("MemoryMax", "1")], None, strict=True) == []


def test_available_reads_the_cgroups_controllers(tmp_path: Path) -> None:
    (tmp_path / "a.slice").mkdir()
    (tmp_path / "a.slice" / "cgroup.controllers").write_text("cpu memory pids\n")
    assert controllers.available(tmp_path, "/a.slice") == {"cpu", "memory", "pids"}
    assert controllers.available(tmp_path, "/gone.slice") is None
