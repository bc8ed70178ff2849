"""Which flux-core the tests and benchmarks use: an installed one, found as a user has it.

The project never builds flux-core; a site has one from its distribution,
Spack or its own build.  The ``flux`` command is ``$SDEXEC_FLUX``, else
``flux`` on PATH; it must be built with systemd (its ``build-options`` say
``+systemd``).  flux-core's own sharness tests need its build tree:
``$SDEXEC_FLUX_CORE_SRC``, else one found next to that ``flux``: the tree
the command itself lies in (``BUILD/src/cmd/flux``), or, for an install
under ``PREFIX``, ``PREFIX/src/flux-core`` (where local sources go, as
``/usr/local/src/flux-core`` for ``/usr/local/bin/flux``) or a ``src``
beside ``PREFIX``.  A tree counts only if it was built from the same
version as the command.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

HOW = (
    "to run them, install a flux-core built with systemd with its flux on PATH, or set "
    "SDEXEC_FLUX=/path/to/bin/flux; SDEXEC_FLUX_CORE_SRC=BUILD_TREE for its own sdexec tests"
)


@dataclass(frozen=True)
class FluxCore:
    """A usable flux-core: its command, version, and build tree if one was found."""

    flux: str
    version: str
    build_tree: Path | None


def _version(flux: str) -> tuple[str, bool] | None:
    """(version, built with systemd) of a ``flux`` command, or None if it does not run."""
    try:
        out = subprocess.run([flux, "version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"^commands:\s+(\S+)", out.stdout, re.M)
    if out.returncode != 0 or m is None:
        return None
    return m.group(1), "+systemd" in out.stdout


def _tree_version(tree: Path) -> str | None:
    try:
        config = (tree / "config" / "config.h").read_text()
    except OSError:
        return None
    m = re.search(r'^#define PACKAGE_VERSION "([^"]+)"', config, re.M)
    return m.group(1) if m else None


def build_tree_for(flux: str, version: str) -> Path | None:
    """flux-core's build tree for this ``flux`` (see the module's docstring), or None."""
    given = os.environ.get("SDEXEC_FLUX_CORE_SRC")
    if given:
        return Path(given)
    exe = Path(flux).resolve()
    prefix = exe.parents[1]
    for tree in (exe.parents[2], prefix / "src" / "flux-core", prefix.parent / "src"):
        if (tree / "t" / "sharness.sh").is_file() and _tree_version(tree) == version:
            return tree
    return None


@functools.cache
def find() -> tuple[FluxCore | None, str]:
    """The flux-core to test against, or None; and one line that says which, or why none."""
    flux = os.environ.get("SDEXEC_FLUX") or shutil.which("flux")
    if not flux:
        return None, f"flux-core: none found; Flux tests skipped: {HOW}"
    found = _version(flux)
    if found is None:
        return None, f"flux-core: {flux} does not run; Flux tests skipped: {HOW}"
    version, systemd = found
    if not systemd:
        line = f"flux-core {version} ({flux}) is built without systemd; Flux tests skipped: {HOW}"
        return None, line
    tree = build_tree_for(flux, version)
    where = f"its sdexec tests from {tree}" if tree else "no build tree for its own sdexec tests"
    return FluxCore(flux, version, tree), f"flux-core {version} ({flux}): Flux tests run, {where}"
