"""Whose job a unit runs (sdexec.flux.tenants), with the Flux RPC played by a function here.

The real thing, guests and job-list in a Flux system instance, is
tests/site/test_site_guests.py.
"""

from __future__ import annotations

import asyncio
import errno
from types import SimpleNamespace
from typing import Any

import pytest

from sdexec.broker.router import Router
from sdexec.flux.tenants import JobOwners, TenantGate, job_of
from sdexec.proto.message import ROLE_OWNER, ROLE_USER

IMP = "/usr/libexec/flux/flux-imp"
SHELL = "/usr/libexec/flux/flux-shell"


@pytest.mark.parametrize(
    ("cmdline", "jobid"),
    [
        ([IMP, "exec", SHELL, "1234567"], 1234567),
        ([SHELL, "1234567"], None),  # the owner's own job: no IMP
        ([IMP, "run", "prolog", "12"], None),
        ([IMP, "exec", SHELL, "f2aB"], None),  # job-exec gives the id in decimal
        (["flux-imp", "exec", SHELL, "12"], None),  # job-exec gives the IMP's path
        ([IMP, "exec", SHELL, "12", "extra"], None),
    ],
)
def test_a_job_shell_is_known_by_its_imp_command_line(
    cmdline: list[str], jobid: int | None
) -> None:
    assert job_of(cmdline) == jobid


def proc(cmdline: list[str], tenant: int | None = None) -> Any:
    return SimpleNamespace(cmd=SimpleNamespace(cmdline=cmdline), tenant_uid=tenant)


class JobList:
    """job-list.list-id as the function the resolver calls."""

    def __init__(self, owners: dict[int, int]) -> None:
        self.owners = owners
        self.asked: list[int] = []

    async def __call__(self, topic: str, payload: dict[str, Any]) -> Any:
        assert topic == "job-list.list-id"
        assert payload["attrs"] == ["userid"]
        self.asked.append(payload["id"])
        if payload["id"] not in self.owners:
            raise OSError(errno.ENOENT, "job not found")
        return {"job": {"id": payload["id"], "userid": self.owners[payload["id"]]}}


def test_each_job_shell_gets_its_jobs_owner_and_is_not_asked_again() -> None:
    joblist = JobList({11: 1001, 12: 1002})
    shells = [proc([IMP, "exec", SHELL, "11"]), proc([IMP, "exec", SHELL, "12"])]
    other = proc(["/bin/sleep", "30"])
    owners = JobOwners(joblist)
    asyncio.run(owners.resolve([*shells, other]))
    assert [p.tenant_uid for p in shells] == [1001, 1002]
    assert other.tenant_uid is None
    asyncio.run(owners.resolve([*shells, other]))
    assert sorted(joblist.asked) == [11, 12]


def test_a_failed_lookup_leaves_the_tenant_unknown_and_is_tried_again() -> None:
    joblist = JobList({})
    shell = proc([IMP, "exec", SHELL, "13"])
    owners = JobOwners(joblist)
    asyncio.run(owners.resolve([shell]))
    assert shell.tenant_uid is None
    joblist.owners[13] = 1001
    asyncio.run(owners.resolve([shell]))
    assert shell.tenant_uid == 1001
    assert joblist.asked == [13, 13]


def test_the_owner_passes_at_once_and_guests_wait_for_the_tenants_in_order() -> None:
    async def scenario() -> list[str]:
        router = Router(owner_uid=0)
        seen: list[str] = []
        all_three = asyncio.Event()

        def dispatch(req: Any) -> None:
            seen.append(req.topic)
            if len(seen) == 3:
                all_three.set()

        router.dispatch = dispatch  # type: ignore[method-assign]
        shell = proc([IMP, "exec", SHELL, "14"])
        gate = TenantGate(router, JobOwners(JobList({14: 1001})), lambda: [shell])
        gate.install()

        def request(topic: str, role: int) -> Any:
            return SimpleNamespace(topic=topic, rolemask=role, userid=1001 if role else 0)

        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(gate.run())
            assert router.gate is not None
            router.gate(request("sdexec.list", ROLE_USER))
            router.gate(request("sdexec.disconnect", ROLE_USER))
            router.gate(request("sdexec.exec", ROLE_OWNER))
            assert seen == ["sdexec.exec"]  # the owner's request did not wait
            await asyncio.wait_for(all_three.wait(), 5)
            assert shell.tenant_uid == 1001
            task.cancel()
        return seen

    assert asyncio.run(scenario()) == ["sdexec.exec", "sdexec.list", "sdexec.disconnect"]
