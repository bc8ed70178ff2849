"""Request dispatch, credentials and error responses (sdexec.broker.router)."""

from __future__ import annotations

import asyncio
import errno
import itertools
from collections.abc import Callable
from typing import Any, cast

import pytest

from sdexec.base.errors import SdexecError
from sdexec.broker.request import Request
from sdexec.broker.router import Router
from sdexec.proto.message import (
    ROLE_OWNER,
    ROLE_USER,
    Message,
    MsgFlag,
    MsgType,
)
from sdexec.transport.unix import Connection

OWNER = 1000
GUEST = 2000
_ids = itertools.count(1)


class FakeConn:
    """Just enough of :class:`~sdexec.transport.unix.Connection` for the router."""

    stamps_credentials = True

    def __init__(self, uid: int = OWNER, pid: int = 4321) -> None:
        self.id = f"conn{next(_ids)}"
        self.uid = uid
        self.pid = pid
        self.transport: object | None = object()
        self.writable = True
        self.sent: list[Message] = []
        self.listeners: list[Callable[[bool], None]] = []
        self.closed = False
        self.pending = 0  # requests owing a response (Connection.pending)
        self.last_active = 0.0

    def send(self, msg: Message) -> None:
        self.sent.append(msg)

    def on_writable(self, fn: Callable[[bool], None]) -> None:
        self.listeners.append(fn)

    def remove_on_writable(self, fn: Callable[[bool], None]) -> None:
        self.listeners.remove(fn)

    def close(self) -> None:
        self.closed = True
        self.transport = None


def as_conn(fake: FakeConn) -> Connection:
    return cast(Connection, fake)


def make_router(owner: int = OWNER, *, allow_guests: bool = False) -> Router:
    return Router(owner, allow_guests=allow_guests)


def connect(router: Router, uid: int = OWNER) -> FakeConn:
    conn = FakeConn(uid)
    assert router.accept(as_conn(conn)) == 0
    return conn


def send(router: Router, conn: FakeConn, msg: Message) -> None:
    router.received(as_conn(conn), msg)


def request(topic: str = "svc.echo", payload: Any = None, *, flags: int = 0) -> Message:
    return Message.request(topic, payload if payload is not None else {}, matchtag=9, flags=flags)


def only_response(conn: FakeConn) -> Message:
    assert len(conn.sent) == 1, conn.sent
    msg = conn.sent[0]
    assert msg.type == MsgType.RESPONSE
    return msg


def echo(req: Request) -> None:
    req.respond(req.payload())


def failing(exc: BaseException) -> Callable[[Request], None]:
    def handler(req: Request) -> None:
        raise exc

    return handler


# --- accept ---------------------------------------------------------------------------------


def test_accept_owner_connection() -> None:
    router = make_router()
    conn = FakeConn(OWNER)
    assert router.accept(as_conn(conn)) == 0
    assert router.connections[conn.id] is cast(Any, conn)


def test_accept_refuses_a_foreign_uid_with_eperm() -> None:
    router = make_router()
    conn = FakeConn(GUEST)
    assert router.accept(as_conn(conn)) == errno.EPERM
    assert conn.id not in router.connections


def test_accept_foreign_uid_when_guests_are_allowed() -> None:
    router = make_router(allow_guests=True)
    assert router.accept(as_conn(FakeConn(GUEST))) == 0


# --- dispatch errors -------------------------------------------------------------------------


def test_unknown_service_is_enosys_with_flux_text() -> None:
    router = make_router()
    conn = connect(router)
    send(router, conn, request("nosuch.method"))
    resp = only_response(conn)
    assert resp.errnum == errno.ENOSYS
    assert resp.error_text() == "No service matching nosuch.method is registered"


def test_unknown_method_of_a_known_service_is_enosys() -> None:
    router = make_router()
    router.register("svc.echo", echo)
    conn = connect(router)
    send(router, conn, request("svc.other"))
    resp = only_response(conn)
    assert resp.errnum == errno.ENOSYS
    assert "svc.other" in (resp.error_text() or "")


def test_non_streaming_request_to_streaming_only_route_is_eproto() -> None:
    router = make_router()
    called: list[Request] = []
    router.register("svc.stream", called.append, streaming_only=True)
    conn = connect(router)
    send(router, conn, request("svc.stream"))
    assert only_response(conn).errnum == errno.EPROTO
    assert called == []


