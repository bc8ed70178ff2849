"""Guests' jobs in a 3-node Flux system instance, with our sdexec and side by side with flux-core's.

Each node is a container with systemd as PID 1; ``flux.service`` runs the
broker as ``flux``; guests' job shells start through the setuid IMP from
units of ``flux``'s own manager (``imp-shell-<rank>-<jobid>.service``).
Every test runs twice: with our module (from the ``.deb``, ``[modules.sdexec]``)
and with flux-core's C module, in the same harness; they must give the same
results.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from conftest import Site

# The first test of a run may build the root filesystem (minutes) and boots the site.
pytestmark = pytest.mark.timeout(900)

GUESTS = {"alice": 1001, "bob": 1002}
NODES = 3


@pytest.fixture(scope="module", params=["sdexec", "c"])
def site(request: pytest.FixtureRequest, start_site: object) -> Iterator[Site]:
    with start_site(nodes=NODES, module=request.param) as s:  # type: ignore[operator]
        yield s


def submit(site: Site, user: str, cmd: str, nodes: int = NODES) -> str:
    jobid = site.ok(0, f"flux submit -N{nodes} {cmd}", user=user).strip()
    # Its tasks run (a signal sent before would reach only the shells).
    site.ok(0, f"flux job wait-event -p exec -t 30 {jobid} shell.start", user=user)
    return jobid


def job_units(site: Site, jobid: str) -> dict[int, list[str]]:
    """The job's units on each node (their names carry the jobid in F58, ``f`` first)."""
    name = re.compile(rf"-f{re.escape(jobid.removeprefix('ƒ'))}[.-]")
    return {n: [u for u in site.units(n) if name.search(u)] for n in range(NODES)}


def test_every_rank_loaded_the_chosen_module(site: Site) -> None:
    if site.info.module == "c":
        listed = site.ok(0, "flux exec -r all flux module list")
        assert listed.count("sdexec") == NODES
        assert "module-python-exec sdexec" not in site.dmesg(1)
        return
    for node in range(NODES):
        text = site.dmesg(node)
        assert re.search(rf"sdexec\.info\[{node}\]: loaded rank={node} ", text), text
        assert f"state_dir=/var/lib/flux/sdexec.{node}" in text


@pytest.mark.parametrize("guest", sorted(GUESTS))
def test_run_on_three_nodes_prints_the_guests_uid_on_each(site: Site, guest: str) -> None:
    out = site.ok(0, "flux run -N3 --label-io id -u", user=guest)
    assert sorted(out.splitlines()) == [f"{rank}: {GUESTS[guest]}" for rank in range(NODES)]


def test_output_and_exit_code_are_exact(site: Site) -> None:
    res = site.run(
        0,
        "flux run -N3 -n3 sh -c 'printf \"o%s\\n\" $FLUX_TASK_RANK; echo e >&2; exit 7'",
        user="alice",
    )
    assert res.returncode == 7
    assert sorted(res.stdout.split()) == ["o0", "o1", "o2"]
    assert res.stderr.count("e\n") == 3
    assert "exited with exit code 7" in res.stderr


def test_a_task_killed_by_a_signal_ends_with_128_plus_it(site: Site) -> None:
    res = site.run(0, "flux run -N1 sh -c 'kill -SEGV $$'", user="bob")
    assert res.returncode == 128 + 11, res.stderr


@pytest.mark.parametrize("guest", sorted(GUESTS))
def test_cancel_leaves_no_process_and_no_unit(site: Site, guest: str) -> None:
    jobid = submit(site, guest, "sleep 30")
    running = job_units(site, jobid)
    assert all(len(units) == 1 for units in running.values()), running
    site.ok(0, f"flux cancel {jobid}", user=guest)
    site.ok(0, f"flux job wait-event -t 30 {jobid} clean", user=guest)
    for node in range(NODES):
        site.wait_until(
            f"no process of {guest} on node{node}", lambda n=node: site.pids_of(n, guest) == []
        )
    assert job_units(site, jobid) == {n: [] for n in range(NODES)}


def test_job_kill_ends_the_job_with_that_signal(site: Site) -> None:
    jobid = submit(site, "alice", "sleep 30")
    site.ok(0, f"flux job kill --signal=SIGUSR1 {jobid}", user="alice")
    res = site.run(0, f"flux job status {jobid}", user="alice")
    assert res.returncode == 128 + 10, res.stderr  # SIGUSR1
    assert job_units(site, jobid) == {n: [] for n in range(NODES)}


