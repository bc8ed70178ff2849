"""Suite-wide settings."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hypothesis import settings

REPO = Path(__file__).resolve().parents[1]

# Timing deadlines make property tests flaky on small, busy CI machines; the
# suite bounds its time with example counts instead.
settings.register_profile("sdexec", deadline=None)
settings.load_profile("sdexec")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One line: which flux-core the Flux tests ran against, or why they were skipped."""
    import fluxcore

    terminalreporter.write_line(fluxcore.find()[1])


@pytest.fixture(scope="session")
def debian_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The .deb of this tree, built once per run by ``packaging/build-deb`` (about 15 s);
    its .buildinfo and .changes lie beside it."""
    out = tmp_path_factory.mktemp("deb")
    r = subprocess.run(
        [str(REPO / "packaging" / "build-deb"), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (deb,) = out.glob("sdexec_*_all.deb")
    return deb
