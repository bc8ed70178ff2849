"""flux-core's own RFC 42 test suites, with their requests served by sdexec's module.

flux-core tests its broker's RFC 42 server (``rexec``) with four files that
apply to any RFC 42 server: ``t0005-exec.t`` (flux exec), ``t0040-flux-sproc.t``
(flux sproc), ``t0005-rexec.t`` (libsubprocess's test helpers) and
``python/t0036-subprocess.py`` (the Python API).  Each runs here from the
flux-core build tree, on the session's confined systemd, with nothing it
asserts changed.  Two things are added at the start of each of its
instances (for a sharness file: a few lines after its ``test_under_flux``
line, in a copy; for the Python file: the initial program of the instance
it would start itself):

* ``flux exec -r all flux module load --name=sdexec sdexec/flux/module.py``:
  sdexec's module on every rank;
* ``FLUX_URI`` pointing at a relay (``rexec_relay.py``) that sends each
  ``rexec.*`` request to ``sdexec.*`` and passes everything else unchanged.
  flux exec, flux sproc, libsubprocess (whose ``flux_rexec()`` names the
  ``rexec`` service itself) and the Python API then all reach sdexec.

Every test must pass but those named in :data:`NOT_APPLICABLE`, whose
failure with any server named sdexec is their point; a test that passes
there is a failure too (the list must stay true).  Where no flux-core build
tree is found, the tests skip with one line.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fluxinstance import MODULE, REPO, flux_core_source, release_units, sharness_env, units
from sharness_run import run_logged

from sdexec.systemd.private import PrivateManager

RELAY = Path(__file__).resolve().parent / "rexec_relay.py"
TIMEOUT = 900.0


@dataclass(frozen=True)
class Suite:
    path: str  # under flux-core's t/
    tests: int  # how many it has (flux-core 0.88)


SUITES = {
    "t0005-exec": Suite("t0005-exec.t", 97),
    "t0040-flux-sproc": Suite("t0040-flux-sproc.t", 33),
    "t0005-rexec": Suite("t0005-rexec.t", 41),
    "t0036-subprocess": Suite("python/t0036-subprocess.py", 54),
}

#: Tests that fail against any server but the broker's own rexec, by design
#: (test description -> why).
NOT_APPLICABLE: dict[str, dict[str, str]] = {
    "t0005-exec": {
        "rexec: --bg logs output, exit code to broker logs": (
            "it looks for the lines in the broker log of the module named rexec; sdexec's are "
            "sdexec's (sdexec.info[0]: sh[PID]: some stdout)"
        ),
    },
}

UNDER_FLUX = re.compile(r"^test_under_flux\b.*$", re.M)


def setup_lines(relay_dir: Path) -> str:
    """Shell lines run first in each instance: sdexec on every rank, FLUX_URI to the relay."""
    return f"""
# sdexec's harness (tests/integration/test_flux_core_rexec_suites.py): RFC 42
# served by sdexec's module on every rank; this test's rexec requests go to it.
flux exec -r all flux module load --name=sdexec {MODULE} || exit 1
sdexec_broker_uri=$FLUX_URI
PYTHONPATH={REPO} {sys.executable} {RELAY} "${{FLUX_URI#local://}}" \\
    {relay_dir}/local >{relay_dir}/uri &
sdexec_relay_wait=0
while test ! -s {relay_dir}/uri; do
    sdexec_relay_wait=$((sdexec_relay_wait+1))
    test $sdexec_relay_wait -lt 600 || exit 1
    sleep 0.05
