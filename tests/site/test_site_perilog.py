"""The site's prolog through sdexec, in a 3-node system instance.

job-manager runs ``[job-manager.prolog] command`` on rank 0 with the job's
ranks in ``FLUX_JOB_RANKS``; the site's command (``sitectl.PERILOG_COMMAND``)
runs ``sdexec perilog`` over those ranks, each rank's prolog a unit of its
own (the IMP's ``run prolog``: the site's script as root), with a timeout
that stops the whole unit, and drains the nodes where it failed with the
report's reason.  The harness's prolog fails where ``/etc/site-prolog-fail``
exists, saying its content.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from conftest import Site

# The first test of a run may build the root filesystem (minutes) and boots the site.
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def site(start_site: object) -> Iterator[Site]:
    with start_site(nodes=3, prolog=True) as s:  # type: ignore[operator]
        yield s


def drained(site: Site) -> dict[str, str]:
    out = site.ok(0, "flux resource drain -no '{nodelist} {reason}'")
    return dict(line.split(" ", 1) for line in out.splitlines() if line.strip())


def test_a_prolog_that_passes_runs_as_root_on_every_node_and_the_job_runs(site: Site) -> None:
    out = site.ok(0, "flux run -N3 --label-io hostname", user="alice")
    assert sorted(out.splitlines()) == ["0: node0", "1: node1", "2: node2"]
    for node in range(3):
        log = site.ok(node, "journalctl --no-pager -o short")
        assert re.search(rf"sdexec-prolog-\S+: prolog on node{node} as root$", log, re.M)
    assert drained(site) == {}


def test_a_prolog_that_fails_on_one_node_drains_it_and_the_job_does_not_run(site: Site) -> None:
    site.ok(2, "echo 'no /scratch on node2' > /etc/site-prolog-fail")
    try:
        res = site.run(0, "flux run -N3 --label-io hostname", user="alice", timeout=120)
        assert res.returncode != 0
        assert res.stdout == ""  # no task ran
        assert "prolog" in res.stderr
        assert drained(site) == {"node2": "prolog exit 1: prolog: no /scratch on node2"}
        # The prolog's output is in that node's journal, under its label.
        log = site.ok(2, "journalctl --no-pager -o short")
        found = re.search(
            r"(sdexec-prolog-\d+-\d+)\[\d+\]: prolog: no /scratch on node2$", log, re.M
        )
        assert found, log[-2000:]
        # ... and our logs command finds it from rank 0's node.
        logs = site.run(0, f"sdexec logs -r 2 {found.group(1)}", user="flux")
        assert "prolog: no /scratch on node2" in logs.stderr, logs
        # Nothing of the prolog is left on any node.
        for node in range(3):
            assert [u for u in site.units(node) if "prolog" in u] == []
    finally:
        site.ok(2, "rm -f /etc/site-prolog-fail")
        site.ok(0, "flux resource undrain node2")
