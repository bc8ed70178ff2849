"""Built-in services every Flux peer expects: ``attr.get`` and ``state-machine.wait``.

Flux's own tools ask for these before anything else (see FLUX-INTEROP.md):
``flux exec`` reads ``size`` and ``security.owner``, ``flux proxy`` compares
``version`` and, with ``--reconnect``, waits on ``state-machine.wait``.
``flags: 1`` marks an attribute immutable, so the client may cache it.
"""

from __future__ import annotations

import errno
import os

from sdexec import __version__
from sdexec.base.errors import ProtocolError, SdexecError
from sdexec.broker.request import Request
from sdexec.broker.router import Router

ATTR_IMMUTABLE = 1


def reported_version() -> str:
    """The version told to clients (tests may pose as another release)."""
    return os.environ.get("SDEXEC_TEST_FAKE_VERSION") or __version__


class Builtins:
    def __init__(self, router: Router, *, rank: int, size: int, owner: int) -> None:
        self.attrs = {
            "rank": str(rank),
            "size": str(size),
            "version": reported_version(),
            "security.owner": str(owner),
        }
        router.register("attr.get", self.attr_get)
        router.register("state-machine.wait", self.state_machine_wait)

    def attr_get(self, req: Request) -> None:
        name = req.payload().get("name")
        if not isinstance(name, str):
            raise ProtocolError("attr.get: missing 'name'")
        try:
            value = self.attrs[name]
        except KeyError:
            raise SdexecError(errno.ENOENT, f"unknown attribute {name}") from None
        flags = 0 if name == "version" else ATTR_IMMUTABLE  # as flux-core reports them
        req.respond({"value": value, "flags": flags})

    def state_machine_wait(self, req: Request) -> None:
        # The server is always in its run state once it answers requests.
        req.respond(None)
