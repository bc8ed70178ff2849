"""What a guest may do: its own processes only, run as itself, with safe settings.

Theory of operation
-------------------
A *guest* is a client whose uid is neither the server's nor the instance
owner's (it was let in by ``--allow-guests``; the router gives it the user
role, not the owner role).  RFC 42 servers run commands with their own
credentials, and RFC 15 keeps user transitions for the IMP; an sdexec server
that runs as root can do better with systemd, so a guest's command runs as
the guest: the unit gets ``User=``/``Group=`` set to the uid and gid the
kernel reported for the connection, after every other setting, so nothing in
the request can override them.  A server that cannot switch users (not
root) refuses a guest's ``exec`` with EPERM rather than run it as itself.

The unit settings a guest may ask for are an allow-list of resource limits
and cosmetics; everything that systemd would apply with the manager's
privileges before dropping them (``StandardOutput=file:``, ``Slice=``,
``Delegate=``, raised rlimits, negative nice, the unit's name) is EPERM, as
is stdio fall-through (it would hand the server's own stdio to the guest)
and message channels (the server would connect to the msgchan's ``uri`` as
itself, a confused deputy: a guest could reach this very server as root).

:func:`visible` is the rule for ``kill``, ``wait``, ``list`` and ``attach``:
a trusted client sees every process, a guest only those it started or that
work for it (a Flux job's shell, started by the owner through the IMP: see
:mod:`sdexec.flux.tenants`); another user's process is answered as one that
does not exist, its labels are kept apart, and its events are not sent to
the guest.  :func:`check_claim` keeps ``wait`` and input to a process that
works for a guest with the one who started it.

:func:`as_guest` makes the checks a guest's exec needs before any unit is
created (the PATH search, "is it executable") with the guest's own file
permissions: the calling thread's filesystem uid, gid and groups are the
guest's meanwhile (``setfsuid``/``setfsgid`` and ``setgroups`` as raw
system calls, which change that one thread only).  Run as root, the checks
would tell a guest whether a file it cannot see exists (EACCES against
ENOENT).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import pwd
from collections.abc import Iterator
from typing import TYPE_CHECKING

from dbus_fast import Variant

from sdexec.base.errors import SdexecError
from sdexec.proto.message import ROLE_OWNER
from sdexec.proto.rfc42 import LocalFlag
from sdexec.systemd.properties import OPTS_PREFIX, Property

if TYPE_CHECKING:
    from sdexec.broker.request import Request
    from sdexec.proto.rfc42 import ExecRequest

#: Unit settings (``SDEXEC_PROP_<Name>`` options) a guest may set.
GUEST_PROPERTIES = frozenset(
    {
        "Description",
        "SyslogIdentifier",
        "MemoryMax",
        "MemoryHigh",
        "MemorySwapMax",
        "TasksMax",
        "CPUQuota",
        "CPUQuotaPerSecUSec",
        "CPUWeight",
        "IOWeight",
        "RuntimeMaxSec",
        "RuntimeMaxUSec",
        "RuntimeRandomizedExtraSec",
        "RuntimeRandomizedExtraUSec",
        "TimeoutStopSec",
        "TimeoutStopUSec",
        "KillMode",
        "KillSignal",
        "FinalKillSignal",
        "SendSIGKILL",
        "SendSIGHUP",
    }
)
#: Other command options a guest may set.
GUEST_OPTIONS = frozenset({"stdin_BUFSIZE", "SDEXEC_IDEMPOTENCY_KEY"})


def is_guest(req: Request) -> bool:
    return not req.rolemask & ROLE_OWNER


def visible(req: Request, requester_uid: int, tenant_uid: int | None = None) -> bool:
    """May ``req``'s sender see a process started by ``requester_uid`` for ``tenant_uid``?"""
    return not is_guest(req) or req.userid in (requester_uid, tenant_uid)