def test_streaming_request_to_streaming_only_route_is_dispatched() -> None:
    router = make_router()
    called: list[Request] = []
    router.register("svc.stream", called.append, streaming_only=True)
    conn = connect(router)
    send(router, conn, request("svc.stream", flags=MsgFlag.STREAMING))
    assert len(called) == 1
    assert conn.sent == []


def test_error_response_keeps_topic_and_matchtag() -> None:
    router = make_router()
    conn = connect(router)
    send(router, conn, request("nosuch.method"))
    resp = only_response(conn)
    assert resp.topic == "nosuch.method"
    assert resp.matchtag == 9


def test_non_request_messages_are_ignored() -> None:
    router = make_router()
    called: list[Request] = []
    router.register("svc.echo", called.append)
    conn = connect(router)
    send(router, conn, request().response({}))
    send(router, conn, Message.event("svc.echo", {}))
    assert called == []
    assert conn.sent == []


# --- credentials -----------------------------------------------------------------------------


def test_userid_is_overwritten_with_the_connection_uid() -> None:
    router = make_router(allow_guests=True)
    seen: list[Request] = []
    router.register("svc.echo", seen.append)
    conn = connect(router, GUEST)
    msg = request()
    msg.userid = 0  # a claim to be root
    send(router, conn, msg)
    assert seen[0].userid == GUEST


def test_owner_gets_owner_role() -> None:
    router = make_router()
    seen: list[Request] = []
    router.register("svc.echo", seen.append)
    conn = connect(router, OWNER)
    send(router, conn, request())
    assert seen[0].rolemask == ROLE_OWNER == 1


def test_guest_gets_user_role_whatever_it_claims() -> None:
    router = make_router(allow_guests=True)
    seen: list[Request] = []
    router.register("svc.echo", seen.append)
    conn = connect(router, GUEST)
    msg = request()
    msg.rolemask = ROLE_OWNER
    send(router, conn, msg)
    assert seen[0].rolemask == ROLE_USER == 2


# --- sync handlers ---------------------------------------------------------------------------


def test_sync_handler_response_is_sent() -> None:
    router = make_router()
    router.register("svc.echo", echo)
    conn = connect(router)
    send(router, conn, request(payload={"x": 1}))
    resp = only_response(conn)
    assert resp.errnum == 0
    assert resp.json() == {"x": 1}
    assert resp.matchtag == 9


def test_streaming_responses_carry_the_streaming_flag_and_end_with_enodata() -> None:
    router = make_router()

    def stream(req: Request) -> None:
        req.respond({"n": 1})
        req.respond({"n": 2})
        req.end()

    router.register("svc.stream", stream)
    conn = connect(router)
    send(router, conn, request("svc.stream", flags=MsgFlag.STREAMING))
    assert [m.json() for m in conn.sent[:2]] == [{"n": 1}, {"n": 2}]
    assert conn.sent[2].errnum == errno.ENODATA
    assert all(m.streaming for m in conn.sent)


def test_nothing_is_sent_after_the_final_error() -> None:
    router = make_router()

    def handler(req: Request) -> None:
        req.error(errno.ENOENT, "gone")
        req.respond({"late": True})
        req.error(errno.EIO)

    router.register("svc.echo", handler)
    conn = connect(router)
    send(router, conn, request())
    assert only_response(conn).errnum == errno.ENOENT


def test_request_payload_that_is_not_json_is_eproto() -> None:
    router = make_router()
    router.register("svc.echo", echo)
    conn = connect(router)
    msg = request()
    msg.payload = b"{not json\0"
    send(router, conn, msg)
    assert only_response(conn).errnum == errno.EPROTO


# --- exceptions -> error responses ------------------------------------------------------------


def test_sdexec_error_keeps_errno_and_message() -> None:
    router = make_router()
    router.register("svc.echo", failing(SdexecError(errno.ENOENT, "no such thing")))
    conn = connect(router)
    send(router, conn, request())
    resp = only_response(conn)
    assert resp.errnum == errno.ENOENT
    assert resp.error_text() == "no such thing"


