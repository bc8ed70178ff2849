"""``sdexec exec|ps|kill|wait -r``: one command on four real servers (ranks 0-3) at once.

The ``cluster`` fixture runs four ``sdexec serve --rank N`` on their own
sockets and names them in a hosts file (node0..node3): rank 1 is reached
through its ``tcp://`` CURVE listener, rank 2 through ``ssh://`` and a real
sshd, ranks 0 and 3 on ``local://``.  Every test below crosses all three.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO, Cluster, Server

from sdexec.systemd.private import PrivateManager

CLI = [sys.executable, "-m", "sdexec.cli.main"]


def test_exec_all_prints_one_labelled_line_per_rank(cluster: Cluster) -> None:
    r = cluster.sdexec("exec", "-r", "all", "-l", "--", "sh", "-c", "echo host $SDEXEC_RANK")
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.decode().splitlines()) == [f"{n}: host {n}" for n in range(4)]


def test_exec_all_hostname_prints_four_labelled_lines(cluster: Cluster) -> None:
    r = cluster.sdexec("exec", "-r", "all", "-l", "hostname")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    name = os.uname().nodename
    assert sorted(lines) == [f"{n}: {name}" for n in range(4)]


def test_hosts_file_reaches_ranks_over_local_tcp_and_ssh(cluster: Cluster) -> None:
    schemes = [uri.split("://")[0] for uri in cluster.uris]
    assert schemes == ["local", "tcp", "ssh", "local"]
    r = cluster.sdexec("exec", "-r", "all", "-l", "--", "sh", "-c", "echo $SDEXEC_RANK")
    assert sorted(r.stdout.decode().splitlines()) == [f"{n}: {n}" for n in range(4)]


def assert_only_unreachable(env: dict[str, str], rank: int, ok: str) -> None:
    """``exec -r all`` with ``env`` fails on ``rank`` alone, as unreachable."""
    r = subprocess.run(
        [*CLI, "exec", "-r", "all", "-l", "--", "true"], env=env, capture_output=True, timeout=60
    )
    assert r.returncode == 68
    err = r.stderr.decode().splitlines()
    assert f"sdexec: {ok}: ok" in err
    assert any(line.startswith(f"sdexec: {rank}: unreachable: ") for line in err), err


def test_tcp_rank_is_really_reached_over_tcp(cluster: Cluster) -> None:
    # Without the client's CURVE certificate, only the tcp:// rank fails.
    env = cluster.env()
    del env["SDEXEC_CURVE_CERT"]
    assert_only_unreachable(env, 1, "[0,2-3]")


def test_ssh_rank_is_really_reached_over_ssh(cluster: Cluster) -> None:
    # An ssh that cannot log in leaves only the ssh:// rank unreachable.
    ssh = "ssh -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"
    env = cluster.env(SDEXEC_SSH=ssh + " -o IdentitiesOnly=yes -o IdentityFile=/dev/null")
    assert_only_unreachable(env, 2, "[0-1,3]")


def test_exclude_leaves_two_of_ranks_1_to_3(cluster: Cluster) -> None:
    r = cluster.sdexec("exec", "-r", "1-3", "-x", "3", "-l", "--", "sh", "-c", "echo $SDEXEC_RANK")
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.decode().splitlines()) == ["1: 1", "2: 2"]


def test_rank_exiting_3_makes_exec_exit_3_and_summary_names_it(cluster: Cluster) -> None:
    script = 'if [ "$SDEXEC_RANK" = 2 ]; then exit 3; fi'
    r = cluster.sdexec("exec", "-r", "all", "--", "sh", "-c", script)
    assert r.returncode == 3
    err = r.stderr.decode().splitlines()
    assert "sdexec: 2: exit 3" in err
    assert "sdexec: [0-1,3]: ok" in err


def test_summary_groups_ranks_with_the_same_exit_code(cluster: Cluster) -> None:
    script = 'case "$SDEXEC_RANK" in 1|3) exit 1;; esac'
    r = cluster.sdexec("exec", "-r", "all", "--", "sh", "-c", script)
    assert r.returncode == 1
    assert "sdexec: [1,3]: exit 1" in r.stderr.decode().splitlines()


def test_exit_code_is_the_highest_of_the_ranks(cluster: Cluster) -> None:
    r = cluster.sdexec("exec", "-r", "all", "--", "sh", "-c", "exit $((SDEXEC_RANK * 2))")
    assert r.returncode == 6


def test_stdin_is_broadcast_to_every_rank(cluster: Cluster) -> None:
    data = b"".join(b"line %d\n" % i for i in range(20000))  # ~200 KB: needs credit
    r = cluster.sdexec("exec", "-r", "all", "-l", "--", "wc", "-c", input=data)
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.decode().splitlines()) == [f"{n}: {len(data)}" for n in range(4)]


def test_missing_command_is_an_error_on_every_rank(cluster: Cluster) -> None:
    r = cluster.sdexec("exec", "-r", "0-1", "--", "/no/such/cmd")
    assert r.returncode == 127
    assert (
        "[0-1]: error: error launching process: /no/such/cmd: No such file or directory"
        in r.stderr.decode()
    )


def test_sigterm_is_forwarded_to_every_rank(cluster: Cluster) -> None:
    cli = subprocess.Popen(
        [*CLI, "exec", "-r", "all", "-l", "-n", "--", "sh", "-c", "echo up; exec sleep 60"],
        env=cluster.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert cli.stdout is not None
        for _ in range(4):
            assert cli.stdout.readline().endswith(b": up\n")
        cli.send_signal(signal.SIGTERM)
        assert cli.wait(30) == 128 + signal.SIGTERM
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    assert b"[0-3]: signal 15 (SIGTERM)" in cli.stderr.read()  # type: ignore[union-attr]


def test_launch_is_concurrent(cluster: Cluster, tmp_path: Path) -> None:
    # A barrier: each rank's command arrives, then waits until all four have.
    # Launched one after another (each waited for before the next starts),
    # the first would wait alone until its timeout.
    barrier = (
        f'touch {tmp_path}/"$SDEXEC_RANK"; '
        f'until [ "$(ls {tmp_path} | wc -l)" -ge 4 ]; do sleep 0.05; done; echo through'
    )
    r = cluster.sdexec("exec", "-r", "all", "--", "timeout", "60", "sh", "-c", barrier)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count(b"through") == 4, r.stdout


def test_background_exec_prints_each_ranks_pid_and_wait_collects_them(cluster: Cluster) -> None:
    r = cluster.sdexec(
        "exec", "-r", "all", "--bg", "--waitable", "--label", "fan-bg", "--",
        "sh", "-c", "exit $SDEXEC_RANK",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert [line.split(":")[0] for line in r.stdout.decode().splitlines()] == ["0", "1", "2", "3"]
    w = cluster.sdexec("wait", "-r", "all", "fan-bg")
    assert w.returncode == 3
    err = w.stderr.decode().splitlines()
    assert "sdexec: 0: ok" in err
    assert "sdexec: 3: exit 3" in err


def test_ps_and_kill_address_every_rank(cluster: Cluster) -> None:
    r = cluster.sdexec(
        "exec", "-r", "1-2", "--bg", "--label", "fan-ps", "--", "sleep", "60"
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    try:
        ps = cluster.sdexec("ps", "-r", "all", "--json")
        assert ps.returncode == 0, ps.stderr
        found = {
            resp["rank"]
            for resp in json.loads(ps.stdout)
            for proc in resp["procs"]
            if proc["label"] == "fan-ps"
        }
        assert found == {1, 2}
        table = cluster.sdexec("ps", "-r", "all").stdout.decode().splitlines()
        assert table[0].split()[:3] == ["RANK", "HOST", "PID"]
        hosts = {line.split()[0]: line.split()[1] for line in table[1:] if "fan-ps" in line}
        assert set(hosts) == {"1", "2"} and all(hosts.values())  # names from the hosts file
    finally:
        k = cluster.sdexec("kill", "-r", "1-2", "-s", "KILL", "fan-ps")
    assert k.returncode == 0, k.stderr


def test_kill_fails_on_ranks_without_the_process(cluster: Cluster) -> None:
    r = cluster.sdexec("kill", "-r", "0", "no-such-label")
    assert r.returncode == 1
    assert b"rank 0: no-such-label" in r.stderr


def test_rank_outside_the_hosts_file_is_refused(cluster: Cluster) -> None:
    r = cluster.sdexec("exec", "-r", "0-5", "true")
    assert r.returncode == 125
    assert b"rank 4-5 is not in the hosts file (ranks 0-3)" in r.stderr


def test_stopped_server_is_reported_unreachable(cluster: Cluster, workdir: Path) -> None:
    # A fifth server with its own private systemd, stopped cleanly (SIGTERM):
    # its socket is gone, so the rank it stands for cannot be reached.
    state = workdir / "gone-state"
    gone = Server(PrivateManager(state), str(workdir / "gone"), state, workdir / "gone.log")
    gone.start()
    assert gone.stop() == 0
    hosts = workdir / "hosts-gone"
    lines = [f"{uri} node{n}" for n, uri in enumerate(cluster.uris[:3])]
    hosts.write_text("\n".join([*lines, f"{gone.uri} node3"]) + "\n")
    env = cluster.env(SDEXEC_HOSTS=str(hosts))
    r = cluster.servers[0].sdexec("exec", "-r", "all", "-l", "--", "echo", "hi", env=env)
    assert r.returncode == 68
    assert sorted(r.stdout.decode().splitlines()) == ["0: hi", "1: hi", "2: hi"]
    err = r.stderr.decode().splitlines()
    assert "sdexec: [0-2]: ok" in err
    assert any(line.startswith("sdexec: 3: unreachable: ") for line in err), err


def test_worse_exit_code_beats_unreachable(cluster: Cluster, workdir: Path) -> None:
    hosts = workdir / "hosts-missing"
    hosts.write_text(f"{cluster.servers[0].uri}\nlocal://{workdir}/nobody-here\n")
    env = cluster.env(SDEXEC_HOSTS=str(hosts))
    r = cluster.servers[0].sdexec("exec", "-r", "all", "--", "sh", "-c", "exit 99", env=env)
    assert r.returncode == 99
    assert "sdexec: 1: unreachable" in r.stderr.decode()


def test_single_rank_path_does_not_import_asyncio(cluster: Cluster) -> None:
    code = (
        "import sys; from sdexec.cli.main import main; rc = main(['exec', 'true']);"
        "print('asyncio' in sys.modules, rc)"
    )
    env = cluster.servers[0].env()
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, cwd=REPO)
    assert r.stdout.split() == [b"False", b"0"], r.stderr


def test_stdin_from_a_regular_file_reaches_every_rank(cluster: Cluster, workdir: Path) -> None:
    data = workdir / "stdin-file"
    data.write_bytes(b"x" * 100_000)
    with data.open("rb") as f:
        r = subprocess.run(
            [*CLI, "exec", "-r", "all", "-l", "--", "wc", "-c"],
            stdin=f,
            env=cluster.env(),
            capture_output=True,
            timeout=60,
        )
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.decode().splitlines()) == [f"{n}: 100000" for n in range(4)]


def test_double_ctrl_c_gives_up_on_every_rank(cluster: Cluster) -> None:
    script = "trap '' INT; echo up; exec sleep 60"
    cli = subprocess.Popen(
        [*CLI, "exec", "-r", "0-1", "-l", "-n", "--", "sh", "-c", script],
        env=cluster.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert cli.stdout is not None
        for _ in range(2):
            assert cli.stdout.readline().endswith(b": up\n")
        cli.send_signal(signal.SIGINT)
        time.sleep(0.2)
        cli.send_signal(signal.SIGINT)
        assert cli.wait(30) == 130
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    assert b"interrupted; the servers stop the command" in cli.stderr.read()  # type: ignore[union-attr]
    # The servers stopped both processes when the connections went away.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        ps = cluster.sdexec("ps", "-r", "0-1", "-n", "-o", "{cmd}")
        if "sh" not in ps.stdout.decode().split():
            break
        time.sleep(0.2)
    assert "sh" not in ps.stdout.decode().split()
