"""sdexec as the sdexec broker module of a real 4-broker Flux instance.

The instance is configured as a site would replace flux-core's C module
(``[systemd] enable``, ``[modules.sdexec] module = ...``,
``[exec] service = "sdexec"``), so rc1 loads our module on every rank and
job-exec launches job shells through it.  It runs on the session's confined
systemd user manager; flux-core's ``sdmon`` is pointed at the same manager
(the test machines have no system manager).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fluxinstance import MODULE, FluxInstance, flux_or_skip, release_units, units
from terminal import tmux

from sdexec.systemd.private import PrivateManager

SIZE = 4
GUEST = 65534


def site_config(extra: str = "") -> str:
    return (
        "[systemd]\nenable = true\n\n"
        f'[modules.sdexec]\nmodule = "{MODULE}"\n\n'
        '[exec]\nservice = "sdexec"\n\n'
        "[access]\nallow-guest-user = true\n" + extra
    )


def start_instance(
    manager: PrivateManager, workdir: Path, *broker_args: str, size: int = SIZE
) -> FluxInstance:
    inst = FluxInstance(
        flux_or_skip(),
        manager,
        workdir,
        size=size,
        config=site_config(),
        extra_env={"DBUS_SYSTEM_BUS_ADDRESS": manager.bus_address},
        broker_args=list(broker_args),
    )
    inst.start()
    inst.must("flux", "resource", "status")  # rc1 is done: every rank runs sdexec
    deadline = time.monotonic() + 60
    while "avail ✔" not in inst.run("flux", "resource", "status").stdout:
        assert time.monotonic() < deadline, inst.run("flux", "resource", "status").stdout
        time.sleep(0.2)
    return inst


def clean_stop(inst: FluxInstance) -> None:
    rc = inst.stop()
    log = inst.log_path.read_text(errors="replace")
    assert "Traceback" not in log, inst.tail(80)
    assert "module runtime failure" not in log
    assert rc == 0, inst.tail(40)


@pytest.fixture(scope="module")
def inst(manager: PrivateManager, workdir: Path) -> Iterator[FluxInstance]:
    before = set(units(manager, "*.service"))
    instance = start_instance(manager, workdir / "flux-module")
    try:
        yield instance
    finally:
        clean_stop(instance)
        # The instance is gone with its rundir (the modules' state): nothing
        # could adopt its units again, so it stopped even the background ones.
        left = set(units(manager, "*.service")) - before
        report = leftover_report(manager, instance, left)
        release_units(manager, left)  # so that one leak does not fail the tests after these
        assert not left, f"units left behind by the instance:\n{report}"


def leftover_report(manager: PrivateManager, inst: FluxInstance, left: set[str]) -> str:
    """Each unit left behind: its state as systemd has it, and what the modules said of it."""
    log = inst.log_path.read_text(errors="replace").splitlines()
    lines = []
    for unit in sorted(left):
        show = subprocess.run(
            ["systemctl", "--user", "show", "-p", "LoadState,ActiveState,SubState,Result", unit],
            env=manager.env(),
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        lines.append(f"{unit}: {' '.join(show.split())}")
        lines += [f"  {line}" for line in log if unit in line or "unloading" in line]
    return "\n".join(lines)


def wait_for(predicate: object, timeout: float = 30.0, what: str = "condition") -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def module_pid(inst: FluxInstance, rank: int) -> int:
    stats = json.loads(
        inst.must("flux", "exec", "-r", str(rank), "flux", "module", "stats", "sdexec")
    )
    return int(stats["pid"])


# --- the module on every rank -------------------------------------------------------


def test_site_config_loads_our_module_on_every_rank(inst: FluxInstance) -> None:
    out = inst.must("flux", "exec", "-r", "all", "flux", "module", "list", "-l")
    lines = [line for line in out.splitlines() if line.startswith("sdexec ")]
    assert len(lines) == SIZE and all(str(MODULE) in line for line in lines)


def test_flux_exec_reaches_sdexec_on_every_rank(inst: FluxInstance) -> None:
    out = inst.must("flux", "exec", "-r", "all", "--service=sdexec", "printenv", "FLUX_URI")
    uris = out.split()
    local = [
        inst.must("flux", "exec", "-r", str(r), "flux", "getattr", "local-uri").strip()
        for r in range(SIZE)
    ]
    assert sorted(uris) == sorted(local)  # each unit talks to its own rank's broker


def test_flux_exec_exit_status_and_missing_command(inst: FluxInstance) -> None:
    r = inst.run("flux", "exec", "-r", "2", "--service=sdexec", "sh", "-c", "exit 7")
    assert r.returncode == 7
    r = inst.run("flux", "exec", "-r", "2", "--service=sdexec", "/nonexistent")
    assert r.returncode == 127 and "No such file or directory" in r.stderr
    r = inst.run(
        "flux", "exec", "-r", "2", "--service=sdexec", "--setopt=SDEXEC_PROP_Bogus=1", "true"
    )
    assert r.returncode != 0 and "Bogus" in r.stderr
    assert inst.must("flux", "exec", "-r", "2", "--service=sdexec", "echo", "still serving") == (
        "still serving\n"
    )


# --- jobs through job-exec ----------------------------------------------------------------


def test_jobs_run_through_job_exec_bulk_exec(inst: FluxInstance) -> None:
    out = inst.must("flux", "run", "-N4", "-n4", "--label-io", "sh", "-c", "echo $FLUX_TASK_RANK")
    assert sorted(out.splitlines()) == [f"{r}: {r}" for r in range(SIZE)]
    assert inst.run("flux", "run", "-N2", "false").returncode == 1


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_wait_output_holds_the_last_of_a_burst_written_just_before_the_end(
    inst: FluxInstance, stream: str
) -> None:
    """``wait --output``: the tail of all the process wrote, up to its very last line."""
    redirect = ">&2" if stream == "stderr" else ""
    inst.must(
        "flux", "exec", "-r", "1", "--service=sdexec", "--bg", "--waitable",
        f"--label=burst-{stream}", "sh", "-c", f"seq 1 20000 {redirect}",
    )  # fmt: skip
    r = inst.run(
        "flux", "sproc", "wait", "-r", "1", "--service=sdexec", "--output", f"burst-{stream}"
    )
    assert r.returncode == 0, r.stderr
    got = r.stderr if stream == "stderr" else r.stdout
    assert (r.stdout if stream == "stderr" else r.stderr) == ""
    full = "".join(f"{i}\n" for i in range(1, 20001))
    assert got.endswith("19999\n20000\n") and full.endswith(got), got[-200:]
    assert 4096 < len(got) <= 8192


def test_bgexec_job_survives_an_sdexec_reload(inst: FluxInstance, manager: PrivateManager) -> None:
    """job-exec bgexec: remove job-exec, reload sdexec everywhere, load job-exec: it completes."""
    inst.must("flux", "module", "reload", "job-exec", "method=bgexec")
    try:
        jobid = inst.must(
            "flux",
            "submit",
            "--flags=debug",
            "-N2",
            "-n2",
            "sh",
            "-c",
            "echo started-$FLUX_TASK_RANK; sleep 6; echo done-$FLUX_TASK_RANK; exit 3",
        ).strip()
        inst.must("flux", "job", "wait-event", "-p", "exec", "-t", "60", jobid, "recoverable")
        inst.must("flux", "module", "remove", "job-exec")
        inst.remove_sdexec()
        assert units(manager, "sdexec-*"), "the background units ended with the module"
        inst.load_sdexec()
        shells = [
            line
            for line in inst.must("sdexec", "ps", "-r", "all").splitlines()
            if " shell-" in line
        ]
        assert len(shells) == 2, shells  # the new modules re-adopted both ranks' job shells
        inst.must("flux", "module", "load", "job-exec", "method=bgexec")
        inst.must("flux", "job", "wait-event", "-t", "60", jobid, "clean")
        status = inst.run("flux", "job", "status", jobid)
        assert status.returncode == 3, status.stderr
        assert inst.run("flux", "job", "wait-event", "-t", "2", jobid, "exception").returncode != 0
        out = inst.run("flux", "job", "attach", jobid).stdout
        assert sorted(out.split()) == ["done-0", "done-1", "started-0", "started-1"]
    finally:
        if "job-exec" in inst.must("flux", "module", "list"):
            inst.must("flux", "module", "reload", "job-exec")
        else:
            inst.must("flux", "module", "load", "job-exec")


# --- the sdexec CLI through Flux ------------------------------------------------------------


def test_cli_reaches_all_ranks_and_one_rank(inst: FluxInstance) -> None:
    out = inst.must("sdexec", "exec", "-r", "all", "-l", "printenv", "SDEXEC_RANK")
    assert sorted(out.splitlines()) == [f"{r}: {r}" for r in range(SIZE)]
    uri2 = inst.must("flux", "exec", "-r", "2", "flux", "getattr", "local-uri").strip()
    assert inst.must("sdexec", "exec", "-r", "2", "printenv", "FLUX_URI").strip() == uri2
    r = inst.run("sdexec", "exec", "-r", "1,3", "sh", "-c", "exit 4")
    assert r.returncode == 4 and "[1,3]: exit 4" in r.stderr


def test_ps_lists_every_rank_with_hostnames(inst: FluxInstance) -> None:
    inst.must("sdexec", "exec", "-r", "0-3", "--bg", "--label", "psjob", "sleep", "30")
    try:
        out = inst.must("sdexec", "ps", "-r", "all")
        assert out.splitlines()[0].split()[:3] == ["RANK", "HOST", "PID"]
        hostlist = inst.must("flux", "getattr", "hostlist").strip()  # "vm,vm,vm,vm" here
        rows = [line.split() for line in out.splitlines() if "psjob" in line]
        assert sorted(row[0] for row in rows) == [str(r) for r in range(SIZE)]
        assert {row[1] for row in rows} <= set(hostlist.replace("[", ",").split(","))
        labelled = inst.must("sdexec", "exec", "-r", "1", "-L", "echo", "hi").strip()
        assert labelled.endswith(": hi") and labelled.split(":")[0] == rows[0][1]
    finally:
        inst.must("sdexec", "kill", "-r", "all", "psjob")


def test_top_shows_the_units_of_every_rank(inst: FluxInstance) -> None:
    inst.must("sdexec", "exec", "-r", "1,3", "--bg", "--label", "topjob", "sleep", "30")
    try:
        procs = json.loads(inst.must("sdexec", "top", "-r", "all", "--json"))["procs"]
        assert sorted(p["rank"] for p in procs if p["label"] == "topjob") == [1, 3]
    finally:
        inst.must("sdexec", "kill", "-r", "1,3", "topjob")


def test_attach_replays_a_job_unit_from_another_rank(inst: FluxInstance) -> None:
    inst.must(
        "sdexec",
        "exec",
        "-r",
        "3",
        "--bg",
        "--waitable",
        "--label",
        "replayed",
        "sh",
        "-c",
        "echo before; sleep 2; echo after >&2; exit 6",
    )
    time.sleep(0.5)  # "before" is written before anyone attaches
    # sdexec attach run on rank 1 (inside a unit of rank 1's sdexec), reaching rank 3.
    r = inst.run(
        "flux",
        "exec",
        "-r",
        "1",
        "--service=sdexec",
        sys.executable,
        "-m",
        "sdexec.cli.main",
        "attach",
        "-r",
        "3",
        "replayed",
    )
    assert r.returncode == 6, r.stderr
    assert r.stdout == "before\n" and "after" in r.stderr


def test_a_terminal_reaches_another_rank(inst: FluxInstance, tmp_path: Path) -> None:
    """exec --pty through the broker to rank 2: a pts there, the pane's size,
    a resize followed, Ctrl-C delivered, the remote exit code."""
    sdexec = shlex.join([sys.executable, "-m", "sdexec.cli.main"])
    with tmux(tmp_path, inst.env()) as term:
        term.split()
        cols, rows = term.pane_size()
        term.type(
            f"{sdexec} exec -r 2 -t -- sh -c 'echo rank=$SDEXEC_RANK; tty; stty size;"
            " read x; stty size; sleep 300'; echo rc=$?"
        )
        term.wait_text(rf"rank=2\s+/dev/pts/\d+\s+{rows} {cols}\s")
        new_cols, new_rows = term.resized(cols - 11)
        assert new_cols == cols - 11
        term.type("")
        term.wait_text(rf"\n{new_rows} {new_cols}\s")
        term.keys("C-c")
        term.wait_text(r"rc=130\b")


def test_a_background_terminal_on_one_rank_is_attached_from_another(
    inst: FluxInstance, tmp_path: Path
) -> None:
    inst.must("sdexec", "exec", "-r", "3", "--bg", "--pty", "--label", "fluxterm", "--", "sh")
    try:
        sdexec = shlex.join([sys.executable, "-m", "sdexec.cli.main"])
        with tmux(tmp_path, inst.env()) as term:
            term.type(f"{sdexec} attach -r 3 fluxterm; echo rc=$?")
            term.wait_for(lambda screen: screen.strip() == "#")  # the remote sh's screen
            term.type("echo on-$SDEXEC_RANK-$((6*7))")
            term.wait_text(r"\non-3-42\b")
            term.keys("C-]")  # the detach key: the session stays
            term.wait_text(r"detached from fluxterm; it goes on running.*\s+rc=0\b")
        ps = inst.must("sdexec", "ps", "-r", "3", "-o", "{label} {state}")
        assert "fluxterm R" in ps
    finally:
        inst.must("sdexec", "kill", "-r", "3", "-s", "KILL", "fluxterm")


# --- authorization ---------------------------------------------------------------------------


def test_a_guest_cannot_start_and_sees_none_of_the_owners_processes(inst: FluxInstance) -> None:
    """A guest may list and signal only its own jobs' shells (tests/site has those)."""
    rundir = inst.must("flux", "getattr", "rundir").strip()
    os.chmod(rundir, 0o711)  # let the guest reach the local connector's socket
    guest = ["setpriv", f"--reuid={GUEST}", f"--regid={GUEST}", "--clear-groups"]
    cli = [sys.executable, "-m", "sdexec.cli.main"]
    r = inst.run(*guest, inst.flux, "exec", "-r", "1", "--service=sdexec", "true")
    assert r.returncode != 0 and "Request requires owner credentials" in r.stderr
    inst.must(*cli, "exec", "-r", "1", "--bg", "--label", "owners", "--", "sleep", "30")
    try:
        r = inst.run(*guest, *cli, "ps", "-r", "1")
        assert r.returncode == 0, r.stderr
        assert "owners" not in r.stdout
        r = inst.run(*guest, *cli, "kill", "-r", "1", "owners")
        assert r.returncode != 0 and "not found" in r.stderr, r.stderr
        r = inst.run(*guest, *cli, "wait", "-r", "1", "owners")
        assert r.returncode != 0 and "owner credentials" in r.stderr, r.stderr
    finally:
        inst.must(*cli, "kill", "-r", "1", "owners")


