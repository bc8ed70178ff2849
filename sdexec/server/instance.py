"""One server per socket and per state directory, checked before anything is touched.

A second ``sdexec serve`` on the socket of a running one must leave the
first alone: not adopt its units, not start or stop its private manager, not
rewrite its state.  So before any of that, :func:`claim`

1. tries the socket: if a server answers there, it is in use (EADDRINUSE);
2. makes sure the socket's directory exists or can be made (a bad path is
   one clear error, not a traceback after the manager has started);
3. takes an exclusive ``flock`` on ``<state-dir>/rank-<N>.lock`` and keeps
   it for the server's life: two servers of one rank started at once, or
   two sockets given the same ``--state-dir``, cannot both have it.  The
   lock file says which pid holds it.  (Servers of different ranks may
   share a state directory and its manager, as the test cluster does.)

The lock goes with the process (the kernel drops it when the fd is closed,
also on SIGKILL), so nothing stale is ever left to clean up.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
from pathlib import Path

from sdexec.base.errors import SdexecError


class Claim:
    """The held lock of a state directory; :meth:`release` (or exit) lets it go."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def socket_in_use(path: str) -> bool:
    """Whether a server accepts connections on the UNIX socket ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(2.0)
        probe.connect(path)
    except OSError:
        return False
    else:
        return True
    finally:
        probe.close()


def claim(socket_path: str, state_dir: Path, *, rank: int = 0, inherited: bool = False) -> Claim:
    """Check the socket and lock the state directory, or raise a one-line SdexecError.

    ``inherited``: the listening socket came from systemd (socket
    activation); it is not probed, since connecting would only queue on it.
    """
    if not inherited:
        if socket_in_use(socket_path):
            raise SdexecError(errno.EADDRINUSE, f"another server is listening on {socket_path}")
        parent = Path(socket_path).parent
        try:
            parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise SdexecError(
                exc.errno or errno.EIO,
                f"cannot make the socket's directory {parent}: {exc.strerror}",
            ) from None
        if not parent.is_dir():
            raise SdexecError(errno.ENOTDIR, f"{parent} is not a directory")
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock = state_dir / f"rank-{rank}.lock"
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise SdexecError(
            exc.errno or errno.EIO, f"cannot use the state directory {state_dir}: {exc.strerror}"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = ""
        with contextlib.suppress(OSError, ValueError):
            holder = f" (pid {int(os.pread(fd, 32, 0).decode().strip())})"
        os.close(fd)
        raise SdexecError(
            errno.EADDRINUSE, f"another server{holder} uses the state directory {state_dir}"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return Claim(fd, lock)