done
FLUX_URI=$(cat {relay_dir}/uri) && export FLUX_URI
"""


#: Run last in each instance: the module is unloaded as it was loaded (sharness
#: checks that a test unloads what it loaded), through the broker itself.
TEARDOWN = """
# sdexec's harness: unload sdexec's module, which it loaded.
FLUX_URI=$sdexec_broker_uri flux exec -r all flux module remove sdexec
"""


def sharness_copy(src: Path, dst: Path, relay_dir: Path) -> None:
    """``src`` with the setup lines after its ``test_under_flux`` line and the
    teardown before its last ``test_done``."""
    text = src.read_text()
    hits = UNDER_FLUX.findall(text)
    assert len(hits) == 1, f"{src.name}: expected one test_under_flux line, found {len(hits)}"
    m = UNDER_FLUX.search(text)
    assert m is not None
    end = text.rindex("\ntest_done") + 1
    assert end > m.end(), f"{src.name}: no test_done after test_under_flux"
    dst.write_text(
        text[: m.end()]
        + "\n"
        + setup_lines(relay_dir)
        + text[m.end() : end]
        + TEARDOWN
        + text[end:]
    )
    dst.chmod(0o755)


def results(log: str) -> dict[str, str]:
    """TAP results by test description: ``ok``, ``fail`` or ``skip``."""
    out: dict[str, str] = {}
    for m in re.finditer(r"^(not ok|ok) \d+ -? ?(.*?)\s*$", log, re.M):
        ok, desc = m.group(1), m.group(2)
        if "# skip" in desc.lower() or "# SKIP" in desc:
            out[desc] = "skip"
        else:
            out[desc] = "ok" if ok == "ok" else "fail"
    return out


@pytest.fixture(scope="module")
def flux_core() -> Path:
    return flux_core_source()


@pytest.fixture
def units_stopped_after(manager: PrivateManager) -> Iterator[None]:
    """Stop the units a suite leaves: background ones outlive the module's unload
    (by design), and some tests leave finished waitable processes unwaited for."""
    before = set(units(manager))
    yield
    release_units(manager, set(units(manager)) - before)


@pytest.fixture
def relay_dir() -> Iterator[Path]:
    # Short: a UNIX socket's path has at most 107 bytes.
    path = Path(tempfile.mkdtemp(prefix="sdexec-relay-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run_suite(
    name: str, flux_core: Path, manager: PrivateManager, tmp_path: Path, relay_dir: Path
) -> str:
    suite = SUITES[name]
    tdir = flux_core / "t"
    env = sharness_env(flux_core, manager)
    if suite.path.endswith(".t"):
        script = tmp_path / Path(suite.path).name
        sharness_copy(tdir / suite.path, script, relay_dir)
        (tmp_path / "sharness.sh").symlink_to(tdir / "sharness.sh")
        argv = ["/bin/sh", str(script), "-v"]
    else:
        # What the file's rerun_under_flux() would start, with the setup first.
        init = tmp_path / "init.sh"
        init.write_text(
            setup_lines(relay_dir)
            + f"IN_SUBFLUX=1 flux python {tdir / suite.path}\n"
            + "rc=$?\n"
            + TEARDOWN
            + "exit $rc\n"
        )
        env.update(FLUX_RC_USE_MODPROBE="t")
        argv = [str(flux_core / "src/cmd/flux"), "start", "--test-size=2", "sh", str(init)]
    _, text = run_logged(argv, tmp_path, env, TIMEOUT)
    keep = os.environ.get("SDEXEC_TEST_KEEP")
    if keep:  # the log and the script as run (the trash directory has fifos and sockets)
        dest = Path(keep) / name
        dest.mkdir(parents=True, exist_ok=True)
        for path in tmp_path.iterdir():
            if path.is_file() and not path.is_symlink():
                shutil.copy(path, dest / path.name)
    return text


@pytest.mark.usefixtures("units_stopped_after")
@pytest.mark.parametrize("name", sorted(SUITES))
def test_flux_core_rexec_suite_passes_against_sdexec(
    name: str, flux_core: Path, manager: PrivateManager, tmp_path: Path, relay_dir: Path
) -> None:
    text = run_suite(name, flux_core, manager, tmp_path, relay_dir)
    got = results(text)
    expected_fail = NOT_APPLICABLE.get(name, {})
    # A skip is the file's own verdict on this machine (no flux-security, say).
    wrong = {
        desc: res
        for desc, res in got.items()
        if res not in ("skip", "fail" if desc in expected_fail else "ok")
    }
    missing = sorted(set(expected_fail) - set(got))
    assert (len(got), wrong, missing) == (SUITES[name].tests, {}, []), (
        f"{name}: {len(got)} tests, unexpected results {wrong}, missing {missing}\n"
        + "--- last lines:\n"
        + "\n".join(text.splitlines()[-40:])
    )