def test_rank0_refuses_requests_from_other_ranks(inst: FluxInstance) -> None:
    r = inst.run("flux", "exec", "-r", "1", "flux", "exec", "-r", "0", "--service=sdexec", "true")
    assert r.returncode == 126 and "not allowed on rank 0" in r.stderr
    r = inst.run(
        "flux", "exec", "-r", "1", sys.executable, "-m", "sdexec.cli.main", "ps", "-r", "0"
    )
    assert r.returncode != 0 and "not allowed on rank 0" in r.stderr
    # From rank 0 itself, and to other ranks from rank 1, all is well.
    inst.must("flux", "exec", "-r", "1", "flux", "exec", "-r", "2", "--service=sdexec", "true")


def test_disconnect_kills_the_clients_foreground_units(
    inst: FluxInstance, manager: PrivateManager
) -> None:
    before = set(units(manager))
    client = subprocess.Popen(
        [inst.flux, "exec", "-r", "2", "--service=sdexec", "sleep", "300"],
        env=inst.env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: set(units(manager)) - before, what="the foreground unit")
        (unit,) = set(units(manager)) - before
        client.send_signal(signal.SIGKILL)  # no kill request: only the disconnect
        client.wait(10)
        wait_for(lambda: unit not in units(manager), what=f"{unit} to stop")
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()


