"""``sdexec flux-module-path``: the Flux broker module file for this installation.

The module file (:mod:`sdexec.flux.module`) finds sdexec's dependencies from
where it lies.  Inside an installed package it lies in the environment
itself, and that file is printed.  An editable install's package is a source
tree, which cannot know the environment it was installed into; for it, the
same file is copied to ``PREFIX/share/sdexec/flux-module.py`` of that
environment (a venv, or ``pip --user``'s base), where it finds the
environment's site-packages, and the copy is printed.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import sdexec.flux

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

MODULE_FILE = "module.py"
COPY = Path("share") / "sdexec" / "flux-module.py"


def packaged_module() -> Path:
    """The module file inside the sdexec package (sdexec/flux/module.py)."""
    return Path(os.path.abspath(sdexec.flux.__file__)).parent / MODULE_FILE


def editable_prefix() -> Path | None:
    """The environment's prefix when sdexec is an editable install elsewhere, else None.

    None when the package lies in the site directory it was installed into,
    when no installation is known (a source tree on ``PYTHONPATH``), or when
    the environment is the source tree's own ``.venv`` (the packaged file
    finds that one).
    """
    from importlib import metadata

    root = packaged_module().resolve().parents[2]
    try:
        dist = metadata.distribution("sdexec")
    except metadata.PackageNotFoundError:
        return None
    site_dir = Path(str(dist.locate_file(""))).resolve()
    if site_dir == root or (root / ".venv").resolve() == Path(sys.prefix).resolve():
        return None
    # PREFIX/lib/pythonX.Y/site-packages, for a venv and for pip --user alike.
    lib = site_dir.parent
    if site_dir.name == "site-packages" and lib.name.startswith("python"):
        return lib.parents[1]
    return None


def _write_if_changed(path: Path, text: str) -> None:
    try:
        if path.read_text() == text:
            return
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".flux-module.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def module_path() -> Path:
    """The file ``flux module load`` takes for this installation (written if need be)."""
    packaged = packaged_module()
    prefix = editable_prefix()
    if prefix is None:
        return packaged
    copy = prefix / COPY
    _write_if_changed(copy, packaged.read_text())
    return copy


def run(args: argparse.Namespace) -> int:
    try:
        path = module_path()
    except OSError as e:
        sys.stderr.write(
            f"sdexec flux-module-path: cannot write this editable install's module file "
            f"({e}); run it once as the owner of {sys.prefix}, or load "
            f"{packaged_module()} with SDEXEC_PYTHONPATH set to {sys.prefix}'s site-packages\n"
        )
        return 1
    sys.stdout.write(f"{path}\n")
    return 0
