"""Our module in a 3-node system instance (job-exec's bgexec): restarts, and operators' tools.

Our module keeps its state in ``/var/lib/flux/sdexec.<rank>`` on every rank
(systemd's ``StateDirectory=`` of ``flux.service``), so ``systemctl restart
flux`` on a follower leaves its background units running and the restarted
module adopts them again.  An operator's shell on a node (as ``flux`` or
root) has no ``FLUX_URI``: our CLI finds the node's system instance as
flux's own commands do.
"""

from __future__ import annotations

import errno
import re
import time
from collections.abc import Iterator

import pytest
from conftest import Site

# The first test of a run may build the root filesystem (minutes) and boots the site.
pytestmark = pytest.mark.timeout(900)

FLUX_URI = "FLUX_URI=local:///run/flux/local"
#: An RFC 42 attach (not a follower) of a job shell on rank 1, as its guest.
CLAIM = """
import flux, flux.constants
h = flux.Flux()
f = h.rpc("sdexec.attach", {{"label": "{label}", "flags": 3}}, nodeid=1,
          flags=flux.constants.FLUX_RPC_STREAMING)
try:
    print("0", f.get())
except OSError as exc:
    print(exc.errno, exc.strerror)
"""


@pytest.fixture(scope="module")
def site(start_site: object) -> Iterator[Site]:
    with start_site(nodes=3, exec_method="bgexec") as s:  # type: ignore[operator]
        yield s


def sdexec(site: Site, node: int, args: str) -> tuple[int, str]:
    """Our CLI as the instance owner on ``node``, through its broker."""
    res = site.as_flux(node, f"env {FLUX_URI} sdexec {args}")
    return res.returncode, res.stdout + res.stderr


def restart_flux(site: Site, node: int) -> float:
    """Restart ``flux.service`` on ``node``; how long until its broker runs again."""
    since = site.ok(node, "date +%s.%N").strip()
    started = time.monotonic()
    site.ok(node, "systemctl restart flux")
    site.wait_until(
        f"node{node}'s broker back in its run state",
        lambda: site.run(node, "flux uptime").stdout.split()[1:2] == ["run"],
        timeout=60,
    )
    site.wait_until(
        f"sdexec loaded again on node{node}",
        lambda: (
            "sdexec.info" in broker_log(site, node, since)
            and " loaded rank=" in broker_log(site, node, since)
        ),
        timeout=30,
    )
    return time.monotonic() - started


def broker_log(site: Site, node: int, since: str) -> str:
    """``flux.service``'s journal on ``node`` since the epoch time ``since``."""
    return site.ok(node, f"journalctl -u flux --no-pager -o cat --since=@{since}")


def test_a_background_unit_outlives_a_follower_restart_and_is_adopted(site: Site) -> None:
    script = 'echo before; trap "echo got-term; exit 3" TERM; while :; do sleep 0.1; done'
    status, out = sdexec(site, 1, f"exec --bg --waitable --label keep1 -- sh -c '{script}'")
    assert status == 0, out
    pid = out.strip()
    site.wait_until(
        "the first line in the journal", lambda: "before" in sdexec(site, 1, "logs keep1")[1]
    )
    since = site.ok(1, "date +%s.%N").strip()
    restart_flux(site, 1)
    text = broker_log(site, 1, since)
    assert re.search(r"unloading procs=\d+ reason=broker-restart stop_background=False", text)
    assert re.search(r"unloaded kept=[1-9]", text)
    assert re.search(rf"re-adopted state=R unit=\S+ label=keep1 pid={pid} ", text)
    status, out = sdexec(site, 1, "ps")
    assert re.search(rf"^ *{pid} keep1 +R ", out, re.M), out
    assert sdexec(site, 1, "kill -s TERM keep1")[0] == 0
    status, out = sdexec(site, 1, "wait keep1")
    assert status == 3, out
    # Its output from before and after the restart, each stream to its own
    # ("Terminated" on stderr: sh about its sleep, which got the signal too).
    logs = site.as_flux(1, f"env {FLUX_URI} sdexec logs keep1")
    assert (logs.stdout, logs.stderr) == ("before\ngot-term\n", "Terminated\n")


