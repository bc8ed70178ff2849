"""Client-side RFC 42 request signing for the CLI (``--sign``, ``--sign-mechanism``).

Theory of operation
-------------------
A server whose uid differs from its instance owner accepts only signed
RFC 42 requests (RFC 42 "Request Authentication"), and only signatures made
by its own uid.  The CLI finds out by asking for the ``security.owner``
attribute, as Flux's own tools do, and signs when the owner is not the
caller and the server (the socket's peer, by ``SO_PEERCRED``) runs as the
caller; a guest of someone else's server has nothing to sign with.
``--sign`` signs without asking, ``--no-sign`` never signs.  Signing
installs a :class:`Signer` on the
:class:`~sdexec.client.blocking.BlockingHandle`, which then replaces the
payload of every RFC 42 request (``exec``, ``write``, ``kill``, ``wait``,
``list``, ``attach``) with just ``{"signature": ...}``: the signed object
carries the fields and the topic, and nothing is encoded twice.

The mechanism is ``--sign-mechanism`` (else ``$SDEXEC_SIGN_MECHANISM``,
else ``munge``); the MUNGE daemon's socket is ``--munge-socket`` (else
``$SDEXEC_MUNGE_SOCKET``, else libmunge's default).  Only the light
:mod:`sdexec.security.sign` is imported, and only when signing.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

    from sdexec.client.blocking import BlockingHandle
    from sdexec.client.handle import Handle

AUTO = "auto"
ALWAYS = "always"
NEVER = "never"
DEFAULT_MECHANISM = "munge"


class SignOptions:
    """How a CLI command signs: mode (auto/always/never), mechanism, munge socket."""

    __slots__ = ("mechanism", "mode", "munge_socket")

    def __init__(
        self, mode: str = AUTO, mechanism: str | None = None, munge_socket: str | None = None
    ) -> None:
        self.mode = mode
        self.mechanism = mechanism or os.environ.get("SDEXEC_SIGN_MECHANISM") or DEFAULT_MECHANISM
        self.munge_socket = munge_socket or os.environ.get("SDEXEC_MUNGE_SOCKET") or None


def sign_options(args: argparse.Namespace) -> SignOptions:
    """The signing options of parsed CLI arguments."""
    mode = ALWAYS if getattr(args, "sign", False) else AUTO
    if getattr(args, "no_sign", False):
        mode = NEVER
    return SignOptions(
        mode, getattr(args, "sign_mechanism", None), getattr(args, "munge_socket", None)
    )


class Signer:
    """Turns RFC 42 request payloads into their signed form."""

    __slots__ = ("mechanism", "munge_socket")

    def __init__(self, mechanism: str, munge_socket: str | None) -> None:
        self.mechanism = mechanism
        self.munge_socket = munge_socket

    def __call__(self, topic: str, payload: dict[str, Any] | None) -> dict[str, Any] | None:
        from sdexec.security import sign

        if topic.partition(".")[2] not in sign.SIGNED_METHODS:
            return payload
        return sign.signed_request(topic, payload, self.mechanism, munge_socket=self.munge_socket)


def peer_uid(handle: BlockingHandle | Handle) -> int | None:
    """The uid of the process at the other end of the socket (None if unknown)."""
    import _socket
    import sys

    try:
        sock = _socket.socket(fileno=os.dup(handle.fileno()))
    except OSError:
        return None
    try:
        raw = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
    except OSError:
        return None
    finally:
        sock.close()
    return int.from_bytes(raw[4:8], sys.byteorder)


def _wants_signature(handle: BlockingHandle | Handle, owner: object) -> bool:
    """Whether a server whose ``security.owner`` is ``owner`` wants signatures
    that the caller can make: the owner is someone else, and the server runs
    as the caller (RFC 42 "Request Authentication")."""
    uid = os.getuid()
    if owner == str(uid):
        return False
    server = peer_uid(handle)
    return server is None or server == uid


def should_sign(handle: BlockingHandle) -> bool:
    """Whether this server wants signatures that the caller can make."""
    from sdexec.base.errors import SdexecError

    try:
        owner = handle.rpc("attr.get", {"name": "security.owner"}).get("value")
    except SdexecError:
        return False  # a server without the attribute does not ask for signatures
    return _wants_signature(handle, owner)


def apply(handle: BlockingHandle, options: SignOptions | None) -> None:
    """Install a signer on ``handle`` if ``options`` (and the server) call for one."""
    if options is None or options.mode == NEVER:
        return
    if options.mode == ALWAYS or should_sign(handle):
        handle.signer = Signer(options.mechanism, options.munge_socket)


async def apply_async(handle: Handle, options: SignOptions | None) -> None:
    """:func:`apply` for the asyncio client (the many-rank commands)."""
    from sdexec.base.errors import SdexecError

    if options is None or options.mode == NEVER:
        return
    wanted = options.mode == ALWAYS
    if not wanted:
        try:
            owner = (await handle.rpc("attr.get", {"name": "security.owner"})).get("value")
        except SdexecError:
            return
        wanted = _wants_signature(handle, owner)
    if wanted:
        handle.signer = Signer(options.mechanism, options.munge_socket)
