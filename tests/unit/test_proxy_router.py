"""The proxy's routing tables, with in-memory children and a recording upstream."""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Awaitable
from typing import Any

import pytest

from sdexec.client.rpc import RemoteError
from sdexec.proto.message import Message, MsgFlag, MsgType
from sdexec.proxy.router import ProxyRouter
from sdexec.transport.unix import Connection

UID = 1000


class Child(Connection):
    def __init__(self, router: ProxyRouter, uid: int = UID) -> None:
        super().__init__(router)
        self.uid = uid
        self.sent: list[Message] = []

    def send(self, msg: Message) -> None:
        self.sent.append(msg)


class FakeUpstream:
    """Records what the proxy sends; its own RPCs succeed unless told otherwise."""

    def __init__(self, fail: dict[str, int] | None = None) -> None:
        self.sent: list[Message] = []
        self.rpcs: list[tuple[str, Any]] = []
        self.fail = fail or {}
        self.connected = True

    def send(self, msg: Message) -> None:
        self.sent.append(msg)

    async def rpc(self, topic: str, payload: Any = None) -> dict[str, Any]:
        self.rpcs.append((topic, payload))
        if topic in self.fail:
            raise RemoteError(self.fail[topic], "refused upstream")
        return {}


class Harness:
    def __init__(self) -> None:
        self.work: list[Awaitable[None]] = []
        self.router = ProxyRouter(self.work.append, uid=UID)
        self.up = FakeUpstream()
        self.router.upstream = self.up  # type: ignore[assignment]

    def child(self, uid: int = UID) -> Child:
        c = Child(self.router, uid)
        assert self.router.accept(c) == 0
        return c

    def run(self) -> None:
        async def drain() -> None:
            while self.work:
                await self.work.pop(0)

        asyncio.run(drain())

    def request(self, child: Child, topic: str, payload: Any = None, **kw: Any) -> None:
        self.router.received(child, Message.request(topic, payload, **kw))
        self.run()


@pytest.fixture
def h() -> Harness:
    return Harness()


def test_another_uid_is_refused(h: Harness) -> None:
    assert h.router.accept(Child(h.router, uid=UID + 1)) == errno.EPERM


def test_request_goes_upstream_with_the_child_route_pushed(h: Harness) -> None:
    c = h.child()
    h.request(c, "sdexec.list", {}, matchtag=4)
    (sent,) = h.up.sent
    assert sent.routes == [c.id]
    assert sent.matchtag == 4


def test_response_from_upstream_goes_to_its_child_without_the_route(h: Harness) -> None:
    a, b = h.child(), h.child()
    h.request(b, "sdexec.list", {}, matchtag=4)
    h.router.from_upstream(h.up.sent[0].response({"procs": []}))
    assert a.sent == []
    assert [(m.matchtag, m.routes) for m in b.sent] == [(4, [])]


def test_connection_loss_fails_in_flight_rpcs_with_econnreset(h: Harness) -> None:
    c = h.child()
    h.request(c, "sdexec.wait", {"pid": 1}, matchtag=9)
    h.router.lost()
    (response,) = c.sent
    assert (response.matchtag, response.errnum) == (9, errno.ECONNRESET)


def test_answered_rpcs_are_not_failed_on_connection_loss(h: Harness) -> None:
    c = h.child()
    h.request(c, "sdexec.list", {}, matchtag=4)
    h.router.from_upstream(h.up.sent[0].response({}))
    h.router.lost()
    assert [m.errnum for m in c.sent] == [0]


def test_streaming_rpc_stays_in_flight_until_its_end(h: Harness) -> None:
    c = h.child()
    h.request(c, "sdexec.exec", {}, matchtag=2, flags=MsgFlag.STREAMING)
    h.router.from_upstream(h.up.sent[0].response({"type": "started"}))
    h.router.lost()
    assert [m.errnum for m in c.sent] == [0, errno.ECONNRESET]


def test_requests_while_disconnected_get_econnreset(h: Harness) -> None:
    c = h.child()
    h.router.lost()
    h.request(c, "sdexec.list", {}, matchtag=3)
    assert [(m.matchtag, m.errnum) for m in c.sent] == [(3, errno.ECONNRESET)]


