"""``sdexec uri TARGET``: print the URI that TARGET resolves to (flux-uri(1))."""

from __future__ import annotations

import sys

from sdexec.base.errors import SdexecError
from sdexec.base.uri import resolve
from sdexec.cli.common import error

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse


def run(args: argparse.Namespace) -> int:
    try:
        uri = resolve(args.target)
    except SdexecError as exc:
        error(exc.message)
        return 1
    sys.stdout.write(uri + "\n")
    return 0
