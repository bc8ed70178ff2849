"""The broker as one connection of the router (sdexec.flux.link), with no Flux.

Messages are what ``flux_msg_encode`` makes (RFC 3 frames, no stream header),
built here with sdexec's own codec, which is the same encoding.
"""

from __future__ import annotations

import errno

from sdexec.flux.link import RANK0_REFUSAL, ROLE_LOCAL, FluxLink
from sdexec.proto.framing import HEADER_SIZE, encode_frame, split_parts
from sdexec.proto.message import ROLE_OWNER, Message, MsgFlag, decode_parts
from sdexec.transport.unix import Connection

ROUTES = ["client-uuid", "connector", "broker-0"]


class Router:
    """What the link needs of the router: accept, received, closed."""

    def __init__(self) -> None:
        self.got: list[Message] = []
        self.accepted: list[Connection] = []
        self.gone: list[Connection] = []

    def accept(self, conn: Connection) -> int:
        self.accepted.append(conn)
        return 0

    def received(self, conn: Connection, msg: Message) -> None:
        self.got.append(msg)

    def closed(self, conn: Connection) -> None:
        self.gone.append(conn)


def encoded(msg: Message) -> bytes:
    return encode_frame(msg)[HEADER_SIZE:]


def request(topic: str, rolemask: int, flags: int = 0) -> Message:
    msg = Message.request(topic, {"pid": 1}, matchtag=5, flags=flags)
    msg.routes = list(ROUTES)
    msg.userid = 1000
    msg.rolemask = rolemask
    return msg


def make(rank: int) -> tuple[FluxLink, Router, list[Message]]:
    router = Router()
    sent: list[Message] = []
    link = FluxLink(
        router,
        lambda data: sent.append(decode_parts(split_parts(data))),
        service="sdexec",
        rank=rank,
        owner=1000,
    )
    assert link.attach() == 0 and router.accepted == [link]
    link.open()
    return link, router, sent


def test_the_router_gets_the_broker_credentials_untouched() -> None:
    link, router, _ = make(rank=3)
    link.received_encoded(encoded(request("sdexec.list", ROLE_OWNER)))
    (msg,) = router.got
    assert (msg.userid, msg.rolemask, msg.routes) == (1000, ROLE_OWNER, ROUTES)
    assert not FluxLink.stamps_credentials


def test_rank0_refuses_requests_without_the_local_role() -> None:
    link, router, sent = make(rank=0)
    link.received_encoded(encoded(request("sdexec.exec", ROLE_OWNER)))
    assert not router.got
    (resp,) = sent
    assert resp.errnum == errno.EPERM and resp.error_text() == RANK0_REFUSAL
    assert resp.routes == ROUTES and resp.matchtag == 5  # the broker routes it back


def test_rank0_drops_a_remote_write_without_a_response() -> None:
    link, router, sent = make(rank=0)
    link.received_encoded(encoded(request("sdexec.write", ROLE_OWNER, MsgFlag.NORESPONSE)))
    assert not router.got and not sent


def test_rank0_serves_its_own_clients_and_methods_without_processes() -> None:
    link, router, sent = make(rank=0)
    link.received_encoded(encoded(request("sdexec.exec", ROLE_OWNER | ROLE_LOCAL)))
    link.received_encoded(encoded(request("sdexec.stats-get", ROLE_OWNER)))
    link.received_encoded(encoded(request("sdexec.disconnect", ROLE_OWNER, MsgFlag.NORESPONSE)))
    assert [m.topic for m in router.got] == [
        "sdexec.exec",
        "sdexec.stats-get",
        "sdexec.disconnect",
    ]
    assert not sent


def test_other_ranks_serve_remote_requests() -> None:
    link, router, _ = make(rank=1)
    link.received_encoded(encoded(request("sdexec.exec", ROLE_OWNER)))
    assert len(router.got) == 1


def test_requests_before_open_wait_in_order() -> None:
    router = Router()
    link = FluxLink(router, lambda data: None, service="sdexec", rank=1, owner=0)
    for topic in ("sdexec.exec", "sdexec.list"):
        link.received_encoded(encoded(request(topic, ROLE_OWNER)))
    assert not router.got
    link.open()
    assert [m.topic for m in router.got] == ["sdexec.exec", "sdexec.list"]


def test_undecodable_message_is_dropped() -> None:
    link, router, sent = make(rank=1)
    link.received_encoded(b"\x05abc")
    assert not router.got and not sent


def test_send_encodes_the_response_as_flux_decodes_it() -> None:
    link, _, sent = make(rank=2)
    req = request("sdexec.exec", ROLE_OWNER, MsgFlag.STREAMING)
    link.send_pieces(req.response(b""), [b'{"type":', b'"started","pid":7}\0'])
    (resp,) = sent
    assert resp.json() == {"type": "started", "pid": 7} and resp.routes == ROUTES


def test_close_tells_the_router_and_stops_sending() -> None:
    link, router, sent = make(rank=2)
    link.close()
    assert router.gone == [link]
    link.send(request("sdexec.list", ROLE_OWNER).response({}))
    assert not sent
