"""``sdexec keygen``: make a CURVE key pair (see :mod:`sdexec.transport.zmq`)."""

from __future__ import annotations

import sys
from pathlib import Path

from sdexec.cli.common import error

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse


def run(args: argparse.Namespace) -> int:
    from sdexec.transport.zmq import curve_dir, write_keypair

    directory = Path(args.dir) if args.dir else curve_dir()
    metadata = {} if args.uid is None else {"uid": str(args.uid)}
    try:
        public, secret = write_keypair(directory, args.name, metadata)
    except FileExistsError as exc:
        error(f"keygen: {exc.filename} already exists")
        return 1
    except OSError as exc:
        error(f"keygen: {exc.strerror}")
        return 1
    sys.stdout.write(f"{public}\n{secret}\n")
    return 0