def test_child_disconnect_sends_disconnect_for_each_service_used(h: Harness) -> None:
    c = h.child()
    h.request(c, "sdexec.exec", {}, matchtag=1, flags=MsgFlag.STREAMING)
    h.request(c, "attr.get", {"name": "size"}, matchtag=2)
    h.up.sent.clear()
    h.router.closed(c)
    assert sorted(m.topic or "" for m in h.up.sent) == ["attr.disconnect", "sdexec.disconnect"]
    for m in h.up.sent:
        assert m.flags & MsgFlag.NORESPONSE
        assert m.routes == [c.id]


def test_one_upstream_subscription_per_prefix(h: Harness) -> None:
    a, b = h.child(), h.child()
    h.request(a, "event.subscribe", {"topic": "sdexec."}, matchtag=1)
    h.request(b, "event.subscribe", {"topic": "sdexec."}, matchtag=1)
    assert h.up.rpcs == [("event.subscribe", {"topic": "sdexec."})]
    assert [m.errnum for m in a.sent + b.sent] == [0, 0]


def test_events_reach_only_children_with_a_matching_prefix(h: Harness) -> None:
    a, b = h.child(), h.child()
    h.request(a, "event.subscribe", {"topic": "sdexec.proc."}, matchtag=1)
    h.request(b, "event.subscribe", {"topic": "other."}, matchtag=1)
    a.sent.clear()
    b.sent.clear()
    h.router.from_upstream(Message.event("sdexec.proc.started", {"pid": 3}, sequence=5))
    assert [(m.topic, m.sequence) for m in a.sent] == [("sdexec.proc.started", 5)]
    assert b.sent == []


def test_last_unsubscribe_unsubscribes_upstream(h: Harness) -> None:
    a = h.child()
    h.request(a, "event.subscribe", {"topic": "t"}, matchtag=1)
    h.request(a, "event.unsubscribe", {"topic": "t"}, matchtag=2)
    assert h.up.rpcs[-1] == ("event.unsubscribe", {"topic": "t"})


def test_service_requests_from_upstream_go_to_the_owning_child(h: Harness) -> None:
    owner, other = h.child(), h.child()
    h.request(owner, "service.add", {"service": "svc"}, matchtag=1)
    owner.sent.clear()
    req = Message.request("svc.ping", {}, matchtag=8)
    req.push_route("server-side-id")
    h.router.from_upstream(req)
    assert [m.topic for m in owner.sent] == ["svc.ping"]
    assert other.sent == []


def test_child_service_response_goes_upstream_unchanged(h: Harness) -> None:
    owner = h.child()
    h.request(owner, "service.add", {"service": "svc"}, matchtag=1)
    req = Message.request("svc.ping", {}, matchtag=8)
    req.push_route("server-side-id")
    h.up.sent.clear()
    h.router.received(owner, req.response({"pong": 1}))
    (sent,) = h.up.sent
    assert sent.type == MsgType.RESPONSE and sent.routes == ["server-side-id"]


def test_service_add_refused_upstream_is_refused_to_the_child(h: Harness) -> None:
    h.up.fail["service.add"] = errno.EEXIST
    c = h.child()
    h.request(c, "service.add", {"service": "sdexec"}, matchtag=1)
    assert [m.errnum for m in c.sent] == [errno.EEXIST]
    assert h.router.services == {}


def test_child_services_are_removed_upstream_when_it_leaves(h: Harness) -> None:
    c = h.child()
    h.request(c, "service.add", {"service": "svc"}, matchtag=1)
    h.router.closed(c)
    h.run()
    assert h.up.rpcs[-1] == ("service.remove", {"service": "svc"})
    assert h.router.services == {}


def test_renew_replays_subscriptions_and_services(h: Harness) -> None:
    c = h.child()
    h.request(c, "event.subscribe", {"topic": "t."}, matchtag=1)
    h.request(c, "service.add", {"service": "svc"}, matchtag=2)
    h.router.lost()
    fresh = FakeUpstream()
    asyncio.run(h.router.renew(fresh))  # type: ignore[arg-type]
    assert fresh.rpcs == [
        ("event.subscribe", {"topic": "t."}),
        ("service.add", {"service": "svc"}),
    ]
    assert h.router.upstream is fresh


