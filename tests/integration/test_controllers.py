"""A resource limit the manager cannot enforce (no cgroup controller) is said so, not ignored."""

from __future__ import annotations

import subprocess

import pytest
from conftest import Server
from faults import log_mark, log_since

from sdexec.systemd.private import cgroup2_root

# One limit per controller, and how much it asks for.
LIMITS = {"memory": "MemoryMax=20M", "pids": "TasksMax=50", "cpu": "CPUQuota=50%"}


def manager_controllers(server: Server) -> set[str]:
    cgroup = subprocess.run(
        ["systemctl", "--user", "show", "-p", "ControlGroup", "--value"],
        env=server.manager.env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return set((cgroup2_root() / cgroup.lstrip("/") / "cgroup.controllers").read_text().split())


@pytest.mark.parametrize("controller", sorted(LIMITS))
def test_a_limit_is_enforced_or_the_exec_says_it_is_not(server: Server, controller: str) -> None:
    limit = LIMITS[controller]
    mark = log_mark(server)
    r = server.sdexec("exec", "-p", limit, "--", "true")
    assert r.returncode == 0, r.stderr
    warning = f"sdexec: warning: {limit} is not enforced: the systemd manager has no {controller}"
    if controller in manager_controllers(server):
        assert b"not enforced" not in r.stderr
    else:
        assert r.stderr.decode().startswith(warning)
        assert "property not enforced" in log_since(server, mark)
        bg = server.sdexec("exec", "--bg", "-p", limit, "--", "true")
        assert bg.returncode == 0 and bg.stderr.decode().startswith(warning)
        strict = server.sdexec("exec", "--strict-properties", "-p", limit, "--", "true")
        assert strict.returncode == 125
        assert f"{limit} is not enforced".encode() in strict.stderr


def test_no_limit_and_other_properties_warn_of_nothing(server: Server) -> None:
    r = server.sdexec("exec", "-p", "MemoryMax=infinity", "-p", "Nice=5", "--", "true")
    assert (r.returncode, r.stderr) == (0, b"")
