"""flux-core's limit tests with our module, in a qemu guest where the limits are enforced.

flux-core's ``t2410-sdexec-memlimit.t`` (MemoryMax, MemoryHigh,
MemorySwapMax on sdexec units and jobs, a job OOM-killed) and
``t2416-sdexec-constrain-resources.t`` (AllowedCPUs from a job's cores with
``exec.sdexec-constrain-resources``, the mapper, MemoryMax scaled to the
allocation, a rank drained when the check fails) run in one guest boot with
our module loaded through ``[modules.sdexec]`` (``fluxbatch.py`` makes the
image, ``fluxtests.py`` runs them inside).  Every test of both must pass:
none may fail or be skipped.  They take about 15 minutes (t2410 4, t2416 9
under emulation, measured on a shared host), so they run only when asked for
(``SDEXEC_FLUX_GUEST_TESTS=1``; otherwise deselected, see tests/conftest.py),
as root where flux-core is installed with its build tree.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fluxbatch
import guestctl

pytestmark = [
    pytest.mark.opt_in("SDEXEC_FLUX_GUEST_TESTS"),
    # The first test makes the image and boots; the guest itself is bounded
    # by its batch's limit (then killed), this only by more.
    pytest.mark.timeout(fluxbatch.BOOT_ROOM + 2 * fluxbatch.PROGRAM_TIMEOUT + 900),
]


@pytest.fixture(scope="module")
def guest(debian_package: Path) -> Iterator[guestctl.Boot]:
    reason = fluxbatch.missing()
    if reason is not None:
        pytest.skip(reason)
    work = Path("/var/tmp") / f"sdexec-guest-flux-{os.getpid()}"
    work.mkdir()
    try:
        booted, times = fluxbatch.run(debian_package, ("sdexec",), work)
        print(
            "\nguest: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()),
            file=sys.stderr,
        )
        for r in booted.results:
            print(f"guest: {r['name']}: {r['detail']} in {r.get('seconds')} s", file=sys.stderr)
        yield booted
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.parametrize("name", sorted(fluxbatch.TESTS))
def test_flux_cores_limit_test_passes_with_our_module(guest: guestctl.Boot, name: str) -> None:
    rec = guest.record(f"sdexec:{name}")
    want = fluxbatch.TESTS[name]
    assert rec.get("counts") == {"ok": want, "skip": 0, "fail": 0, "plan": want}, (
        f"{name}: {rec['detail']}\n" + "\n".join(rec.get("failed", []))
        + "\n--- last lines:\n" + rec.get("tail", "")
        + "\n--- the guest's journal meanwhile:\n" + rec.get("journal", "")
    )  # fmt: skip
    assert rec["rc"] == 0, (
        f"{name}: exit {rec['rc']}\n{rec['tail']}\n--- the guest's journal meanwhile:\n"
        + rec.get("journal", "")
    )
