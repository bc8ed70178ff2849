"""``sdexec relay PATH``: the remote end of ``ssh://`` (see :mod:`sdexec.transport.ssh`)."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse


def run(args: argparse.Namespace) -> int:
    from sdexec.transport.ssh import relay

    return relay(args.path)