# --- lifecycle ---------------------------------------------------------------------------------


def test_module_remove_stops_foreground_and_keeps_background(
    inst: FluxInstance, manager: PrivateManager
) -> None:
    inst.must(
        "sdexec",
        "exec",
        "-r",
        "3",
        "--bg",
        "--waitable",
        "--label",
        "keeper",
        "sh",
        "-c",
        "sleep 3; exit 9",
    )
    before = set(units(manager))
    fg = subprocess.Popen(
        [inst.flux, "exec", "-r", "3", "--service=sdexec", "sleep", "300"],
        env=inst.env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: set(units(manager)) - before, what="the foreground unit")
        fg_units = set(units(manager)) - before
        t0 = time.monotonic()
        inst.remove_sdexec("3")
        elapsed = time.monotonic() - t0
        print(f"flux module remove sdexec on rank 3: {elapsed * 1000:.0f} ms")
        _, err = fg.communicate(timeout=30)
        assert fg.returncode != 0 and b"unloading" in err
        wait_for(lambda: not (fg_units & set(units(manager))), what="the foreground unit to stop")
        inst.load_sdexec("3")
        r = inst.run("sdexec", "wait", "-r", "3", "keeper")
        assert r.returncode == 9, r.stderr
    finally:
        if fg.poll() is None:
            fg.kill()
            fg.wait()