def test_requests_while_reconnecting_are_held_and_sent_in_order_once_back() -> None:
    async def scenario() -> tuple[list[Message], list[Message], list[Message]]:
        router = ProxyRouter(lambda work: None, uid=UID, hold=60)
        router.upstream = FakeUpstream()  # type: ignore[assignment]
        a, b = Child(router), Child(router)
        for c in (a, b):
            assert router.accept(c) == 0
        router.lost()
        router.received(a, Message.request("sdexec.list", {}, matchtag=1))
        router.received(b, Message.request("attr.get", {"name": "size"}, matchtag=2))
        router.received(a, Message.request("sdexec.kill", {}, flags=MsgFlag.NORESPONSE))
        answered_while_down = a.sent + b.sent
        fresh = FakeUpstream()
        await router.renew(fresh)  # type: ignore[arg-type]
        return answered_while_down, fresh.sent, a.sent + b.sent

    while_down, sent, answered = asyncio.run(scenario())
    assert while_down == [] and answered == []
    assert [(m.topic, m.matchtag) for m in sent] == [
        ("sdexec.list", 1), ("attr.get", 2), ("sdexec.kill", 0)
    ]  # fmt: skip


def test_a_child_that_leaves_takes_its_held_requests_with_it() -> None:
    async def scenario() -> list[Message]:
        router = ProxyRouter(lambda work: None, uid=UID, hold=60)
        a, b = Child(router), Child(router)
        for c in (a, b):
            assert router.accept(c) == 0
        router.received(a, Message.request("sdexec.list", {}, matchtag=1))
        router.received(b, Message.request("sdexec.list", {}, matchtag=2))
        router.closed(a)
        fresh = FakeUpstream()
        await router.renew(fresh)  # type: ignore[arg-type]
        return fresh.sent

    assert [m.matchtag for m in asyncio.run(scenario())] == [2]


class CountingChild(Child):
    def __init__(self, router: ProxyRouter, count: int) -> None:
        super().__init__(router)
        self.count = count
        self.enough = asyncio.Event()

    def send(self, msg: Message) -> None:
        super().send(msg)
        if len(self.sent) >= self.count:
            self.enough.set()


def test_past_hold_max_a_request_fails_at_once_and_past_hold_seconds_the_held_ones() -> None:
    async def scenario() -> tuple[list[tuple[int, int]], list[tuple[int, int, str]]]:
        router = ProxyRouter(lambda work: None, uid=UID, hold=0.05, hold_max=2)
        c = CountingChild(router, 3)
        assert router.accept(c) == 0
        for tag in (1, 2, 3):
            router.received(c, Message.request("sdexec.list", {}, matchtag=tag))
        at_once = [(m.matchtag, m.errnum) for m in c.sent]
        await c.enough.wait()
        return at_once, [(m.matchtag, m.errnum, m.error_text() or "") for m in c.sent[1:]]

    at_once, expired = asyncio.run(scenario())
    assert at_once == [(3, errno.ECONNRESET)]
    text = "connection to server lost, and not back within 0.05s"
    assert expired == [(1, errno.ECONNRESET, text), (2, errno.ECONNRESET, text)]


def test_service_add_while_reconnecting_waits_for_the_connection() -> None:
    async def scenario() -> tuple[list[Message], list[Message], list[tuple[str, Any]]]:
        work: list[Awaitable[None]] = []
        router = ProxyRouter(work.append, uid=UID, hold=60)
        c = Child(router)
        assert router.accept(c) == 0
        router.received(c, Message.request("service.add", {"service": "svc"}, matchtag=5))
        adding = asyncio.ensure_future(work.pop())
        await asyncio.sleep(0.01)
        before = list(c.sent)
        fresh = FakeUpstream()
        await router.renew(fresh)  # type: ignore[arg-type]
        await adding
        return before, c.sent, fresh.rpcs

    before, after, rpcs = asyncio.run(scenario())
    assert before == []
    assert [(m.matchtag, m.errnum) for m in after] == [(5, 0)]
    assert rpcs == [("service.add", {"service": "svc"})]
