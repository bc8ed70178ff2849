"""flux-core's own sdexec tests, with sdexec's module in place of the C one.

The five sharness tests that cover flux-core's ``sdexec`` broker module run
from the flux-core build tree, each copied with its one
``flux exec flux module load sdexec`` line changed to load ours
(``--name=sdexec sdexec/flux/module.py``); nothing else in them changes.
They run on the session's confined systemd user manager.  Every test of
every file must pass: none may fail or be skipped (a skipped prerequisite,
such as no systemd user bus, is a failure here).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from fluxinstance import MODULE, flux_core_source, sharness_env
from sharness_run import counts, run_logged

from sdexec.systemd.private import PrivateManager

#: test file -> how many tests it has (flux-core 0.88).
SUITE = {
    "t2409-sdexec.t": 58,
    "t2411-sdexec-job.t": 14,
    "t2415-sdexec-device.t": 9,
    "t2420-job-exec-bgexec-sdexec.t": 13,
    "t2421-sdexec-bg.t": 24,
}
LOAD_LINE = re.compile(r"^(\s*flux exec flux module load) sdexec(\s*)$")
TIMEOUT = 600.0


def copy_with_our_module(src: Path, dst: Path) -> None:
    """``src`` with its sdexec load line loading sdexec's module instead."""
    lines = src.read_text().splitlines(keepends=True)
    hits = [i for i, line in enumerate(lines) if LOAD_LINE.match(line.rstrip("\n"))]
    assert len(hits) == 1, f"{src.name}: expected one sdexec load line, found {len(hits)}"
    m = LOAD_LINE.match(lines[hits[0]].rstrip("\n"))
    assert m is not None
    lines[hits[0]] = f"{m.group(1)} --name=sdexec {MODULE}{m.group(2)}\n"
    dst.write_text("".join(lines))
    dst.chmod(0o755)


@pytest.fixture(scope="module")
def flux_core() -> Path:
    return flux_core_source()


@pytest.mark.parametrize("name", sorted(SUITE))
def test_flux_core_sdexec_test_passes_with_our_module(
    name: str, flux_core: Path, manager: PrivateManager, tmp_path: Path
) -> None:
    tdir = flux_core / "t"
    copy_with_our_module(tdir / name, tmp_path / name)
    (tmp_path / "sharness.sh").symlink_to(tdir / "sharness.sh")
    env = sharness_env(flux_core, manager)
    rc, text = run_logged(["/bin/sh", str(tmp_path / name), "-v"], tmp_path, env, TIMEOUT)
    got = counts(text)
    failed = "\n".join(line for line in text.splitlines() if line.startswith("not ok"))
    keep = (
        Path(os.environ.get("SDEXEC_TEST_KEEP", "")) if os.environ.get("SDEXEC_TEST_KEEP") else None
    )
    if keep is not None and (rc or got["fail"]):
        shutil.copytree(tmp_path, keep / name, dirs_exist_ok=True)
    assert got == {"ok": SUITE[name], "skip": 0, "fail": 0, "plan": SUITE[name]}, (
        f"{name}: {got}, rc={rc}\n{failed}\n--- last lines:\n" + "\n".join(text.splitlines()[-40:])
    )
    assert rc == 0
    broker_log = "\n".join(p.read_text(errors="replace") for p in tmp_path.glob("*.broker.log"))
    assert "Traceback" not in broker_log
