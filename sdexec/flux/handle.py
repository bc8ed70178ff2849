"""The one module that touches flux-core's Python bindings (``_flux``, ``flux``).

Theory of operation
-------------------
A Python broker module runs in its own process (``flux module-python-exec``)
with a ``flux.Flux`` handle connected to its broker.  :class:`BrokerHandle`
wraps that handle for an asyncio program:

* **Messages as bytes.** A request that reaches one of our message handlers
  is handed over as its RFC 3 encoding (``flux_msg_encode``: the same frames
  as sdexec's ``local://`` framing, without the stream header), and a reply
  goes out from its encoding (``flux_msg_decode`` + ``flux_send``).  So the
  server core above sees the same :class:`~sdexec.proto.message.Message`
  objects it gets from its own sockets, with the credentials the broker
  stamped on them.
* **Flux's reactor, pumped from asyncio.** The handle's poll fd is
  edge-triggered; :meth:`pump` runs Flux's reactor without blocking while the
  handle has messages waiting, which dispatches them to Flux's message
  handlers (ours, and the defaults every module gets: ping, debug, rusage).
* **Outgoing RPCs** (``sdexec-mapper.lookup``) are Flux futures whose
  continuation fires inside :meth:`pump` and resolves an asyncio future.
* **Logging** goes through ``flux_log`` with the text as an argument, never as
  the format: unit output may contain ``%``.

Nothing here knows RFC 42; the bindings are untyped, so they are ``Any`` at
this boundary and nowhere else.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable
from typing import Any

from _flux._core import ffi, lib  # type: ignore[import-not-found]
from flux.constants import FLUX_MSGTYPE_REQUEST  # type: ignore[import-not-found]
from flux.core.handle import Flux  # type: ignore[import-not-found]

#: Roles the broker stamps on a message (RFC 12): OWNER, USER, LOCAL.
ROLE_OWNER = 1
ROLE_USER = 2
ROLE_LOCAL = 4

Receiver = Callable[[bytes], None]
#: Reactor iterations after the last waiting message (see BrokerHandle.pump).
SETTLE = 2
#: The C type of a message handler (flux_msg_handler_f).
_MSG_HANDLER = "void(flux_t *, flux_msg_handler_t *, const flux_msg_t *, void *)"


class BrokerHandle:
    """The module's broker connection, as an asyncio program sees it."""

    def __init__(self, h: Any) -> None:
        self.h = h
        self._raw = h.handle
        self._reactor = lib.flux_get_reactor(self._raw)
        self._handlers: list[tuple[Any, Any, Any]] = []  # (handler, callback, topic)
        self._futures: set[Any] = set()
        self._u32 = ffi.new("uint32_t[1]")

    # --- identity and attributes --------------------------------------------------

    @property
    def name(self) -> str:
        """The module's name (``--name``), which is also its service name."""
        ptr = lib.flux_aux_get(self._raw, b"flux::name")
        return str(ffi.string(ffi.cast("char *", ptr)).decode()) if ptr != ffi.NULL else "sdexec"

    @property
    def rank(self) -> int:
        lib.flux_get_rank(self._raw, self._u32)
        return int(self._u32[0])

    @property
    def size(self) -> int:
        lib.flux_get_size(self._raw, self._u32)
        return int(self._u32[0])

    def attr(self, name: str) -> str | None:
        """A broker attribute, or None if it is not set."""
        value = lib.flux_attr_get(self._raw, name.encode())
        return None if value == ffi.NULL else str(ffi.string(value).decode())

    # --- requests in, responses out -----------------------------------------------

    def serve(self, topic: str, receive: Receiver, *, guests: bool = False) -> None:
        """Deliver each request for exactly ``topic`` to ``receive`` as its encoding.

        Flux answers a request without the owner role itself (EPERM "Request
        requires owner credentials") unless ``guests`` lets the user role in.

        The handler is a C callback of our own on ``flux_msg_handler_create``,
        not the bindings' message watcher, which wraps each message in a
        Python object we would only take apart again.  An exception in
        ``receive`` stops Flux's reactor with it, as the bindings do.
        """

        def on_message(_h: Any, _mh: Any, msg: Any, _arg: Any) -> None:
            try:
                receive(self._encode(msg))
            except Exception as exc:
                Flux.set_exception(exc)
                lib.flux_reactor_stop_error(self._reactor)

        callback = ffi.callback(_MSG_HANDLER, on_message)

        topic_c = ffi.new("char[]", topic.encode())
        match = ffi.new(
            "struct flux_match *",
            {"typemask": FLUX_MSGTYPE_REQUEST, "matchtag": 0, "topic_glob": topic_c},
        )
        mh = lib.flux_msg_handler_create(self._raw, match[0], callback, ffi.NULL)
        if mh == ffi.NULL:
            raise OSError(ffi.errno or errno.ENOMEM, f"flux_msg_handler_create {topic}")
        if guests:
            lib.flux_msg_handler_allow_rolemask(mh, ROLE_USER)
        lib.flux_msg_handler_start(mh)
        # The callback and the topic must live as long as the handler does.
        self._handlers.append((mh, callback, topic_c))

    def send(self, encoded: bytes) -> None:
        """Send one message given as its RFC 3 encoding (a response, typically).

        Blocking, as flux-core's own modules send: the broker reads its
        modules' sockets as fast as it can, and queues for slow clients itself
        (RFC 42 output has no credit to wait for).
        """
        msg = lib.flux_msg_decode(encoded, len(encoded))
        if msg == ffi.NULL:
            raise OSError(ffi.errno or errno.EPROTO, "flux_msg_decode failed")
        try:
            if lib.flux_send(self._raw, msg, 0) < 0:
                raise OSError(ffi.errno or errno.EIO, "flux_send failed")
        finally:
            lib.flux_msg_destroy(msg)

    def _encode(self, msg: Any) -> bytes:
        size = lib.flux_msg_encode_size(msg)
        if size < 0:
            raise OSError(ffi.errno or errno.EPROTO, "flux_msg_encode_size failed")
        buf = ffi.new("char[]", size)
        if lib.flux_msg_encode(msg, buf, size) < 0:
            raise OSError(ffi.errno or errno.EPROTO, "flux_msg_encode failed")
        return bytes(ffi.buffer(buf, size))

    # --- outgoing RPCs -------------------------------------------------------------

    def rpc(
        self, topic: str, payload: dict[str, Any], nodeid: int | None = None
    ) -> asyncio.Future[Any]:
        """An RPC to another service; the asyncio future gets the decoded response."""
        loop = asyncio.get_running_loop()
        result: asyncio.Future[Any] = loop.create_future()
        kwargs: dict[str, Any] = {} if nodeid is None else {"nodeid": nodeid}
        future = self.h.rpc(topic, payload, **kwargs)
        self._futures.add(future)

        def then(fut: Any) -> None:
            self._futures.discard(future)
            if result.done():
                return
            try:
                result.set_result(fut.get())
            except OSError as exc:
                result.set_exception(exc)
            except Exception as exc:  # the bindings raise other types for bad payloads
                result.set_exception(OSError(errno.EPROTO, str(exc)))

        future.then(then)
        return result

    # --- the reactor -----------------------------------------------------------------

    @property
    def pollfd(self) -> int:
        return int(lib.flux_pollfd(self._raw))

    def pump(self, *, once: bool = False) -> None:
        """Run Flux's reactor while it has work, without blocking.

        The poll fd says only that messages are waiting.  A message the
        reactor has taken may still have work behind it that the fd never
        shows: a fulfilled future runs its continuation on the reactor's
        next iteration.  So after the last waiting message, while one of our
        RPCs is open, the reactor runs SETTLE more times.  ``once``: run it
        even if nothing is waiting (at start: the broker learns that the
        module is running from a prepare watcher of Flux's own).
        """
        raw, reactor = self._raw, self._reactor
        pending = once
        while True:
            if pending or lib.flux_pollevents(raw) & lib.FLUX_POLLIN:
                pending = False
                lib.flux_reactor_run(reactor, lib.FLUX_REACTOR_NOWAIT)
                Flux.raise_if_exception()
                continue
            if not self._futures:
                return
            for _ in range(SETTLE):
                lib.flux_reactor_run(reactor, lib.FLUX_REACTOR_NOWAIT)
                Flux.raise_if_exception()
            if not lib.flux_pollevents(raw) & lib.FLUX_POLLIN:
                return

    def set_running(self) -> None:
        """Tell the broker the module is up (``flux module load`` returns then)."""
        lib.flux_module_set_running(self._raw)

    def close(self) -> None:
        for mh, _callback, _topic in self._handlers:
            lib.flux_msg_handler_stop(mh)
            lib.flux_msg_handler_destroy(mh)
        self._handlers.clear()

    # --- the broker log -----------------------------------------------------------------

    def log(self, level: int, text: str) -> None:
        """One line in the broker's log (``flux dmesg``) at a syslog ``level``."""
        lib.flux_log(self._raw, level, b"%s", ffi.new("char[]", text.encode("utf-8", "replace")))
