"""What ``execvp`` would run: a command's executable and working directory, checked.

An exec is refused before any unit is created when its command cannot run:
the executable is resolved against the command's own ``PATH`` (ENOENT or
EACCES with the usual text) and the working directory must be a directory.
A guest's command is checked with the guest's own file credentials
(:func:`sdexec.security.guest.as_guest`), so it sees what the guest may
see, no more.  The error texts are those of Flux's servers, on which Flux's
tools and users match (:data:`sdexec.proto.rfc42.LAUNCH_ERROR`).
"""

from __future__ import annotations

import errno
import os
import stat

from sdexec.base.errors import SdexecError, errnum_of
from sdexec.proto import rfc42
from sdexec.security import guest

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


def resolve_command(cmd: rfc42.Command, guest_ids: tuple[int, int] | None = None) -> str:
    """The absolute path of the executable ``cmd`` runs, its working directory checked.

    ``guest_ids``: the (uid, gid) of a guest requester, whose view counts.
    Errors are worded as a command that could not be started (:func:`launch_error`).
    """
    try:
        if guest_ids is None:
            return _resolve(cmd)
        with guest.as_guest(*guest_ids):
            return _resolve(cmd)
    except SdexecError as exc:
        raise launch_error(exc) from None


def _resolve(cmd: rfc42.Command) -> str:
    if cmd.cwd is not None:
        _check_working_directory(cmd.cwd)
    return resolve_executable(cmd.cmdline[0], cmd.env, cmd.cwd)


def resolve_executable(argv0: str, env: dict[str, str], cwd: str | None) -> str:
    """The absolute path ``execvp`` would run, or ENOENT/EACCES like it."""
    if not argv0:
        raise SdexecError(errno.ENOENT, ": No such file or directory")
    if "/" in argv0:
        path = argv0 if os.path.isabs(argv0) else os.path.join(cwd or os.getcwd(), argv0)
        _check_executable(argv0, path)
        return os.path.normpath(path)
    denied = False
    for d in env.get("PATH", DEFAULT_PATH).split(":"):
        candidate = os.path.join(d or ".", argv0)
        if not os.path.isabs(candidate):
            candidate = os.path.join(cwd or os.getcwd(), candidate)
        try:
            _check_executable(argv0, candidate)
        except SdexecError as exc:
            denied = denied or exc.errno == errno.EACCES
            continue
        return candidate
    if denied:
        raise SdexecError(errno.EACCES, f"{argv0}: Permission denied")
    raise SdexecError(errno.ENOENT, f"{argv0}: No such file or directory")


def launch_error(exc: SdexecError) -> SdexecError:
    """``exc`` worded as Flux's servers word a command that could not be started.

    A bad working directory keeps its own words (its text starts with
    "working directory": the CLI exits 125 for it, not 126 or 127).
    """
    if exc.message.startswith("working directory "):
        return exc
    return SdexecError(errnum_of(exc), rfc42.LAUNCH_ERROR + exc.message)


def _check_working_directory(cwd: str) -> None:
    """ENOENT/ENOTDIR now, naming the working directory, rather than a failed chdir later.

    The text starts with "working directory": the CLI exits 125 for it, not
    127 as for a command that was not found.
    """
    try:
        st = os.stat(cwd)
    except OSError as exc:
        num = exc.errno or errno.ENOENT
        raise SdexecError(num, f"working directory {cwd}: {os.strerror(num)}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise SdexecError(errno.ENOTDIR, f"working directory {cwd}: {os.strerror(errno.ENOTDIR)}")


def _check_executable(argv0: str, path: str) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise SdexecError(errno.ENOENT, f"{argv0}: No such file or directory") from None
    except NotADirectoryError:
        raise SdexecError(errno.ENOTDIR, f"{argv0}: Not a directory") from None
    except PermissionError:
        raise SdexecError(errno.EACCES, f"{argv0}: Permission denied") from None
    # effective_ids: as the thread's file credentials say (a guest's: security.guest.as_guest)
    if not stat.S_ISREG(st.st_mode) or not os.access(path, os.X_OK, effective_ids=True):
        raise SdexecError(errno.EACCES, f"{argv0}: Permission denied")
