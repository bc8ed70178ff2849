"""Every subcommand exits as the documentation's one table of exit statuses says.

Each case runs the real CLI against the session's server and checks the
status, and that the table's row for that status names the subcommand
(``docs/reference/exit-status.md``).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import REPO, Server

_n = itertools.count()


def documented_table() -> dict[int, set[str]]:
    """Status -> the subcommands its row of the table names."""
    text = (REPO / "docs" / "reference" / "exit-status.md").read_text()
    section = text[text.index("# Exit statuses") :]
    rows: dict[int, set[str]] = {}
    for line in section.splitlines()[1:]:
        if line.startswith("#"):
            break
        m = re.fullmatch(r"\| (\d+)(?:\+N)? \| .* \| (.*) \|", line)
        if m:
            rows[int(m[1])] = {w.strip().split()[0] for w in m[2].split(",")}
        elif line.startswith("| N |"):
            rows[-1] = {w.strip().split()[0] for w in line.rsplit("|", 2)[1].split(",")}
    return rows


def lab() -> str:
    return f"xs-{next(_n)}"


def reaped(server: Server) -> str:
    name = lab()
    assert (
        server.sdexec("exec", "--bg", "--waitable", "--label", name, "--", "true").returncode == 0
    )
    assert server.sdexec("wait", name).returncode == 0
    return name


def with_unreachable(server: Server, workdir: Path) -> dict[str, str]:
    hosts = workdir / "hosts-exit-status"
    hosts.write_text(f"{server.uri} node0\nlocal://{workdir}/nobody-listens node1\n")
    env = server.env(SDEXEC_HOSTS=str(hosts))
    env.pop("SDEXEC_URI")
    return env


Case = tuple[str, Callable[[Server, Path], tuple[list[str], dict[str, str] | None]], int]

CASES: list[Case] = [
    ("exec", lambda s, w: (["exec", "--", "sh", "-c", "exit 3"], None), 3),
    ("exec", lambda s, w: (["exec", "--", "sh", "-c", "kill -TERM $$"], None), 128 + 15),
    ("exec", lambda s, w: (["exec", "--", "/nonexistent/cmd"], None), 127),
    ("exec", lambda s, w: (["exec", "--", str(w / "not-executable")], None), 126),
    ("exec", lambda s, w: (["exec", "--", str(w / "exec-format")], None), 126),
    ("exec", lambda s, w: (["exec", "-d", "/nonexistent", "--", "true"], None), 125),
    ("exec", lambda s, w: (["exec", "--uri", f"local://{w}/none", "--", "true"], None), 125),
    ("exec", lambda s, w: (["exec", "--bg", "--uri", f"local://{w}/none", "--", "true"], None), 1),
    ("exec", lambda s, w: (["exec", "-r", "all", "--", "true"], with_unreachable(s, w)), 68),
    ("exec", lambda s, w: (["exec", "--no-such-option", "true"], None), 2),
    ("wait", lambda s, w: (["wait", reaped(s)], None), 125),
    ("wait", lambda s, w: (["wait", "-r", "0", reaped(s)], with_unreachable(s, w)), 125),
    ("attach", lambda s, w: (["attach", "never-was"], None), 125),
    ("kill", lambda s, w: (["kill", "never-was"], None), 1),
    ("kill", lambda s, w: (["kill", "-r", "all", "never-was"], with_unreachable(s, w)), 68),
    ("ps", lambda s, w: (["ps", "--uri", f"local://{w}/none"], None), 1),
    ("ps", lambda s, w: (["ps", "-r", "all"], with_unreachable(s, w)), 68),
    ("logs", lambda s, w: (["logs", "never-was"], None), 1),
    ("uri", lambda s, w: (["uri", "nosuch:thing"], None), 1),
    ("proxy", lambda s, w: (["proxy", "bogus:thing", "true"], None), 125),
    ("proxy", lambda s, w: (["proxy", s.uri, "/nonexistent/cmd"], None), 127),
    ("proxy", lambda s, w: (["proxy", s.uri, "sh", "-c", "exit 7"], None), 7),
]


@pytest.fixture(scope="module")
def files(workdir: Path) -> Path:
    (workdir / "not-executable").write_text("#!/bin/sh\n")
    exec_format = workdir / "exec-format"
    exec_format.write_bytes(b"\x00\x01 not a program\n")
    exec_format.chmod(0o755)
    return workdir


@pytest.mark.parametrize(("command", "make", "status"), CASES, ids=lambda c: str(c))
def test_exit_status_follows_the_documented_table(
    server: Server,
    files: Path,
    command: str,
    make: Callable[..., tuple[list[str], dict[str, str] | None]],
    status: int,
) -> None:
    argv, env = make(server, files)
    r = server.sdexec(*argv, env=env)
    assert r.returncode == status, (argv, r.stderr)
    rows = documented_table()
    row = rows[status] if status in rows else rows[-1 if status < 128 else 128]
    assert command in row or "all" in row, (status, row)


def test_a_missing_working_directory_says_so(server: Server) -> None:
    r = server.sdexec("exec", "-d", "/nonexistent", "--", "true")
    assert r.stderr == b"sdexec: working directory /nonexistent: No such file or directory\n"


def test_the_table_is_complete() -> None:
    assert set(documented_table()) == {-1, 0, 1, 2, 68, 125, 126, 127, 128, 130}
