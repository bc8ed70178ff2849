"""``sdexec top`` and ``ps --stats``: each unit's cgroup figures, on a real terminal too."""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Cluster, Server
from rpc import Raw
from terminal import tmux

SDEXEC = shlex.join([sys.executable, "-m", "sdexec.cli.main"])
BUSY = ["sh", "-c", "while :; do :; done"]


@pytest.fixture
def units(server: Server, tmp_path: Path) -> Iterator[dict[str, int]]:
    """Two background units: one busy, one holding 40 MiB; label -> pid."""
    ready = tmp_path / "allocated"
    hold = f"import time; b = b'x' * (40 << 20); open({str(ready)!r}, 'w').close(); time.sleep(600)"
    pids = {}
    for label, argv in (("top-busy", BUSY), ("top-mem", ["python3", "-c", hold])):
        r = server.sdexec("exec", "--bg", "--label", label, "--", *argv)
        assert r.returncode == 0, r.stderr
        pids[label] = int(r.stdout)
    deadline = time.monotonic() + 30
    while not ready.exists():
        assert time.monotonic() < deadline, "the memory holder never started"
        time.sleep(0.05)
    try:
        yield pids
    finally:
        for label in pids:
            server.sdexec("kill", "-s", "KILL", label)


def _memory_controller(server: Server, pid: int) -> bool:
    rel = Path(f"/proc/{pid}/cgroup").read_text().split("0::", 1)[1].split()[0]
    from sdexec.systemd.private import cgroup2_root

    return (cgroup2_root() / rel.lstrip("/") / "memory.current").exists()


def test_list_with_stats_reads_each_units_cgroup(server: Server, units: dict[str, int]) -> None:
    raw = Raw(server.socket_path)
    try:
        first = raw.rpc("sdexec.list", {"stats": True}).json()
        plain = raw.rpc("sdexec.list", {}).json()
    finally:
        raw.close()
    procs = {p["label"]: p for p in first["procs"]}
    for label, pid in units.items():
        p = procs[label]
        assert p["pid"] == pid
        assert isinstance(p["cpu_usec"], int)
        assert 0 < first["time"] - p["started"] < 600
        source = "cgroup" if _memory_controller(server, pid) else "rss"
        assert p["memory_source"] == source
    assert procs["top-mem"]["memory"] >= 40 << 20
    assert all("cpu_usec" not in p and "time" not in plain for p in plain["procs"])


def test_top_one_shot_table_when_stdout_is_not_a_terminal(
    server: Server, units: dict[str, int]
) -> None:
    r = server.sdexec("top")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    assert lines[0].split() == ["PID", "LABEL", "UNIT", "S", "CPU%", "MEM", "ELAPSED", "CMD"]
    rows = {line.split()[1]: line.split() for line in lines[1:]}
    assert rows["top-busy"][0] == str(units["top-busy"])
    assert rows["top-mem"][5].endswith("M")
    assert rows["top-busy"][3] == "R"
    if not _memory_controller(server, units["top-mem"]):
        assert "MEM on rank 0: resident set" in r.stderr.decode()


def test_top_json_sorted_by_memory(server: Server, units: dict[str, int]) -> None:
    r = server.sdexec("top", "--json", "--sort", "memory")
    assert r.returncode == 0, r.stderr
    procs = json.loads(r.stdout)["procs"]
    mine = [p for p in procs if p["label"] in units]
    assert [p["label"] for p in mine] == ["top-mem", "top-busy"]
    assert all(p["cpu_pct"] >= 0 and p["elapsed"] >= 0 for p in mine)
    memories = [p["memory"] for p in procs]
    assert memories == sorted(memories, reverse=True)


def test_top_draws_rows_for_running_units_and_quits_on_q(
    server: Server, units: dict[str, int], tmp_path: Path
) -> None:
    with tmux(tmp_path, server.env(), cols=140, rows=20) as term:
        term.type(f"{SDEXEC} top -d 0.5; echo rc=$?")
        screen = term.wait_text(r"sdexec top - .* units on 1 rank").string
        lines = term.wait_for(
            # The whole header: a capture can catch curses in the middle of a line.
            lambda s: "top-busy" in s and "top-mem" in s and "PID LABEL" in s and " CMD" in s
        ).splitlines()
        header = next(line for line in lines if "PID LABEL" in line)
        assert header.split()[:8] == ["PID", "LABEL", "UNIT", "S", "CPU%", "MEM", "ELAPSED", "CMD"]
        assert "q quit" in lines[-1]
        busy = next(line for line in lines if " top-busy " in line).split()
        assert busy[0] == str(units["top-busy"])
        assert float(busy[4]) > 0
        # Sorted by CPU: the busy unit comes before the sleeping one.
        order = [line.split()[1] for line in lines if " top-" in line]
        assert order.index("top-busy") < order.index("top-mem")
        term.keys("m")  # by memory
        term.wait_for(lambda s: "by memory" in s and s.index(" top-mem ") < s.index(" top-busy "))
        term.keys("q")
        screen = term.wait_text(r"rc=0").string
        assert "sdexec top -" not in screen  # curses gave the screen back


def test_ps_stats_columns(server: Server, units: dict[str, int]) -> None:
    r = server.sdexec("ps", "--stats")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    assert lines[0].split() == ["PID", "LABEL", "STATE", "START", "ELAPSED", "CPU", "MEM", "CMD"]
    mem = next(line for line in lines if " top-mem " in line).split()
    assert mem[6].endswith("M") and float(mem[6][:-1]) >= 40
    r = server.sdexec("ps", "-o", "{label} {elapsed}")
    assert r.returncode == 0, r.stderr
    assert any(
        line.startswith("top-busy ") and ":" in line for line in r.stdout.decode().splitlines()
    )


def test_top_over_several_ranks(cluster: Cluster) -> None:
    r = cluster.sdexec("exec", "-r", "all", "--bg", "--label", "top-r", "--", *BUSY)
    assert r.returncode == 0, r.stderr
    try:
        r = cluster.sdexec("top", "-r", "0-3", "--sort", "rank")
        assert r.returncode == 0, r.stderr
        lines = r.stdout.decode().splitlines()
        assert lines[0].split()[:2] == ["RANK", "PID"]
        ranks = [line.split()[0] for line in lines[1:] if " top-r " in line]
        assert ranks == ["0", "1", "2", "3"]
    finally:
        cluster.sdexec("kill", "-r", "all", "-s", "KILL", "top-r")
