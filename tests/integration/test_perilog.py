"""``sdexec perilog run`` on four real servers: outcomes, deadlines and the report."""

from __future__ import annotations

import json
import os
import pty
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import Cluster

CLI = [sys.executable, "-m", "sdexec.cli.main"]


def perilog(
    cluster: Cluster, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[bytes]:
    return cluster.sdexec("perilog", "run", *args, timeout=timeout)


def report(r: subprocess.CompletedProcess[bytes]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(r.stdout)
    return data


def by_rank(rep: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {entry["rank"]: entry for entry in rep["ranks"]}


def test_all_ranks_ok_exits_0(cluster: Cluster) -> None:
    r = perilog(cluster, "--phase", "prolog", "-r", "all", "--", "true")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().startswith("prolog: 4 ranks in ")
    assert "drain:" not in r.stdout.decode()


def test_sleep_past_timeout_is_timeout_on_exactly_that_rank(cluster: Cluster) -> None:
    script = 'echo starting; if [ "$SDEXEC_RANK" = 1 ]; then sleep 60; fi; echo done'
    # A timeout a loaded 2-CPU machine's quick ranks never reach (1 s was, once).
    r = perilog(
        cluster, "--phase", "prolog", "--timeout", "4", "--kill-timeout", "5", "--json",
        "--", "sh", "-c", script,
    )  # fmt: skip
    assert r.returncode == 1
    ranks = by_rank(report(r))
    assert {n: e["outcome"] for n, e in ranks.items()} == {
        0: "ok", 1: "timeout", 2: "ok", 3: "ok"
    }  # fmt: skip
    assert "stopped by SIGTERM" in ranks[1]["detail"]
    assert ranks[1]["elapsed"] < 9  # the timeout, not the kill timeout after it


def test_script_ignoring_sigterm_is_killed_after_kill_timeout(cluster: Cluster) -> None:
    script = "trap '' TERM; echo ignoring; sleep 60"
    start = time.monotonic()
    r = perilog(
        cluster, "--phase", "epilog", "-r", "2", "--timeout", "1", "--kill-timeout", "1",
        "--json", "--", "sh", "-c", script,
    )  # fmt: skip
    elapsed = time.monotonic() - start
    assert r.returncode == 1
    rank = by_rank(report(r))[2]
    assert rank["outcome"] == "timeout"
    assert rank["code"] == 9
    assert "ignored SIGTERM for 1s, killed by SIGKILL" in rank["detail"]
    assert 2 <= elapsed < 10


def test_json_report_names_failing_ranks_with_reason_and_last_lines(cluster: Cluster) -> None:
    script = (
        "exec 2>&1;"  # one stream, so the order of the lines is the script's
        'for i in 1 2 3 4 5 6 7 8 9 10 11 12; do echo "rank $SDEXEC_RANK line $i"; done;'
        'if [ "$SDEXEC_RANK" = 3 ]; then echo "disk full" >&2; exit 4; fi'
    )
    r = perilog(cluster, "--phase", "prolog", "--json", "--lines", "3", "--", "sh", "-c", script)
    assert r.returncode == 1
    rep = report(r)
    assert rep["phase"] == "prolog"
    assert rep["ok"] is False
    assert rep["summary"] == ["[0-2]: ok", "3: exit 4"]
    assert rep["drain"] == [
        {
            "rank": 3,
            "host": "node3",
            "phase": "prolog",
            "outcome": "exit",
            "reason": "prolog exit 4",
            "output": ["rank 3 line 11", "rank 3 line 12", "disk full"],
            "logs": f"sdexec logs -r 3 {rep['label']}",
        }
    ]


def test_text_report_names_the_node_to_drain(cluster: Cluster) -> None:
    script = 'if [ "$SDEXEC_RANK" = 0 ]; then echo "no scratch"; exit 2; fi'
    r = perilog(cluster, "--phase", "epilog", "-r", "0-1", "--", "sh", "-c", script)
    assert r.returncode == 1
    out = r.stdout.decode()
    assert "  node0 (rank 0): epilog exit 2\n    | no scratch\n" in out
    assert "  1: ok\n" in out


def test_unreachable_rank_is_reported_and_drained(cluster: Cluster) -> None:
    hosts = cluster.hosts_file.parent / "hosts-perilog-gone"
    hosts.write_text(f"{cluster.servers[0].uri} node0\n/tmp/no-such-sdexec/local node1\n")
    r = cluster.servers[0].sdexec(
        "perilog", "run", "--phase", "prolog", "--hosts", str(hosts), "--json", "--", "true",
        env=cluster.env(),
    )  # fmt: skip
    assert r.returncode == 1
    rep = report(r)
    assert [(d["host"], d["outcome"]) for d in rep["drain"]] == [("node1", "unreachable")]


def test_missing_script_is_an_error(cluster: Cluster) -> None:
    r = perilog(cluster, "--phase", "prolog", "-r", "0", "--json", "--", "/no/such/prolog")
    assert r.returncode == 1
    rank = by_rank(report(r))[0]
    assert rank["outcome"] == "error"
    assert "No such file or directory" in rank["status"]


def test_progress_is_shown_live_on_a_terminal(cluster: Cluster) -> None:
    main, tty = pty.openpty()
    try:
        proc = subprocess.Popen(
            [*CLI, "perilog", "run", "--phase", "prolog", "--", "sleep", "0.6"],
            env=cluster.env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=tty,
        )
        os.close(tty)
        tty = -1
        seen = b""
        while True:
            try:
                chunk = os.read(main, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
        assert proc.wait(30) == 0
    finally:
        os.close(main)
        if tty >= 0:
            os.close(tty)
    assert b"prolog: 4 running" in seen
    assert b"\r\x1b[K" in seen


def test_output_is_kept_in_the_journal_under_the_run_label(cluster: Cluster) -> None:
    script = 'echo "kept $SDEXEC_RANK"; echo "to stderr" >&2; exit 1'
    r = perilog(cluster, "--phase", "epilog", "-r", "2", "--json", "--", "sh", "-c", script)
    assert r.returncode == 1
    rep = report(r)
    assert sorted(rep["drain"][0]["output"]) == ["kept 2", "to stderr"]
    manager = cluster.servers[2].manager
    journal = subprocess.run(
        ["journalctl", f"--directory={manager.journal_dir}", "-t", rep["label"], "-o", "cat"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert sorted(journal.stdout.splitlines()) == ["kept 2", "to stderr"]


def test_interrupted_run_stops_the_scripts(cluster: Cluster) -> None:
    proc = subprocess.Popen(
        [*CLI, "perilog", "run", "--phase", "prolog", "-r", "1", "--json", "--", "sleep", "60"],
        env=cluster.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert wait_for(cluster, lambda labels: bool(labels))
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # Killed and reaped: the server keeps neither the process nor its unit.
    assert wait_for(cluster, lambda labels: not labels)
    assert not [u for u in cluster.servers[1].units() if u.startswith("sdexec-1-")]


def wait_for(cluster: Cluster, check: Callable[[list[str]], bool], timeout: float = 30) -> bool:
    """Wait until ``check`` holds for the prolog labels in rank 1's process list."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ps = cluster.sdexec("ps", "-r", "1", "--json")
        procs = json.loads(ps.stdout)[0]["procs"]
        if check([p["label"] for p in procs if p["label"].startswith("sdexec-prolog-")]):
            return True
        time.sleep(0.1)
    return False


def test_a_hung_server_is_not_responding_never_unkillable(cluster: Cluster, workdir: Path) -> None:
    """Rank 3's server is stopped (SIGSTOP) while its script runs: at the deadline
    the signal gets no answer, and the rank is "server not responding"."""
    started = workdir / "perilog-hung-started"
    script = f'if [ "$SDEXEC_RANK" = 3 ]; then touch {started}; sleep 8; fi'
    rank3 = cluster.servers[3]
    assert rank3.proc is not None
    proc = subprocess.Popen(
        [*CLI, "perilog", "run", "--phase", "prolog", "-r", "all", "--timeout", "3",
         "--kill-timeout", "2", "--json", "--", "sh", "-c", script],
        env=cluster.env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    stopped = False
    try:
        deadline = time.monotonic() + 30
        while not started.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(rank3.proc.pid, signal.SIGSTOP)
        stopped = True
        out, err = proc.communicate(timeout=60)
    finally:
        if stopped:
            os.kill(rank3.proc.pid, signal.SIGCONT)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, err
    rep = json.loads(out)
    ranks = by_rank(rep)
    assert {n: e["outcome"] for n, e in ranks.items()} == {
        0: "ok", 1: "ok", 2: "ok", 3: "unresponsive"
    }  # fmt: skip
    assert ranks[3]["status"] == "server not responding"
    assert ranks[3]["detail"] == "no answer to SIGTERM in 2s"
    assert ranks[3]["exit_code"] == 68
    assert "unkillable" not in out.decode()
    # The script ran on under the stopped server, which once resumed delivers
    # the SIGTERM it was sent unless the script ended first.  Its status is
    # owed to nobody (the run's connection is gone): no Z entry is left.
    deadline = time.monotonic() + 30
    while rep["label"] in rank3.sdexec("ps", "-o", "{label} {state}").stdout.decode():
        assert time.monotonic() < deadline, rank3.sdexec("ps").stdout.decode()
        time.sleep(0.1)
    assert rank3.sdexec("wait", rep["label"]).returncode != 0  # nothing left to wait for


def test_an_ssh_failure_reports_sshs_own_message(cluster: Cluster) -> None:
    ssh = cluster.env()["SDEXEC_SSH"].replace("/user_key", "/host_key")  # not authorized
    r = cluster.servers[0].sdexec(
        "perilog", "run", "--phase", "prolog", "-r", "2", "--json", "--", "true",
        env=cluster.env(SDEXEC_SSH=ssh),
    )  # fmt: skip
    assert r.returncode == 1
    (rank,) = report(r)["ranks"]
    assert rank["outcome"] == "unreachable"
    assert rank["detail"] == "ssh root@127.0.0.1: root@127.0.0.1: Permission denied (publickey)."
    assert "connection to server lost" not in r.stdout.decode() + r.stderr.decode()


def test_a_missing_curve_key_here_is_one_error_and_nothing_runs(
    cluster: Cluster, workdir: Path
) -> None:
    ran = workdir / "perilog-ran-without-keys"
    r = cluster.servers[0].sdexec(
        "perilog", "run", "--phase", "prolog", "-r", "all", "--", "touch", str(ran),
        env=cluster.env(SDEXEC_CURVE_CERT="/nonexistent/client.key_secret"),
    )  # fmt: skip
    assert r.returncode == 2
    assert r.stdout == b""  # no report: nothing to drain
    assert r.stderr.decode().splitlines() == [
        f"sdexec: perilog run: node1 ({cluster.uris[1]}): cannot read key file"
        " /nonexistent/client.key_secret: No such file or directory; nothing was run"
    ]
    assert not ran.exists()


def test_the_reports_all_output_hint_is_a_command_that_works(cluster: Cluster) -> None:
    script = 'echo "line one of $SDEXEC_RANK"; echo "line two"; exit 3'
    r = perilog(cluster, "--phase", "epilog", "-r", "1", "--lines", "1", "--", "sh", "-c", script)
    assert r.returncode == 1
    (hint,) = [line for line in r.stdout.decode().splitlines() if "all output:" in line]
    command = hint.split("all output: ", 1)[1].split(" (and -r")[0]
    argv = shlex.split(command)
    assert argv[:3] == ["sdexec", "logs", "-r"]
    logs = cluster.sdexec(*argv[1:])
    assert (logs.returncode, logs.stdout) == (0, b"line one of 1\nline two\n"), logs.stderr
