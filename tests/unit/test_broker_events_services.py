"""The router's events and client-registered services, with in-memory connections."""

from __future__ import annotations

import errno

import pytest

from sdexec.broker.builtins import Builtins
from sdexec.broker.router import Router
from sdexec.proto.message import Message, MsgFlag, MsgType
from sdexec.transport.unix import Connection

OWNER = 1000


class Peer(Connection):
    """An accepted connection whose sent messages are kept in a list."""

    def __init__(self, router: Router, uid: int = OWNER) -> None:
        super().__init__(router)
        self.uid = uid
        self.sent: list[Message] = []
        assert router.accept(self) == 0
        self.accepted = True

    def send(self, msg: Message) -> None:
        self.sent.append(msg)

    def take(self) -> list[Message]:
        out, self.sent = self.sent, []
        return out


@pytest.fixture
def router() -> Router:
    r = Router(owner_uid=OWNER, allow_guests=True)
    Builtins(r, rank=0, size=1, owner=OWNER)
    r.register("sdexec.list", lambda req: req.respond({"procs": []}))
    return r


def request(
    router: Router,
    peer: Peer,
    topic: str,
    payload: object = None,
    tag: int = 1,
    flags: int = 0,
    routes: list[str] | None = None,
) -> Message | None:
    """Send a request from ``peer``; its one response, if it came at once."""
    msg = Message.request(topic, payload, matchtag=tag, flags=flags)
    if routes is not None:
        msg.routes = list(routes)
    router.received(peer, msg)
    answers = [m for m in peer.take() if m.type == MsgType.RESPONSE and m.matchtag == tag]
    return answers[-1] if answers else None


def ok(router: Router, peer: Peer, topic: str, payload: object = None) -> None:
    response = request(router, peer, topic, payload, tag=999)
    assert response is not None and response.errnum == 0, response


# --- events ----------------------------------------------------------------------------


def test_subscriber_receives_events_whose_topic_starts_with_its_prefix(router: Router) -> None:
    peer = Peer(router)
    ok(router, peer, "event.subscribe", {"topic": "sdexec.proc."})
    router.publish("sdexec.proc.started", {"pid": 1})
    router.publish("other.thing", {})
    events = peer.take()
    assert [e.topic for e in events] == ["sdexec.proc.started"]
    assert events[0].type == MsgType.EVENT
    assert events[0].json() == {"pid": 1}


def test_events_carry_increasing_sequence_numbers(router: Router) -> None:
    peer = Peer(router)
    ok(router, peer, "event.subscribe", {"topic": ""})
    for _ in range(3):
        router.publish("t", None)
    seqs = [e.sequence for e in peer.take()]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3 and seqs[0] >= 1


def test_sequence_counts_events_nobody_received(router: Router) -> None:
    first = router.publish("unheard", None)
    peer = Peer(router)
    ok(router, peer, "event.subscribe", {"topic": "heard"})
    router.publish("heard", None)
    assert peer.take()[0].sequence == first + 1


def test_events_are_stamped_with_the_owner(router: Router) -> None:
    peer = Peer(router)
    ok(router, peer, "event.subscribe", {"topic": "t"})
    router.publish("t", None)
    assert peer.take()[0].userid == OWNER


def test_unsubscribed_prefix_gets_no_more_events(router: Router) -> None:
    peer = Peer(router)
    ok(router, peer, "event.subscribe", {"topic": "t"})
    ok(router, peer, "event.unsubscribe", {"topic": "t"})
    router.publish("t", None)
    assert peer.take() == []


def test_prefix_subscribed_twice_needs_two_unsubscribes(router: Router) -> None:
    peer = Peer(router)
    ok(router, peer, "event.subscribe", {"topic": "t"})
    ok(router, peer, "event.subscribe", {"topic": "t"})
    ok(router, peer, "event.unsubscribe", {"topic": "t"})
    router.publish("t", None)
    assert len(peer.take()) == 1


