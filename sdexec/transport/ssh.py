"""``ssh://[user@]host[:port]/PATH``: OpenSSH plus a relay on the remote host.

Theory of operation
-------------------
As flux-core's ssh connector does, the client runs the OpenSSH client::

    $SDEXEC_SSH [-p PORT] [-l USER] -- HOST 'env PYTHONPATH=... <rcmd> relay PATH'

with its stdin and stdout on one end of a ``socketpair``; the caller keeps
the other end as an ordinary stream socket.  On the remote host ``sdexec
relay PATH`` (:func:`relay`) connects to the server's UNIX socket and copies
bytes both ways, untouched: the server's handshake byte, then framed
messages.  The server reads the relay's credentials with ``SO_PEERCRED``,
so the remote user is whoever ssh authenticated, never a claim.

Configuration, from the environment (flux-core's ``FLUX_SSH``,
``FLUX_SSH_RCMD`` and its forwarding of ``LD_LIBRARY_PATH``):

``SDEXEC_SSH``
    the ssh command and options, split like a shell would (default ``ssh``);
``SDEXEC_SSH_RCMD``
    the remote sdexec command (default ``sdexec``), e.g.
    ``/opt/venv/bin/python3 -m sdexec.cli.main``;
``SDEXEC_SSH_PYTHONPATH``, ``SDEXEC_SSH_PATH``
    ``PYTHONPATH`` and ``PATH`` for the remote command.  ``PYTHONPATH``
    defaults to the local one when that is set (so a development tree works
    on both ends), ``PATH`` to the remote login's own; set either to the
    empty string to forward nothing.

ssh runs in a session of its own, so the user's Ctrl-C reaches the CLI
(which forwards it to the remote process) and not ssh; it therefore cannot
prompt for a password: use keys or an agent.  Its stderr goes to an
anonymous file, not the caller's: when ssh fails, the caller sees the
stream end before the handshake byte, and the error it reports is ssh's own
last line (``ssh root@node3: Permission denied (publickey).``), also on a
many-rank command where each rank's message must stay with its rank.
"""

from __future__ import annotations

import _socket
import errno
import os
import select
import shlex
import signal
import time

from sdexec.base.errors import SdexecError
from sdexec.base.uri import parse_ssh
from sdexec.transport.link import Link, connect_local

_CHUNK = 256 * 1024
REAP_TIMEOUT = 2.0


def ssh_argv(uri: str, environ: dict[str, str] | None = None) -> list[str]:
    """The ssh command line that reaches the server of ``uri`` through a relay."""
    env = os.environ if environ is None else environ
    user, host, port, path = parse_ssh(uri)
    argv = shlex.split(env.get("SDEXEC_SSH") or "ssh")
    if port is not None:
        argv += ["-p", str(port)]
    if user is not None:
        argv += ["-l", user]
    forwarded = []
    pythonpath = env.get("SDEXEC_SSH_PYTHONPATH", env.get("PYTHONPATH", ""))
    if pythonpath:
        forwarded.append("PYTHONPATH=" + shlex.quote(pythonpath))
    remote_path = env.get("SDEXEC_SSH_PATH", "")
    if remote_path:
        forwarded.append("PATH=" + shlex.quote(remote_path))
    rcmd = env.get("SDEXEC_SSH_RCMD") or "sdexec"
    command = " ".join(
        [*(["env", *forwarded] if forwarded else []), rcmd, "relay", shlex.quote(path)]
    )
    return [*argv, "--", host, command]


def open_ssh(uri: str) -> Link:
    """Start ssh to the server of ``uri``; the returned link's socket talks to the relay."""
    argv = ssh_argv(uri)
    ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
    err = os.memfd_create("sdexec-ssh-stderr", os.MFD_CLOEXEC)
    try:
        pid = os.posix_spawnp(
            argv[0],
            argv,
            os.environ,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, theirs.fileno(), 0),
                (os.POSIX_SPAWN_DUP2, theirs.fileno(), 1),
                (os.POSIX_SPAWN_DUP2, err, 2),
            ],
            setsid=True,
        )
    except OSError as exc:
        ours.close()
        os.close(err)
        num = exc.errno or errno.ENOENT
        raise SdexecError(num, f"cannot run {argv[0]}: {os.strerror(num)}") from None
    finally:
        theirs.close()
    user, host, _port, _path = parse_ssh(uri)
    ssh = _Ssh(pid, err, f"{user}@{host}" if user else host)
    return Link(ours, uri, ssh.close, ssh.explain)


class _Ssh:
    """The ssh process of a link: reaped once, and its stderr kept to explain a failure."""

    def __init__(self, pid: int, err: int, who: str) -> None:
        self.pid = pid
        self.err = err
        self.who = who
        self.status: int | None = None
        self.reaped = False

    def _reap(self) -> None:
        if not self.reaped:
            self.reaped = True
            self.status = reap(self.pid)

    def explain(self) -> str:
        """Why ssh ended the stream: its last line on stderr, or how it exited."""
        self._reap()
        tail = ""
        if self.err >= 0:
            size = os.fstat(self.err).st_size
            tail = os.pread(self.err, 4096, max(size - 4096, 0)).decode(errors="replace")
        lines = [line.strip() for line in tail.splitlines() if line.strip()]
        if lines:
            last = lines[-1].removeprefix("ssh: ").removeprefix("sdexec: relay: ")
            return f"ssh {self.who}: {last}"
        status = self.status
        if status is not None and os.WIFEXITED(status):
            code = os.WEXITSTATUS(status)
            return f"ssh {self.who} exited with status {code} before the server answered"
        return f"ssh {self.who} ended before the server answered"

    def close(self) -> None:
        self._reap()
        if self.err >= 0:
            os.close(self.err)
            self.err = -1


def reap(pid: int, timeout: float = REAP_TIMEOUT) -> int | None:
    """Wait for ssh to go (its stdin is closed); SIGTERM it after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return None
        if done:
            return status
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
        time.sleep(0.005)


def relay(path: str, in_fd: int = 0, out_fd: int = 1) -> int:
    """``sdexec relay PATH``: copy bytes between ``in_fd``/``out_fd`` and the socket.

    If the server cannot be reached, its errno is written as the handshake
    byte (so the far client reports it) and the error goes to stderr.
    When the client's side ends, the socket is half-closed and the relay
    waits for the server to hang up, so nothing the server sent is lost.
    Returns the exit status: 0 once the server has hung up.
    """
    try:
        sock = connect_local(path)
    except SdexecError as exc:
        os.write(out_fd, bytes((exc.errno or errno.ECONNREFUSED,)))
        os.write(2, f"sdexec: relay: {exc.message}\n".encode())
        return 1
    poller = select.poll()
    sfd = sock.fileno()
    poller.register(in_fd, select.POLLIN)
    poller.register(sfd, select.POLLIN)
    try:
        while True:
            for fd, _ in poller.poll():
                try:
                    data = os.read(fd, _CHUNK)
                except OSError:
                    data = b""
                if not data:
                    if fd == sfd:
                        return 0  # the server hung up
                    # The client is done: half-close, so the server still
                    # delivers what it had sent, then hangs up itself.
                    poller.unregister(in_fd)
                    sock.shutdown(_socket.SHUT_WR)
                    continue
                _write_all(out_fd if fd == sfd else sfd, data)
    except OSError:
        return 0
    finally:
        sock.close()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