def check_claim(req: Request, requester_uid: int, what: str) -> None:
    """EPERM unless ``req``'s sender may take over the process (wait for it, write to it).

    A guest may see, follow and signal a process that works for it, but the
    one who started it (the instance owner, for a Flux job's shell) waits for
    it: a guest that reaped it or fed it input would take the job from Flux.
    """
    if is_guest(req) and requester_uid != req.userid:
        raise SdexecError(
            errno.EPERM,
            f"process {what} works for you but belongs to the instance owner:"
            " you may list, follow (attach, logs) and signal it",
        )


# Raw system call numbers (the libc wrappers of setgroups change every thread).
_SYSCALLS: dict[str, tuple[int, int, int]] = {  # machine: (setgroups, setfsuid, setfsgid)
    "x86_64": (116, 122, 123),
    "aarch64": (159, 151, 152),
}


def _guest_groups(uid: int, gid: int) -> list[int]:
    try:
        return os.getgrouplist(pwd.getpwuid(uid).pw_name, gid)
    except (KeyError, OSError):
        return [gid]


@contextlib.contextmanager
def as_guest(uid: int, gid: int) -> Iterator[None]:
    """File permission checks in this block are the guest's (EPERM if that is impossible)."""
    numbers = _SYSCALLS.get(os.uname().machine)
    if numbers is None or os.geteuid() != 0:
        raise SdexecError(errno.EPERM, "cannot check files with a guest's permissions here")
    setgroups, setfsuid, setfsgid = numbers
    libc = ctypes.CDLL(None, use_errno=True)
    groups = _guest_groups(uid, gid)
    old_groups = os.getgroups()

    def call(number: int, *args: object) -> None:
        if libc.syscall(number, *args) < 0:
            raise OSError(ctypes.get_errno(), "switching file credentials")

    def set_groups(values: list[int]) -> None:
        array = (ctypes.c_uint * max(1, len(values)))(*values)
        call(setgroups, ctypes.c_size_t(len(values)), array)

    set_groups(groups)
    try:
        libc.syscall(setfsgid, ctypes.c_uint(gid))
        libc.syscall(setfsuid, ctypes.c_uint(uid))
        # setfsuid(2) cannot report failure: ask (an invalid id changes nothing).
        if libc.syscall(setfsuid, ctypes.c_uint(0xFFFFFFFF)) != uid:
            raise SdexecError(errno.EPERM, "cannot check files with a guest's permissions")
        yield
    finally:
        libc.syscall(setfsuid, ctypes.c_uint(os.geteuid()))
        libc.syscall(setfsgid, ctypes.c_uint(os.getegid()))
        set_groups(old_groups)


def can_switch_user() -> bool:
    return os.geteuid() == 0


def exec_properties(req: Request, er: ExecRequest) -> list[Property]:
    """Extra unit properties for ``req``'s exec ([] for a trusted client); EPERM if refused."""
    if not is_guest(req):
        return []
    for key in er.cmd.opts:
        name = key[len(OPTS_PREFIX) :] if key.startswith(OPTS_PREFIX) else None
        if key not in GUEST_OPTIONS and name not in GUEST_PROPERTIES:
            raise SdexecError(errno.EPERM, f"guests may not set the option {key}")
    if er.local_flags & LocalFlag.STDIO_FALLTHROUGH:
        raise SdexecError(errno.EPERM, "guests may not use stdio fall-through")
    if er.cmd.msgchans:
        # The server would connect to the msgchan's uri with its own
        # credentials: a guest could reach this very server as its owner.
        raise SdexecError(errno.EPERM, "guests may not use message channels")
    if not can_switch_user():
        raise SdexecError(errno.EPERM, "this server cannot run commands as another user")
    gid = req.conn.gid
    if req.userid < 0 or gid < 0:
        raise SdexecError(errno.EPERM, "the guest's credentials are unknown")
    return [("User", Variant("s", str(req.userid))), ("Group", Variant("s", str(gid)))]