def test_unsubscribe_without_subscription_is_enoent(router: Router) -> None:
    response = request(router, Peer(router), "event.unsubscribe", {"topic": "t"})
    assert response is not None and response.errnum == errno.ENOENT


def test_subscribe_without_topic_is_eproto(router: Router) -> None:
    response = request(router, Peer(router), "event.subscribe", {})
    assert response is not None and response.errnum == errno.EPROTO


def test_subscriptions_vanish_with_the_connection(router: Router) -> None:
    peer = Peer(router)
    ok(router, peer, "event.subscribe", {"topic": "t"})
    router.closed(peer)
    assert peer.id not in router.events.subscriptions


def test_owner_publishes_with_event_pub(router: Router) -> None:
    listener, publisher = Peer(router), Peer(router)
    ok(router, listener, "event.subscribe", {"topic": "user."})
    response = request(router, publisher, "event.pub", {"topic": "user.x", "payload": {"a": 1}})
    assert response is not None and response.json()["seq"] >= 1
    assert [(e.topic, e.json()) for e in listener.take()] == [("user.x", {"a": 1})]


def test_guest_may_not_publish(router: Router) -> None:
    response = request(router, Peer(router, uid=4242), "event.pub", {"topic": "x"})
    assert response is not None and response.errnum == errno.EPERM


# --- services ----------------------------------------------------------------------------


def test_request_goes_to_the_provider_with_the_requester_route_pushed(router: Router) -> None:
    provider, client = Peer(router), Peer(router)
    ok(router, provider, "service.add", {"service": "svc"})
    assert request(router, client, "svc.ping", {"n": 1}, tag=7, routes=["child"]) is None
    (forwarded,) = provider.take()
    assert forwarded.topic == "svc.ping"
    assert forwarded.routes == [client.id, "child"]
    assert forwarded.matchtag == 7


def test_forwarded_request_carries_the_requesters_credentials(router: Router) -> None:
    provider, guest = Peer(router), Peer(router, uid=4242)
    ok(router, provider, "service.add", {"service": "svc"})
    request(router, guest, "svc.ping", {})
    assert provider.take()[0].userid == 4242


def test_providers_response_returns_to_the_requester_with_its_routes(router: Router) -> None:
    provider, client = Peer(router), Peer(router)
    ok(router, provider, "service.add", {"service": "svc"})
    request(router, client, "svc.ping", {}, tag=7, routes=["child"])
    (forwarded,) = provider.take()
    router.received(provider, forwarded.response({"pong": True}))
    (response,) = client.take()
    assert response.json() == {"pong": True}
    assert response.routes == ["child"]
    assert response.matchtag == 7


def test_streaming_responses_flow_until_the_final_one(router: Router) -> None:
    provider, client = Peer(router), Peer(router)
    ok(router, provider, "service.add", {"service": "svc"})
    request(router, client, "svc.watch", {}, tag=3, flags=MsgFlag.STREAMING)
    (fwd,) = provider.take()
    router.received(provider, fwd.response({"n": 1}))
    router.received(provider, fwd.response({"n": 2}))
    router.received(provider, fwd.response(errnum=errno.ENODATA))
    router.received(provider, fwd.response({"n": 3}))  # after the end: dropped
    assert [m.errnum for m in client.take()] == [0, 0, errno.ENODATA]


def test_response_that_matches_no_forwarded_request_is_dropped(router: Router) -> None:
    provider, victim = Peer(router), Peer(router)
    ok(router, provider, "service.add", {"service": "svc"})
    forged = Message.request("sdexec.exec", {}, matchtag=1).response({"type": "finished"})
    forged.routes = [victim.id]
    router.received(provider, forged)
    assert victim.take() == []


def test_adding_a_registered_name_is_eexist(router: Router) -> None:
    ok(router, Peer(router), "service.add", {"service": "svc"})
    response = request(router, Peer(router), "service.add", {"service": "svc"})
    assert response is not None and response.errnum == errno.EEXIST


