"""Streaming exec through the real CLI against real systemd: exit codes, I/O, environment."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from conftest import Server


def test_true_exits_0(server: Server) -> None:
    assert server.sdexec("exec", "--", "true").returncode == 0


def test_false_exits_1(server: Server) -> None:
    assert server.sdexec("exec", "--", "false").returncode == 1


def test_missing_command_exits_127_with_enoent_text(server: Server) -> None:
    r = server.sdexec("exec", "--", "/notacmd")
    assert r.returncode == 127
    assert b"No such file or directory" in r.stderr


def test_non_executable_exits_126_with_eacces_text(server: Server) -> None:
    r = server.sdexec("exec", "--", "/dev/null")
    assert r.returncode == 126
    assert b"Permission denied" in r.stderr


def test_real_exit_203_is_not_an_exec_failure(server: Server) -> None:
    r = server.sdexec("exec", "--", "sh", "-c", "exit 203")
    assert r.returncode == 203
    assert r.stderr == b""


def test_exit_244_is_reported(server: Server) -> None:
    assert server.sdexec("exec", "--", "sh", "-c", "exit 244").returncode == 244


def test_every_code_in_systemds_own_range_is_the_programs(server: Server) -> None:
    for code in (200, 217, 226, 243):
        assert server.sdexec("exec", "--", "sh", "-c", f"exit {code}").returncode == code


def test_core_dump_exits_139(server: Server) -> None:
    assert server.sdexec("exec", "--", "sh", "-c", "kill -SEGV $$").returncode == 139


def test_sigterm_to_cli_reaches_process_and_cli_exits_143(server: Server) -> None:
    cli = server.popen(
        "exec",
        "--",
        "sh",
        "-c",
        "echo ready; sleep 30",
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )
    assert cli.stdout is not None
    assert cli.stdout.readline() == b"ready\n"
    cli.send_signal(signal.SIGTERM)
    assert cli.wait(10) == 143


def test_a_closed_reader_ends_the_command_with_sigpipe_as_in_a_shell(server: Server) -> None:
    # "sdexec exec yes | head -1": yes must die of SIGPIPE, not run forever.
    cli = server.popen("exec", "yes", stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    try:
        assert cli.stdout is not None
        assert cli.stdout.readline() == b"y\n"
        cli.stdout.close()
        assert cli.wait(30) == 128 + signal.SIGPIPE
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()


def test_hello_world_on_stdout(server: Server) -> None:
    r = server.sdexec("exec", "--", "echo", "Hello world!")
    assert (r.returncode, r.stdout, r.stderr) == (0, b"Hello world!\n", b"")


def test_hello_world_on_stderr(server: Server) -> None:
    r = server.sdexec("exec", "--", "sh", "-c", "echo 'Hello world!' >&2")
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"Hello world!\n")


def test_cat_echoes_stdin(server: Server) -> None:
    r = server.sdexec("exec", "--", "cat", input=b"some input\n")
    assert (r.returncode, r.stdout) == (0, b"some input\n")


def test_ten_thousand_lines_round_trip_in_order(server: Server) -> None:
    lines = b"".join(b"%05d " % i + b"x" * 73 + b"\n" for i in range(10_000))
    assert all(len(line) == 79 for line in lines.split(b"\n")[:-1])
    r = server.sdexec("exec", "--", "cat", input=lines)
    assert r.returncode == 0
    assert r.stdout == lines


def test_ten_thousand_lines_on_stderr(server: Server) -> None:
    lines = b"".join(b"%05d " % i + b"y" * 73 + b"\n" for i in range(10_000))
    r = server.sdexec("exec", "--", "sh", "-c", "cat >&2", input=lines)
    assert r.returncode == 0
    assert r.stderr == lines


def test_last_line_without_newline_is_kept(server: Server) -> None:
    r = server.sdexec("exec", "--", "printf", "one\\ntwo")
    assert r.stdout == b"one\ntwo"


def test_all_byte_values_round_trip(server: Server) -> None:
    data = bytes(range(256)) * 64
    r = server.sdexec("exec", "--", "cat", input=data)
    assert r.returncode == 0
    assert r.stdout == data


def test_no_stdin_flag_gives_immediate_eof(server: Server) -> None:
    r = server.sdexec("exec", "-n", "--", "cat", input=b"ignored")
    assert (r.returncode, r.stdout) == (0, b"")


def test_cwd_reaches_process(server: Server) -> None:
    r = server.sdexec("exec", "-d", "/usr/share", "--", "pwd")
    assert r.stdout == b"/usr/share\n"


def test_env_reaches_process(server: Server) -> None:
    r = server.sdexec("exec", "--env", "SDX_TEST=forty two", "--", "sh", "-c", 'echo "$SDX_TEST"')
    assert r.stdout == b"forty two\n"


def test_callers_environment_is_passed_by_default(server: Server) -> None:
    env = server.env(SDX_INHERITED="from caller")
    r = server.sdexec("exec", "--", "printenv", "SDX_INHERITED", env=env)
    assert r.stdout == b"from caller\n"


def test_server_sets_its_uri_in_the_environment(server: Server) -> None:
    r = server.sdexec("exec", "--", "printenv", "SDEXEC_URI")
    assert r.stdout.decode().strip() == server.uri


def test_dollar_words_in_arguments_arrive_literally(server: Server) -> None:
    r = server.sdexec("exec", "--", "printf", "%s|%s|%s", "$HOME", "$$", "${PATH}")
    assert r.stdout == b"$HOME|$$|${PATH}"


def test_one_mib_environment_arrives_whole(server: Server) -> None:
    env = server.env()
    for i in range(1024):
        env[f"SDX_BIG_{i:04d}"] = chr(ord("a") + i % 26) * 1024
    r = server.sdexec("exec", "--", "env", env=env)
    assert r.returncode == 0, r.stderr
    got = dict(
        line.split("=", 1) for line in r.stdout.decode().splitlines() if line.startswith("SDX_BIG_")
    )
    assert len(got) == 1024
    assert all(got[k] == env[k] for k in got)


def test_sigkill_of_streaming_client_ends_its_unit_within_a_second(server: Server) -> None:
    cli = server.popen(
        "exec",
        "--",
        "sh",
        "-c",
        "echo ready; exec sleep 300",
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )
    assert cli.stdout is not None
    assert cli.stdout.readline() == b"ready\n"
    units = server.units()
    assert units, "the process should be running as a unit"
    cli.send_signal(signal.SIGKILL)
    cli.wait(5)
    t0 = time.monotonic()
    while server.units() and time.monotonic() - t0 < 5:
        time.sleep(0.05)
    assert server.units() == []
    assert time.monotonic() - t0 < 1.0


def test_relative_command_is_found_on_the_commands_path(server: Server) -> None:
    r = server.sdexec("exec", "--env", f"PATH=/usr/bin:{os.environ.get('PATH', '')}", "--", "true")
    assert r.returncode == 0


def _wakeups(pid: int) -> int:
    """How many times the process has gone to sleep and been woken (all threads)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/status") as f:
            for line in f:
                if line.startswith("voluntary_ctxt_switches:"):
                    total += int(line.split()[1])
    return total


def test_an_idle_server_does_not_wake_up(server: Server) -> None:
    # After a command with a client has come and gone, nothing is polled: the
    # SIGSTOP watch sleeps until a process has a client again.
    assert server.sdexec("exec", "-n", "true").returncode == 0
    assert server.proc is not None
    time.sleep(0.3)
    before = _wakeups(server.proc.pid)
    time.sleep(1.0)
    assert _wakeups(server.proc.pid) - before <= 2  # a 50 ms poll would be ~20


def test_the_server_warms_cgroup_migrations_in_its_own_cgroup(server: Server) -> None:
    """sdexec.systemd.migration: running as root on cgroup2, the server's warmer is on."""
    assert server.sdexec("exec", "--", "true").returncode == 0
    log = server.log_path.read_text()
    assert '"cgroup migrations warmed"' in log
    assert "cgroup migrations not warmed" not in log