def test_a_bgexec_job_across_a_follower_restart(site: Site) -> None:
    """What happens to the job, measured: its shell on the restarted node loses
    its broker and fails the job (flux-core: a job shell cannot outlive its
    broker); the unit itself is not stopped by the unload, is adopted again
    with the shell's exit status, and is kept (finished) until waited for.
    flux-core's C module, measured in the same harness, stops the unit at
    unload; the job gets one more exception ("sdexec service is not loaded
    on node1") and ends the same way (exit 143)."""
    jobid = site.ok(0, "flux submit -N3 sh -c 'echo start; sleep 30'", user="alice").strip()
    site.ok(0, f"flux job wait-event -t 30 {jobid} start", user="alice")
    label = f"imp-shell-1-f{jobid.removeprefix('ƒ')}"
    since = site.ok(1, "date +%s.%N").strip()
    restart_flux(site, 1)
    text = broker_log(site, 1, since)
    assert "reason=broker-restart stop_background=False" in text
    assert re.search(rf"re-adopted state=\S+ .*label={label} ", text), text
    site.ok(0, f"flux job wait-event -t 60 {jobid} clean", user="alice")
    events = site.ok(0, f"flux job eventlog {jobid}", user="alice")
    assert re.search(r"exception type=\"exec\" severity=0", events), events
    for node in range(3):
        site.wait_until(
            f"no process of alice on node{node}", lambda n=node: site.pids_of(n, "alice") == []
        )
    # The shell's unit, finished, waits for a wait that job-exec no longer
    # makes; root on rank 0's node releases it by label, with its status.
    assert re.search(rf"^ +1 node1 +\d+ {label} +Z ", site.ok(0, "sdexec ps -r all"), re.M)
    res = site.run(0, f"sdexec wait -r 1 {label}")
    assert res.returncode == 1, res.stderr  # the job shell exited 1 (it lost its broker)
    assert [u for u in site.units(1) if label in u] == []


def test_operators_reach_every_rank_without_flux_uri(site: Site) -> None:
    status, out = sdexec(site, 2, "exec --bg --label op1 -- sleep 30")
    assert status == 0, out
    for user in ("flux", None):  # the instance owner, and root (allow-root-owner)
        res = site.run(0, "sdexec ps -r all", user=user)
        assert res.returncode == 0, res.stderr
        assert re.search(r"^ +2 node2 +\d+ op1 +R ", res.stdout, re.M), res.stdout
        top = site.run(0, "sdexec top -r all --once", user=user)
        assert top.returncode == 0 and " op1 " in top.stdout, top.stdout + top.stderr
        # A follower from another node: still attached when `timeout` ends it.
        res = site.run(1, "timeout 2 sdexec attach -r 2 op1", user=user)
        assert res.returncode == 124, res.stderr
    # Rank 0 takes requests from its own node only, as flux-core's module does.
    res = site.run(1, "sdexec ps -r all", user="flux")
    assert res.returncode == 1
    assert "rank 0: Remote sdexec requests are not allowed on rank 0" in res.stderr
    assert re.search(r"^ +2 node2 +\d+ op1 +R ", res.stdout, re.M), res.stdout
    assert site.run(1, "sdexec kill -r 2 op1", user="flux").returncode == 0


def test_a_guest_sees_no_process_of_the_owner(site: Site) -> None:
    status, out = sdexec(site, 2, "exec --bg --label op2 -- sleep 30")
    assert status == 0, out
    try:
        res = site.run(0, "sdexec ps -r all -n", user="bob")
        assert res.returncode == 0, res.stderr
        assert "op2" not in res.stdout
        res = site.run(1, "sdexec kill -r 2 op2", user="bob")
        assert res.returncode == 1 and "not found" in res.stderr, res.stderr
    finally:
        assert sdexec(site, 2, "kill op2")[0] == 0


def test_a_guest_reads_and_follows_its_own_bgexec_shell(site: Site) -> None:
    jobid = site.ok(0, "flux submit -N3 sh -c 'echo hello; sleep 30'", user="alice").strip()
    label = f"imp-shell-1-f{jobid.removeprefix('ƒ')}"
    try:
        site.ok(0, f"flux job wait-event -t 30 {jobid} start", user="alice")
        listed = site.ok(0, "sdexec ps -r all -n", user="alice")
        assert len(re.findall(r" imp-shell-\d-f", listed)) == 3, listed
        res = site.run(1, f"sdexec logs -r 1 {label}", user="alice")
        assert res.returncode == 0, res.stderr
        # A follower: still attached when `timeout` ends it.
        res = site.run(1, f"timeout 3 sdexec attach -r 1 {label}", user="alice")
        assert res.returncode == 124, res.stderr
        # An RFC 42 attach would take the shell from job-exec, which waits for it.
        res = site.run(1, ["flux", "python", "-c", CLAIM.format(label=label)], user="alice")
        assert res.stdout.startswith(f"{errno.EPERM} "), res.stdout + res.stderr
        assert "belongs to the instance owner" in res.stdout
        res = site.run(1, f"sdexec logs -r 1 {label}", user="bob")
        assert res.returncode == 1 and "not found" in res.stderr, res.stderr
    finally:
        site.run(0, f"flux cancel {jobid}", user="alice")
        site.ok(0, f"flux job wait-event -t 30 {jobid} clean", user="alice")
    # job-exec still got its shells' status: the job ended by the cancel.
    assert "exception" in site.ok(0, f"flux job eventlog {jobid}", user="alice")
