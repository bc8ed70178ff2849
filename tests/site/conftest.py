"""Fixtures of the site tests: a Flux system instance of N containers (``sitectl.py``).

The session builds sdexec's ``.deb`` from the tree under test once
(``packaging/build-deb``); each test module boots its own site through
``sitectl.py up`` as a child process, and stops it by closing that child's
standard input (it also stops when this process dies: parent-death signal).
Where there is no flux-core or flux-security installed, or not as root, the
tests skip with one line.
"""

from __future__ import annotations

import contextlib
import re
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sitectl

REPO = Path(__file__).resolve().parents[2]
UP_TIMEOUT = 600.0  # a first run builds the root filesystem (2-3 minutes)


@dataclass
class Site:
    """A running site: run commands on its nodes, as root or as a user."""

    run_dir: Path
    proc: subprocess.Popen[str]
    info: sitectl.SiteInfo = field(init=False)

    def __post_init__(self) -> None:
        self.info = sitectl.SiteInfo.load(self.run_dir)

    @property
    def nodes(self) -> list[sitectl.Node]:
        return self.info.nodes

    def run(
        self,
        node: int,
        cmd: str | Sequence[str],
        user: str | None = None,
        timeout: float = 60,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """``cmd`` on ``node`` (a string goes to ``sh -c``) as ``user`` (default root)."""
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        return sitectl.node_cmd(self.nodes[node], argv, user, timeout, input)

    def ok(
        self, node: int, cmd: str | Sequence[str], user: str | None = None, timeout: float = 60
    ) -> str:
        """``cmd``'s standard output; it must exit 0."""
        res = self.run(node, cmd, user, timeout)
        assert res.returncode == 0, f"{cmd!r} on node{node}: exit {res.returncode}: {res.stderr}"
        return res.stdout

    def as_flux(self, node: int, cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``cmd`` as the instance owner, with its user manager's bus (systemctl --user)."""
        uid = self.ok(node, "id -u flux").strip()
        run = f"/run/user/{uid}"
        env = f"XDG_RUNTIME_DIR={run} DBUS_SESSION_BUS_ADDRESS=unix:path={run}/bus"
        return self.run(node, f"env {env} {cmd}", user="flux", timeout=timeout)

    def units(self, node: int) -> list[str]:
        """The flux user's transient units of sdexec on ``node`` (loaded, any state)."""
        res = self.as_flux(
            node, "systemctl --user list-units --all --plain --no-legend --type=service"
        )
        assert res.returncode == 0, res.stderr
        names = [line.split()[0] for line in res.stdout.splitlines() if line.strip()]
        return [n for n in names if re.match(r"(shell|sdexec|imp)-", n)]

    def pids_of(self, node: int, user: str) -> list[int]:
        res = self.run(node, ["pgrep", "-u", user])
        return [int(p) for p in res.stdout.split()]

    def dmesg(self, node: int) -> str:
        return self.ok(0, ["flux", "exec", "-r", str(node), "flux", "dmesg"])

    def wait_until(self, what: str, check: object, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():  # type: ignore[operator]
                return
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}")


def why_skip() -> str | None:
    return sitectl.flux_missing()


@pytest.fixture(scope="session")
def site_deb(debian_package: Path) -> Path:
    """sdexec's .deb, built from the tree under test (tests/conftest.py)."""
    why = why_skip()
    if why:
        pytest.skip(why)
    return debian_package


@pytest.fixture(scope="session")
def start_site(site_deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A factory of sites, as contexts: ``start_site(nodes=3, module="sdexec", ...)``."""

    @contextlib.contextmanager
    def start(
        nodes: int = 3,
        module: str = "sdexec",
        exec_method: str | None = None,
        bind_ro: Sequence[str] = (),
        sudo_user: str | None = None,
        prolog: bool = False,
    ) -> Iterator[Site]:
        run_dir = tmp_path_factory.mktemp("site")
        argv = [
            sys.executable,
            str(Path(sitectl.__file__)),
            "up",
            "--die-with-parent",
            "--nodes",
            str(nodes),
            "--run-dir",
            str(run_dir),
            "--deb",
            str(site_deb),
            "--module",
            module,
        ]
        if exec_method:
            argv += ["--exec-method", exec_method]
        for spec in bind_ro:
            argv += ["--bind-ro", spec]
        if sudo_user:
            argv += ["--sudo-user", sudo_user]
        if prolog:
            argv.append("--prolog")
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            wait_ready(proc)
            yield Site(run_dir, proc)
        finally:
            stop(proc)

    yield start


def wait_ready(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None and proc.stderr is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(UP_TIMEOUT):
        raise RuntimeError("the site did not come up in time")
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.wait(60)
        raise RuntimeError(f"the site did not come up: {proc.stderr.read()[-3000:]}")


def stop(proc: subprocess.Popen[str]) -> None:
    """Close the supervisor's input (it stops the nodes and cleans up), and wait."""
    assert proc.stdin is not None
    with contextlib.suppress(BrokenPipeError):
        proc.stdin.close()
    try:
        proc.wait(90)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        sitectl.sweep()
    status = proc.returncode
    err = proc.stderr.read() if proc.stderr else ""
    assert status == 0, f"the site's supervisor exited {status}: {err[-3000:]}"
    mine = f"{sitectl.PREFIX}{proc.pid}"
    leftovers = [str(d) for d in sitectl.cgroup_dirs(mine) if d.exists()]
    assert leftovers == [], f"cgroups left behind: {leftovers}"
