"""Suite-wide settings."""

from __future__ import annotations

import os
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


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "opt_in(VAR): runs only when $VAR is 1 (long runs); deselected otherwise"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave out the opt-in tests whose variable is not set (deselected, not skipped)."""
    keep, left_out = [], []
    for item in items:
        marker = item.get_closest_marker("opt_in")
        wanted = marker is None or os.environ.get(str(marker.args[0])) == "1"
        (keep if wanted else left_out).append(item)
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = keep