@pytest.mark.parametrize("name", ["sdexec", "attr", "event", "service", "state-machine"])
def test_adding_a_builtin_name_is_eexist(router: Router, name: str) -> None:
    response = request(router, Peer(router), "service.add", {"service": name})
    assert response is not None and response.errnum == errno.EEXIST


@pytest.mark.parametrize("name", ["", "a.b", "has space", "x" * 200, 7])
def test_adding_an_invalid_name_is_einval(router: Router, name: object) -> None:
    response = request(router, Peer(router), "service.add", {"service": name})
    assert response is not None and response.errnum == errno.EINVAL


def test_guest_may_not_register_a_service(router: Router) -> None:
    response = request(router, Peer(router, uid=4242), "service.add", {"service": "svc"})
    assert response is not None and response.errnum == errno.EPERM


def test_removing_a_service_of_another_client_is_enoent(router: Router) -> None:
    ok(router, Peer(router), "service.add", {"service": "svc"})
    response = request(router, Peer(router), "service.remove", {"service": "svc"})
    assert response is not None and response.errnum == errno.ENOENT


def test_removed_service_is_enosys(router: Router) -> None:
    provider = Peer(router)
    ok(router, provider, "service.add", {"service": "svc"})
    ok(router, provider, "service.remove", {"service": "svc"})
    response = request(router, Peer(router), "svc.ping", {})
    assert response is not None and response.errnum == errno.ENOSYS


def test_services_vanish_when_their_provider_disconnects(router: Router) -> None:
    provider = Peer(router)
    ok(router, provider, "service.add", {"service": "svc"})
    router.closed(provider)
    response = request(router, Peer(router), "svc.ping", {})
    assert response is not None and response.errnum == errno.ENOSYS


def test_requests_owed_by_a_departed_provider_fail_with_enosys(router: Router) -> None:
    provider, client = Peer(router), Peer(router)
    ok(router, provider, "service.add", {"service": "svc"})
    request(router, client, "svc.ping", {}, tag=5)
    router.closed(provider)
    (response,) = client.take()
    assert (response.matchtag, response.errnum) == (5, errno.ENOSYS)


def test_requester_disconnect_tells_the_provider(router: Router) -> None:
    provider, client = Peer(router), Peer(router)
    ok(router, provider, "service.add", {"service": "svc"})
    request(router, client, "svc.ping", {})
    provider.take()
    router.closed(client)
    (notice,) = provider.take()
    assert notice.topic == "svc.disconnect"
    assert notice.flags & MsgFlag.NORESPONSE
    assert notice.routes == [client.id]


def test_name_can_be_registered_again_after_its_provider_left(router: Router) -> None:
    first = Peer(router)
    ok(router, first, "service.add", {"service": "svc"})
    router.closed(first)
    ok(router, Peer(router), "service.add", {"service": "svc"})


def test_service_registration_is_logged(router: Router) -> None:
    import structlog

    with structlog.testing.capture_logs() as logs:
        ok(router, Peer(router), "service.add", {"service": "svc"})
    added = [e for e in logs if e["event"] == "service added"]
    assert [(e["service"], e["uid"]) for e in added] == [("svc", OWNER)]


def test_a_guest_gets_only_the_events_published_for_it(router: Router) -> None:
    owner, guest, other = Peer(router), Peer(router, OWNER + 1), Peer(router, OWNER + 2)
    for p in (owner, guest, other):
        request(router, p, "event.subscribe", {"topic": ""})
    router.publish("sdexec.proc.started", {"label": "g"}, uid=OWNER + 1)
    router.publish("sdexec.proc.started", {"label": "o"}, uid=OWNER)
    router.publish("custom", {})  # no uid: the owner's only

    def topics(p: Peer) -> list[str]:
        return [f"{m.topic}:{(m.json() or {}).get('label')}" for m in p.take()
                if m.type == MsgType.EVENT]  # fmt: skip

    assert topics(owner) == ["sdexec.proc.started:g", "sdexec.proc.started:o", "custom:None"]
    assert topics(guest) == ["sdexec.proc.started:g"]
    assert topics(other) == []