def test_plain_oserror_keeps_errno_and_strerror() -> None:
    router = make_router()
    router.register("svc.echo", failing(PermissionError(errno.EACCES, "Permission denied")))
    conn = connect(router)
    send(router, conn, request())
    resp = only_response(conn)
    assert resp.errnum == errno.EACCES
    assert resp.error_text() == "Permission denied"


def test_value_error_is_einval() -> None:
    router = make_router()
    router.register("svc.echo", failing(ValueError("bad value")))
    conn = connect(router)
    send(router, conn, request())
    resp = only_response(conn)
    assert resp.errnum == errno.EINVAL
    assert resp.error_text() == "bad value"


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyError("k"), TypeError("t")])
def test_other_exceptions_are_eio(exc: Exception) -> None:
    router = make_router()
    router.register("svc.echo", failing(exc))
    conn = connect(router)
    send(router, conn, request())
    resp = only_response(conn)
    assert resp.errnum == errno.EIO
    assert resp.error_text() == f"internal error: {type(exc).__name__}"


def test_handler_exception_does_not_escape_the_router() -> None:
    router = make_router()
    router.register("svc.echo", failing(RuntimeError("boom")))
    conn = connect(router)
    send(router, conn, request())  # would raise here if it escaped
    router.register("svc.echo", echo)
    send(router, conn, request(payload={"ok": 1}))
    assert conn.sent[-1].json() == {"ok": 1}


# --- NORESPONSE --------------------------------------------------------------------------------


def test_noresponse_success_is_never_answered() -> None:
    router = make_router()
    router.register("svc.echo", echo)
    conn = connect(router)
    send(router, conn, request(flags=MsgFlag.NORESPONSE))
    assert conn.sent == []


def test_noresponse_error_is_never_answered() -> None:
    router = make_router()
    router.register("svc.echo", failing(SdexecError(errno.ENOENT)))
    conn = connect(router)
    send(router, conn, request(flags=MsgFlag.NORESPONSE))
    assert conn.sent == []


def test_noresponse_to_unknown_topic_is_never_answered() -> None:
    router = make_router()
    conn = connect(router)
    send(router, conn, request("nosuch.method", flags=MsgFlag.NORESPONSE))
    assert conn.sent == []


# --- async handlers ----------------------------------------------------------------------------


def run_async(router: Router, conn: FakeConn, *msgs: Message) -> None:
    async def main() -> None:
        async with asyncio.TaskGroup() as tg:
            router.attach(tg)
            for msg in msgs:
                send(router, conn, msg)

    asyncio.run(main())


def test_async_handler_response_is_sent() -> None:
    router = make_router()

    async def handler(req: Request) -> None:
        await asyncio.sleep(0)
        req.respond({"async": True})

    router.register("svc.echo", handler)
    conn = connect(router)
    run_async(router, conn, request())
    assert only_response(conn).json() == {"async": True}


def test_async_handler_exception_becomes_error_response() -> None:
    router = make_router()

    async def handler(req: Request) -> None:
        await asyncio.sleep(0)
        raise SdexecError(errno.ESRCH, "process 5 not found")

    router.register("svc.echo", handler)
    conn = connect(router)
    run_async(router, conn, request())
    resp = only_response(conn)
    assert resp.errnum == errno.ESRCH
    assert resp.error_text() == "process 5 not found"


def test_async_handler_crash_is_eio_and_does_not_cancel_siblings() -> None:
    router = make_router()

    async def crash(req: Request) -> None:
        raise RuntimeError("boom")

    async def slow(req: Request) -> None:
        await asyncio.sleep(0.01)
        req.respond({"slow": True})

    router.register("svc.crash", crash)
    router.register("svc.slow", slow)
    conn = connect(router)
    run_async(router, conn, request("svc.slow"), request("svc.crash"))
    assert [m.errnum for m in conn.sent] == [errno.EIO, 0]
    assert conn.sent[1].json() == {"slow": True}


def test_async_handler_with_noresponse_is_never_answered() -> None:
    router = make_router()

    async def handler(req: Request) -> None:
        raise SdexecError(errno.ESRCH)

    router.register("svc.echo", handler)
    conn = connect(router)
    run_async(router, conn, request(flags=MsgFlag.NORESPONSE))
    assert conn.sent == []


