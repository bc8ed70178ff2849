"""The file a Flux broker loads: ``flux module load --name=sdexec $(sdexec flux-module-path)``.

The broker runs it with flux-core's own Python (``flux module-python-exec``),
not with the interpreter sdexec was installed for, and imports it by path,
outside any package.  So before anything of sdexec is imported, this file
puts sdexec and its dependencies on ``sys.path`` from where it lies:

* the directory that holds the ``sdexec`` package (a venv's or the user's
  site-packages, ``dist-packages`` of the Debian package, or a source tree);
* when that is inside a virtual environment (a ``pyvenv.cfg`` above it), or
  is a source tree with the ``.venv`` that ``scripts/bootstrap`` makes, that
  environment's site-packages, where dbus-fast, structlog and pyzmq are;
* ``$SDEXEC_PYTHONPATH``, for any other layout.

Compiled dependencies (dbus-fast's extensions, pyzmq) load only if that
environment's Python has the same major.minor version as flux-core's.

Then it hands over to :func:`sdexec.flux.serve.mod_main`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def _site_packages(env: Path) -> list[Path]:
    """An environment's site-packages for this interpreter's version, if it has one."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    found = [env / "lib" / version / "site-packages"]
    found += sorted(p for p in env.glob("lib/python3*/site-packages") if p not in found)
    return [p for p in found if p.is_dir()]


def search_path(here: Path, environ: dict[str, str]) -> list[Path]:
    """Where sdexec and its dependencies are, for a module file at ``here``."""
    root = here.resolve().parents[2]  # the directory that holds sdexec/
    paths = [Path(p) for p in environ.get("SDEXEC_PYTHONPATH", "").split(":") if p]
    paths.append(root)
    for base in (root, *root.parents):
        if (base / "pyvenv.cfg").is_file():
            paths += _site_packages(base)[:1]
            break
    else:
        venv = root / ".venv"
        if (venv / "pyvenv.cfg").is_file():
            paths += _site_packages(venv)[:1]
    return paths


def _prepare() -> None:
    for path in reversed(search_path(Path(__file__), dict(os.environ))):
        entry = str(path)
        if entry not in sys.path:
            sys.path.insert(0, entry)


def mod_main(h: object, *args: str) -> None:
    """Called by the broker's module loader."""
    _prepare()
    from sdexec.flux.serve import mod_main as serve

    serve(h, *args)