def test_server_events_are_in_the_broker_log(inst: FluxInstance) -> None:
    inst.must("flux", "exec", "-r", "2", "--service=sdexec", "true")
    dmesg = inst.must("flux", "exec", "-r", "2", "flux", "dmesg")
    assert "sdexec.info[2]: exec argv=" in dmesg and "sdexec.info[2]: finished exit_code=0" in dmesg


def test_the_module_warms_cgroup_migrations_as_the_server_does(inst: FluxInstance) -> None:
    """The same warm-up as ``sdexec serve`` (sdexec.server.warmup), in the broker's cgroup."""
    for rank in range(SIZE):
        dmesg = inst.must("flux", "exec", "-r", str(rank), "flux", "dmesg")
        assert "cgroup migrations warmed" in dmesg, dmesg[-2000:]
        assert "cgroup migrations not warmed" not in dmesg


def test_module_killed_with_sigkill(manager: PrivateManager, workdir: Path) -> None:
    """Requests in flight and new ones fail cleanly; reloading re-adopts the units."""
    before = set(units(manager))
    inst = start_instance(manager, workdir / "flux-sigkill", "-Sbroker.module-nopanic=1")
    try:
        inst.must(
            "sdexec",
            "exec",
            "-r",
            "1",
            "--bg",
            "--waitable",
            "--label",
            "survivor",
            "sh",
            "-c",
            "sleep 3; exit 7",
        )
        waiter = subprocess.Popen(
            [sys.executable, "-m", "sdexec.cli.main", "wait", "-r", "1", "survivor"],
            env=inst.env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        # The wait is in flight once the module has taken it (a loaded machine
        # can take longer than any fixed pause to start the waiter).
        wait_for(
            lambda: "wait requester=" in inst.must("flux", "exec", "-r", "1", "flux", "dmesg"),
            what="rank 1's module to take the wait",
        )
        os.kill(module_pid(inst, 1), signal.SIGKILL)
        _, err = waiter.communicate(timeout=20)
        assert waiter.returncode != 0 and b"module disconnect" in err
        r = inst.run("flux", "exec", "-r", "1", "--service=sdexec", "true")
        assert r.returncode != 0
        inst.load_sdexec("1")
        r = inst.run("sdexec", "wait", "-r", "1", "survivor")
        assert r.returncode == 7, r.stderr
    finally:
        inst.stop()
        # A failure above leaves the unit to nobody: release it for the tests after this one.
        left = set(units(manager)) - before
        release_units(manager, left)
    assert not left, f"units left behind: {left}"


def test_resources_mapped_by_sdexec_mapper_are_checked(inst: FluxInstance) -> None:
    """SDEXEC_R_LOCAL: sdexec-mapper gives AllowedCPUs; unenforced, the exec fails with EIO."""
    loaded = "sdexec-mapper" in inst.must("flux", "exec", "-r", "1", "flux", "module", "list")
    if not loaded:
        inst.must("flux", "exec", "-r", "1", "flux", "module", "load", "sdexec-mapper")
    try:
        check_mapped_resources(inst)
    finally:
        if not loaded:  # what a test loads by hand, it removes (rc3 would not)
            inst.must("flux", "exec", "-r", "1", "flux", "module", "remove", "sdexec-mapper")


def check_mapped_resources(inst: FluxInstance) -> None:
    r_local = inst.must("flux", "R", "encode", "--ranks=1", "--cores=0").strip()
    # (A process that is still there when it is checked: the check reads its cgroup.)
    r = inst.run(
        "flux",
        "exec",
        "-r",
        "1",
        "--service=sdexec",
        f"--setopt=SDEXEC_R_LOCAL={r_local}",
        "sleep",
        "1",
    )
    # These machines do not delegate the cpuset controller to the user manager.
    assert r.returncode != 0 and "AllowedCPUs not enforced" in r.stderr, r.stderr
    dmesg = inst.must("flux", "exec", "-r", "1", "flux", "dmesg")
    assert "post-start check failed" in dmesg
    r = inst.run(
        "flux", "exec", "-r", "1", "--service=sdexec", "--setopt=SDEXEC_R_LOCAL=not json", "true"
    )
    assert r.returncode != 0 and "sdexec-mapper.lookup failed" in r.stderr
    assert inst.must("flux", "exec", "-r", "1", "--service=sdexec", "echo", "ok") == "ok\n"


def test_background_units_survive_a_broker_restart(manager: PrivateManager, workdir: Path) -> None:
    """With a persistent statedir, the next instance's module adopts the units."""
    statedir = workdir / "flux-restart-state"
    statedir.mkdir()
    first = start_instance(manager, workdir / "flux-restart-1", f"-Sstatedir={statedir}", size=1)
    try:
        first.must(
            "sdexec",
            "exec",
            "--bg",
            "--waitable",
            "--label",
            "across",
            "sh",
            "-c",
            "echo from-before; sleep 4; exit 5",
        )
    finally:
        clean_stop(first)
    assert [u for u in units(manager) if "across" in u], "the unit ended with the instance"
    second = start_instance(manager, workdir / "flux-restart-2", f"-Sstatedir={statedir}", size=1)
    try:
        r = second.run("sdexec", "wait", "across")
        assert r.returncode == 5, r.stderr
        assert second.must("sdexec", "logs", "across") == "from-before\n"
    finally:
        clean_stop(second)


def test_perilog_runs_on_every_rank_through_flux(inst: FluxInstance) -> None:
    r = inst.run(
        "sdexec",
        "perilog",
        "run",
        "--phase",
        "prolog",
        "-r",
        "all",
        "--timeout",
        "30",
        "--json",
        "--",
        "sh",
        "-c",
        'echo "prolog on $SDEXEC_RANK"; test "$SDEXEC_RANK" != 2',
    )
    assert r.returncode == 1, r.stderr
    report = json.loads(r.stdout)
    (drained,) = report["drain"]
    assert drained["rank"] == 2 and drained["outcome"] == "exit", drained
    assert "prolog on 2" in "\n".join(drained["output"])


BAD_PAYLOADS = [
    ("sdexec.exec", {}),
    ("sdexec.exec", {"cmd": {}, "flags": 0}),
    ("sdexec.exec", {"cmd": {"cmdline": [], "env": {}, "opts": {}, "channels": []}, "flags": 3}),
    ("sdexec.exec", {"cmd": {"cmdline": [1], "env": {}, "opts": {}, "channels": []}, "flags": 3}),
    (
        "sdexec.exec",
        {"cmd": {"cmdline": ["true"], "env": [], "opts": {}, "channels": []}, "flags": 3},
    ),
    (
        "sdexec.exec",
        {"cmd": {"cmdline": ["true"], "env": {}, "opts": {}, "channels": []}, "flags": -1},
    ),
    (
        "sdexec.exec",
        {
            "cmd": {
                "cmdline": ["true"],
                "env": {},
                "opts": {"SDEXEC_PROP_ExecStart": "x"},
                "channels": [],
            },
            "flags": 3,
        },
    ),
    (
        "sdexec.exec",
        {
            "cmd": {
                "cmdline": ["true"],
                "env": {},
                "opts": {"stdout_LINE_BUFFER": "x"},
                "channels": [],
            },
            "flags": 3,
        },
    ),
    (
        "sdexec.exec",
        {
            "cmd": {
                "cmdline": ["true"],
                "env": {},
                "opts": {"SDEXEC_STOP_TIMER_SEC": "x"},
                "channels": [],
            },
            "flags": 3,
        },
    ),
    ("sdexec.kill", {"pid": "x", "signum": 9}),
    ("sdexec.kill", {"pid": 1, "signum": 999}),
    ("sdexec.wait", {"label": 7}),
    ("sdexec.wait", {"pid": 999999}),
    ("sdexec.attach", {"pid": -1, "label": ""}),
    ("sdexec.logs", {"pid": -1, "label": "nope", "tail": -3}),
    ("sdexec.nosuchmethod", {}),
]


def test_bad_requests_through_the_broker_get_an_errno_and_the_module_keeps_serving(
    inst: FluxInstance,
) -> None:
    import asyncio

    from sdexec.client.handle import Handle

    async def send_all() -> list[tuple[str, int]]:
        handle = await Handle.connect(inst.uri)
        got = []
        try:
            for topic, payload in BAD_PAYLOADS:
                streaming = topic in ("sdexec.attach", "sdexec.logs")
                try:
                    if streaming:
                        async for _ in handle.stream(topic, payload, nodeid=1):
                            pass
                        got.append((topic, 0))
                    else:
                        await handle.rpc(topic, payload, nodeid=1)
                        got.append((topic, 0))
                except OSError as exc:
                    got.append((topic, exc.errno or 0))
            return got
        finally:
            await handle.close()

    results = asyncio.run(send_all())
    assert all(errnum != 0 for _, errnum in results), results
    assert inst.must("flux", "exec", "-r", "1", "--service=sdexec", "echo", "alive") == "alive\n"
    assert "Traceback" not in inst.log_path.read_text(errors="replace")


def test_a_bad_module_argument_fails_the_load_and_says_why(inst: FluxInstance) -> None:
    inst.remove_sdexec("2")
    try:
        r = inst.run(
            "flux",
            "exec",
            "-r",
            "2",
            "flux",
            "module",
            "load",
            "--name=sdexec",
            str(MODULE),
            "bogus=1",
        )
        assert r.returncode != 0 and "Invalid argument" in r.stderr
        log = inst.log_path.read_text(errors="replace")
        assert "unknown module argument 'bogus=1'" in log
    finally:
        inst.load_sdexec("2")
    assert inst.must("flux", "exec", "-r", "2", "--service=sdexec", "echo", "back") == "back\n"


def test_no_systemd_bus_fails_the_load_cleanly(manager: PrivateManager, workdir: Path) -> None:
    """The load fails with the reason; the instance lives on (no broker panic)."""
    inst = FluxInstance(
        flux_or_skip(),
        manager,
        workdir / "flux-nobus",
        size=1,
        extra_env={"DBUS_SESSION_BUS_ADDRESS": "unix:path=/nonexistent/bus"},
    )
    inst.start()
    try:
        r = inst.run("flux", "module", "load", "--name=sdexec", str(MODULE))
        assert r.returncode != 0
        assert "sdexec" not in inst.must("flux", "module", "list")
        log = inst.log_path.read_text(errors="replace")
        assert "module failed errnum=" in log and "Traceback" not in log
        assert inst.must("flux", "getattr", "size").strip() == "1"  # still there
    finally:
        assert inst.stop() == 0