def test_spawned_work_failure_is_contained() -> None:
    router = make_router()
    ran: list[bool] = []

    async def work() -> None:
        ran.append(True)
        raise RuntimeError("background failure")

    async def main() -> None:
        async with asyncio.TaskGroup() as tg:
            router.attach(tg)
            router.spawn(work(), "test work")

    asyncio.run(main())  # the TaskGroup is not torn down by the failure
    assert ran == [True]


# --- sender and disconnect ----------------------------------------------------------------------


def test_sender_of_a_direct_request_is_the_connection() -> None:
    router = make_router()
    seen: list[Request] = []
    router.register("svc.echo", seen.append)
    conn = connect(router)
    send(router, conn, request())
    assert seen[0].sender == (conn.id,)


def test_sender_lists_routes_origin_first() -> None:
    router = make_router()
    seen: list[Request] = []
    router.register("svc.echo", seen.append)
    conn = connect(router)
    msg = request()
    msg.push_route("origin")  # pushed first: nearest the delimiter
    msg.push_route("proxy")  # pushed last: top of the stack
    assert msg.routes == ["proxy", "origin"]
    send(router, conn, msg)
    assert seen[0].sender == (conn.id, "origin", "proxy")


def test_requests_relayed_for_different_children_have_different_senders() -> None:
    router = make_router()
    seen: list[Request] = []
    router.register("svc.echo", seen.append)
    conn = connect(router)
    for child in ("child-a", "child-b"):
        msg = request()
        msg.push_route(child)
        send(router, conn, msg)
    assert seen[0].sender != seen[1].sender


def test_responses_keep_the_request_route_stack() -> None:
    router = make_router()
    router.register("svc.echo", echo)
    conn = connect(router)
    msg = request()
    msg.push_route("origin")
    msg.push_route("proxy")
    send(router, conn, msg)
    assert only_response(conn).routes == ["proxy", "origin"]


def test_closed_runs_disconnect_hooks_with_the_connection_id() -> None:
    router = make_router()
    gone: list[str] = []
    router.disconnect_hooks.append(gone.append)
    conn = connect(router)
    router.closed(as_conn(conn))
    assert gone == [conn.id]
    assert conn.id not in router.connections


def test_failing_disconnect_hook_does_not_stop_the_others() -> None:
    router = make_router()
    gone: list[str] = []

    def bad(conn_id: str) -> None:
        raise RuntimeError("hook failed")

    router.disconnect_hooks.extend([bad, gone.append])
    conn = connect(router)
    router.closed(as_conn(conn))
    assert gone == [conn.id]


def test_request_connected_follows_the_transport() -> None:
    router = make_router()
    seen: list[Request] = []
    router.register("svc.echo", seen.append)
    conn = connect(router)
    send(router, conn, request())
    assert seen[0].connected
    conn.close()
    assert not seen[0].connected


def test_deeply_nested_json_payload_is_eproto() -> None:
    router = make_router()
    router.register("svc.echo", echo)
    conn = connect(router)
    msg = request()
    msg.payload = b"[" * 100_000 + b"\0"
    send(router, conn, msg)
    assert only_response(conn).errnum == errno.EPROTO


# --- idle connections (the owner's way in past a full table) --------------------------


def test_a_request_is_pending_until_its_last_response() -> None:
    router = make_router()
    seen: list[Request] = []
    router.register("svc.hold", seen.append)
    router.register("svc.stream", seen.append)
    conn = connect(router)
    send(router, conn, request("svc.hold"))
    send(router, conn, request("svc.stream", flags=MsgFlag.STREAMING))
    send(router, conn, request("svc.hold", flags=MsgFlag.NORESPONSE))
    assert conn.pending == 2
    seen[0].respond({})
    seen[1].respond({})
    assert conn.pending == 1
    seen[1].end()
    seen[1].error(5)  # after the end: nothing more is sent or counted
    assert conn.pending == 0


def test_evict_idle_closes_the_longest_idle_connection_guests_first() -> None:
    router = make_router(allow_guests=True)
    router.register("svc.hold", lambda req: None)
    old_owner, guest, busy = connect(router), connect(router, GUEST), connect(router)
    old_owner.last_active, guest.last_active, busy.last_active = 1.0, 5.0, 0.5
    send(router, busy, request("svc.hold"))  # a request in flight: not idle
    assert router.evict_idle() == guest.id and guest.closed
    assert router.evict_idle() == old_owner.id and old_owner.closed
    assert router.evict_idle() is None and not busy.closed
