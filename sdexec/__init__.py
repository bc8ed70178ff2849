"""sdexec: a Flux RFC 42 subprocess server that runs every command as a systemd unit."""

from __future__ import annotations

__version__ = "0.1.0"
