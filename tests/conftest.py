"""Suite-wide settings."""

from __future__ import annotations

import pytest
from hypothesis import settings

# Timing deadlines make property tests flaky on small, busy CI machines; the
# suite bounds its time with example counts instead.
settings.register_profile("sdexec", deadline=None)
settings.load_profile("sdexec")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One line: which flux-core the Flux tests ran against, or why they were skipped."""
    import fluxcore

    terminalreporter.write_line(fluxcore.find()[1])
