"""The file a Flux broker loads: ``flux module load --name=sdexec $(sdexec flux-module-path)``.

The broker runs it with flux-core's own Python (``flux module-python-exec``),
not with the interpreter sdexec was installed for, and imports it by path,
outside any package.  So before anything of sdexec is imported, this file
puts sdexec and its dependencies on ``sys.path`` from where it lies.  It is
found in one of two places:

* inside the installed ``sdexec`` package (``.../sdexec/flux/module.py``):
  the directory that holds ``sdexec/`` (a venv's or the user's
  site-packages, ``dist-packages`` of the Debian package, or a source tree),
  then the virtual environment above it (a ``pyvenv.cfg``), or the
  ``.venv`` of a source tree;
* as a copy in an environment's prefix (``PREFIX/share/sdexec/flux-module.py``),
  which ``sdexec flux-module-path`` writes for an editable install, whose
  package lies in a source tree that cannot know the environment: then
  ``PREFIX/lib/pythonX.Y/site-packages`` (a venv's or ``pip --user``'s).

``$SDEXEC_PYTHONPATH`` comes first, for any other layout.  Site directories
are added as Python's ``site`` adds them (their ``.pth`` files are read, so
an editable install's source tree is found), ahead of the interpreter's own
path, so that an environment's dependencies win over older ones of the
distribution.  Compiled dependencies (dbus-fast's extensions, pyzmq) load
only if that environment's Python has flux-core's major.minor version.

When something is still missing, the load fails with one line, in the
broker's log and on the loader's standard error, naming what is missing,
where it looked and how to point it; never a traceback.  Then it hands over
to :func:`sdexec.flux.serve.mod_main`.
"""

from __future__ import annotations

import errno
import os
import site
import sys
from pathlib import Path

#: What the module imports beyond the standard library (import name -> project).
REQUIRED = {"sdexec": "sdexec", "structlog": "structlog", "dbus_fast": "dbus-fast", "zmq": "pyzmq"}
LOG_ERR = 3  # syslog's LOG_ERR


def _site_packages(prefix: Path) -> list[Path]:
    """An environment's site-packages, this interpreter's version first."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    found = [prefix / "lib" / version / "site-packages"]
    found += sorted(p for p in prefix.glob("lib/python3*/site-packages") if p not in found)
    return [p for p in found if p.is_dir()]


def search_path(here: Path, environ: dict[str, str]) -> tuple[list[Path], list[Path]]:
    """Where sdexec and its dependencies are, for a module file at ``here``.

    Returns plain path entries and site directories (whose ``.pth`` files count).
    """
    extra = [Path(p) for p in environ.get("SDEXEC_PYTHONPATH", "").split(":") if p]
    base = here.resolve().parents[2]
    if not (base / "sdexec" / "__init__.py").is_file():
        # PREFIX/share/sdexec/flux-module.py: the environment of an editable install.
        return extra, _site_packages(base)[:1]
    venv = next((p for p in (base, *base.parents) if (p / "pyvenv.cfg").is_file()), None)
    if venv is None and (base / ".venv" / "pyvenv.cfg").is_file():
        venv = base / ".venv"  # a source tree and the environment scripts/bootstrap made
    return [*extra, base], _site_packages(venv)[:1] if venv is not None else []


def _add_first(entries: list[Path], sites: list[Path]) -> None:
    """Put ``entries`` and ``sites`` (with their .pth files) ahead of ``sys.path``."""
    before = list(sys.path)
    for directory in sites:
        site.addsitedir(str(directory))
    added = [str(p) for p in entries] + [p for p in sys.path if p not in before]
    sys.path[:] = list(dict.fromkeys(added)) + [p for p in before if p not in added]


def missing(entries: list[Path], sites: list[Path]) -> str | None:
    """The one-line reason the module cannot run, or None when all it needs imports."""
    for name, project in REQUIRED.items():
        try:
            __import__(name)
        except ImportError as e:
            looked = ", ".join(str(p) for p in [*entries, *sites]) or "nowhere of sdexec's"
            return (
                f"sdexec: cannot load the Flux module: {project} does not import ({e}) "
                f"in {sys.executable} {sys.version.split()[0]}; looked in {looked} "
                f"and this Python's own path; set SDEXEC_PYTHONPATH to the directories "
                f"that hold sdexec, dbus-fast, pyzmq and structlog for Python "
                f"{sys.version_info.major}.{sys.version_info.minor}"
            )
    return None


def mod_main(h: object, *args: str) -> None:
    """Called by the broker's module loader."""
    entries, sites = search_path(Path(__file__), dict(os.environ))
    _add_first(entries, sites)
    reason = missing(entries, sites)
    if reason is not None:
        h.log(LOG_ERR, reason)  # type: ignore[attr-defined]
        print(reason, file=sys.stderr, flush=True)
        # The loader answers an OSError with its errno alone (no traceback).
        raise OSError(errno.ENOPKG, reason)
    from sdexec.flux.serve import mod_main as serve

    serve(h, *args)
