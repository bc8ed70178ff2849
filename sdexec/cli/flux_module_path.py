"""``sdexec flux-module-path``: where the Flux broker module file is."""

from __future__ import annotations

import os
import sys

import sdexec.flux

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

MODULE_FILE = "module.py"


def module_path() -> str:
    """The absolute path of the file ``flux module load`` takes (sdexec/flux/module.py)."""
    return os.path.join(os.path.dirname(os.path.abspath(sdexec.flux.__file__)), MODULE_FILE)


def run(args: argparse.Namespace) -> int:
    sys.stdout.write(module_path() + "\n")
    return 0
