"""Suite-wide settings."""

from __future__ import annotations

from hypothesis import settings

# Timing deadlines make property tests flaky on small, busy CI machines; the
# suite bounds its time with example counts instead.
settings.register_profile("sdexec", deadline=None)
settings.load_profile("sdexec")