def test_a_guest_cannot_signal_or_attach_to_another_guests_job(site: Site) -> None:
    jobid = submit(site, "bob", "sleep 30")
    try:
        kill = site.run(0, f"flux job kill {jobid}", user="alice")
        assert kill.returncode == 1
        assert "guests may only send signals to their own jobs" in kill.stderr
        attach = site.run(0, f"timeout 10 flux job attach {jobid}", user="alice")
        assert attach.returncode == 1
        assert "that is not your job" in attach.stderr
        assert all(len(u) == 1 for u in job_units(site, jobid).values())
    finally:
        site.ok(0, f"flux cancel {jobid}", user="bob")
        site.ok(0, f"flux job wait-event -t 30 {jobid} clean", user="bob")


def test_a_guest_cannot_reach_sdexec_through_the_instance(site: Site) -> None:
    # Starting a process is the owner's (job-exec's) with either module.
    res = site.run(1, "flux exec -r 1 --service=sdexec id", user="alice")
    assert res.returncode != 0
    assert "Request requires owner credentials" in res.stderr


def shells(site: Site, user: str) -> dict[str, dict[int, str]]:
    """``sdexec ps -r all -l`` as ``user``: the job of each unit shown, and its pid per rank."""
    res = site.run(0, "sdexec ps -r all -l -n", user=user)
    assert res.returncode == 0, res.stderr
    seen: dict[str, dict[int, str]] = {}
    for line in res.stdout.splitlines():
        m = re.search(r"^ *(\d+) +\S+ +(\d+) .* imp-shell-(\d+)-f(\w+)\.service", line)
        assert m is not None, line
        seen.setdefault(m[4], {})[int(m[3])] = m[2]
        assert int(m[1]) == int(m[3]), line  # each rank shows its own unit
    return seen


def test_a_guest_sees_follows_and_signals_only_its_own_jobs_units(site: Site) -> None:
    """Ours lets a guest see the shells of its own jobs, which the C module refuses."""
    # -n3: a job of -N3 alone gets its nodes whole, and the other would wait.
    mine, theirs = submit(site, "alice", "-n3 sleep 60"), submit(site, "bob", "-n3 sleep 60")
    mine_id, theirs_id = mine.removeprefix("ƒ"), theirs.removeprefix("ƒ")
    try:
        if site.info.module == "c":
            res = site.run(0, "sdexec ps -r all", user="alice")
            assert res.returncode != 0
            assert "requires owner credentials" in res.stderr
            return
        alices, bobs = shells(site, "alice"), shells(site, "bob")
        assert set(alices) == {mine_id} and sorted(alices[mine_id]) == [0, 1, 2], alices
        assert set(bobs) == {theirs_id} and sorted(bobs[theirs_id]) == [0, 1, 2], bobs
        # Bob's shell, named by its pid, does not exist for alice.
        res = site.run(1, f"sdexec kill -r 1 {bobs[theirs_id][1]}", user="alice")
        assert res.returncode == 1
        assert "not found" in res.stderr, res.stderr
        res = site.run(1, f"sdexec logs -r 1 {bobs[theirs_id][1]}", user="alice")
        assert res.returncode == 1 and "not found" in res.stderr, res.stderr
        # Her own she may see (bulk-exec streams it: there is no log to
        # read; test_site_restart reads and follows a bgexec shell), but
        # job-exec waits for it, not she.
        ours = alices[mine_id][1]
        res = site.run(1, f"sdexec logs -r 1 {ours}", user="alice")
        assert "not a background process" in res.stderr, res.stderr
        res = site.run(1, f"sdexec wait -r 1 {ours}", user="alice")
        assert res.returncode != 0 and "requires owner credentials" in res.stderr, res.stderr
        top = site.ok(0, "sdexec top -r all --once", user="alice")
        assert top.count("imp-shell-") == NODES and theirs_id not in top, top
        # ... and signal it (the IMP passes it to the shell, which passes it
        # to its tasks): signalled on every rank, the job ends; bob's runs on.
        for rank, pid in sorted(alices[mine_id].items()):
            site.ok(rank, f"sdexec kill -r {rank} -s TERM {pid}", user="alice")
        site.ok(0, f"flux job wait-event -t 30 {mine} clean", user="alice")
        assert job_units(site, mine) == {n: [] for n in range(NODES)}
        assert all(len(u) == 1 for u in job_units(site, theirs).values())
    finally:
        for jobid, user in ((mine, "alice"), (theirs, "bob")):
            site.run(0, f"flux cancel {jobid}", user=user)
            site.ok(0, f"flux job wait-event -t 30 {jobid} clean", user=user)
