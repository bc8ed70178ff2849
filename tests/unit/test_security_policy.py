"""Admission, guest confinement, the gate's handling of writes and audit, back-pressure."""

from __future__ import annotations

import asyncio
import collections
import errno
import json
import os
from typing import Any

import pytest
from structlog.testing import capture_logs

from sdexec.base.errors import SdexecError
from sdexec.broker.request import Request
from sdexec.broker.router import Router
from sdexec.cli.signing import Signer
from sdexec.proto import jsonio, rfc42
from sdexec.proto.framing import FrameDecoder, encode_frame
from sdexec.proto.message import ROLE_OWNER, ROLE_USER, Message, MsgFlag, MsgType
from sdexec.security import guest, sign
from sdexec.security.gate import Gate
from sdexec.security.policy import Admission, SecurityConfig, owner_reserve
from sdexec.transport.unix import Connection

UID = os.getuid()
GUEST = UID + 1000


def admission(**kw: Any) -> Admission:
    return Admission(SecurityConfig(server_uid=UID, owner=UID, **kw))


# --- admission -----------------------------------------------------------------------------


def test_server_uid_is_admitted() -> None:
    assert admission().admit("a", UID) == (0, "")


def test_guest_is_refused_with_eperm_by_default() -> None:
    assert admission().admit("a", GUEST)[0] == errno.EPERM


def test_guest_is_admitted_when_guests_are_allowed() -> None:
    assert admission(allow_guests=True).admit("a", GUEST)[0] == 0


def test_owner_other_than_the_server_is_admitted() -> None:
    adm = Admission(SecurityConfig(server_uid=UID, owner=GUEST))
    assert adm.admit("a", GUEST)[0] == 0


def test_a_guest_over_the_per_uid_limit_gets_eagain() -> None:
    adm = admission(allow_guests=True, max_connections_per_uid=2)
    assert [adm.admit(c, GUEST)[0] for c in "abc"] == [0, 0, errno.EAGAIN]


def test_the_owner_is_not_held_to_the_per_uid_limit() -> None:
    adm = admission(max_connections_per_uid=2)
    assert [adm.admit(str(i), UID)[0] for i in range(200)] == [0] * 200


def test_per_uid_limit_leaves_room_for_other_uids() -> None:
    adm = admission(allow_guests=True, max_connections_per_uid=1)
    adm.admit("a", GUEST)
    assert adm.admit("b", GUEST + 1)[0] == 0
    assert adm.admit("c", UID)[0] == 0


def test_guests_together_leave_the_owners_reserve() -> None:
    adm = admission(allow_guests=True, max_connections=128, max_connections_per_uid=128)
    room = 128 - owner_reserve(128)
    got = [adm.admit(f"g{g}-{i}", GUEST + g)[0] for g in range(4) for i in range(128)]
    assert got.count(0) == room
    assert {e for e in got if e} == {errno.EAGAIN}
    assert [adm.admit(f"o{i}", UID)[0] for i in range(128 - room)] == [0] * (128 - room)


def test_a_full_table_closes_the_idle_connection_for_the_owner() -> None:
    adm = admission(max_connections=2)
    adm.admit("a", UID)
    adm.admit("b", UID)
    closed: list[str] = []

    def evict() -> str:
        closed.append("a")
        return "a"

    assert adm.admit("c", UID, evict=evict) == (0, "")
    assert closed == ["a"] and set(adm.uid_of) == {"b", "c"}


def test_a_full_table_with_nothing_idle_is_eagain() -> None:
    adm = admission(max_connections=1)
    adm.admit("a", UID)
    errnum, reason = adm.admit("b", UID, evict=lambda: None)
    assert errnum == errno.EAGAIN and "no idle connection" in reason


def test_a_full_table_closes_nothing_for_a_guest() -> None:
    adm = admission(allow_guests=True, max_connections=20)
    for i in range(20):
        adm.admit(str(i), UID)
    assert adm.admit("g", GUEST, evict=lambda: pytest.fail("evicted for a guest"))[0] == (
        errno.EAGAIN
    )


def test_a_closed_connection_frees_its_slot() -> None:
    adm = admission(allow_guests=True, max_connections_per_uid=1)
    adm.admit("a", GUEST)
    adm.release("a")
    assert adm.admit("b", GUEST)[0] == 0
    assert adm.guests == 1


# --- guests ---------------------------------------------------------------------------------


class _Conn:
    gid = 4321


class _Req:
    def __init__(self, userid: int, rolemask: int) -> None:
        self.userid = userid
        self.rolemask = rolemask
        self.conn = _Conn()


def exec_request(opts: dict[str, str] | None = None, local_flags: int = 0) -> rfc42.ExecRequest:
    cmd = {"cmdline": ["true"], "env": {}, "opts": opts or {}, "channels": []}
    return rfc42.parse_exec({"cmd": cmd, "flags": 0, "local_flags": local_flags})


def guest_props(req: _Req, er: rfc42.ExecRequest) -> list[Any]:
    return guest.exec_properties(req, er)  # type: ignore[arg-type]


def test_trusted_exec_gets_no_extra_properties() -> None:
    assert guest_props(_Req(UID, ROLE_OWNER), exec_request()) == []


def test_guest_exec_runs_as_the_guest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guest, "can_switch_user", lambda: True)
    props = guest_props(_Req(GUEST, ROLE_USER), exec_request({"SDEXEC_PROP_MemoryMax": "1G"}))
    assert [(n, v.value) for n, v in props] == [("User", str(GUEST)), ("Group", "4321")]


@pytest.mark.parametrize(
    "opt", ["SDEXEC_PROP_User", "SDEXEC_PROP_Slice", "SDEXEC_PROP_StandardOutput", "SDEXEC_NAME"]
)
def test_guest_may_not_set_privileged_options(opt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guest, "can_switch_user", lambda: True)
    with pytest.raises(SdexecError) as info:
        guest_props(_Req(GUEST, ROLE_USER), exec_request({opt: "x"}))
    assert info.value.errno == errno.EPERM


def test_guest_may_not_use_stdio_fallthrough(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guest, "can_switch_user", lambda: True)
    with pytest.raises(SdexecError) as info:
        guest_props(_Req(GUEST, ROLE_USER), exec_request(local_flags=1))
    assert info.value.errno == errno.EPERM


def test_server_that_cannot_switch_users_refuses_guest_exec(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(guest, "can_switch_user", lambda: False)
    with pytest.raises(SdexecError) as info:
        guest_props(_Req(GUEST, ROLE_USER), exec_request())
    assert info.value.errno == errno.EPERM


def test_guest_sees_only_its_own_processes() -> None:
    req = _Req(GUEST, ROLE_USER)
    assert (guest.visible(req, GUEST), guest.visible(req, UID)) == (True, False)  # type: ignore[arg-type]


# --- the client's signer ------------------------------------------------------------------


def test_signer_sends_only_the_signature_for_rfc42_requests() -> None:
    payload = Signer("none", None)("sdexec.write", {"matchtag": 1, "io": {"stream": "stdin"}})
    assert list(payload or {}) == ["signature"]
    signed = json.loads(sign.unwrap(payload["signature"]).payload)  # type: ignore[index]
    assert signed == {"matchtag": 1, "io": {"stream": "stdin"}, "topic": "sdexec.write"}


def test_signer_leaves_other_topics_alone() -> None:
    assert Signer("none", None)("attr.get", {"name": "x"}) == {"name": "x"}


# --- the gate on a fake transport -----------------------------------------------------------


class FakeTransport:
    def __init__(self) -> None:
        self.out = bytearray()
        self.reading = True
        self.aborted = False
        self.size = 0

    def write(self, data: bytes) -> None:
        self.out += data

    def is_closing(self) -> bool:
        return self.aborted

    def get_write_buffer_size(self) -> int:
        return self.size

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def abort(self) -> None:
        self.aborted = True

    close = abort


def stack(owner: int = GUEST) -> tuple[Router, Connection, FakeTransport, list[Request]]:
    config = SecurityConfig(server_uid=UID, owner=owner)
    router = Router(owner_uid=owner, server_uid=UID)
    Gate(router, config).install()
    seen: list[Request] = []
    router.register("sdexec.write", seen.append)
    router.register("sdexec.list", lambda req: req.respond({"procs": []}))
    conn = Connection(router)
    transport = FakeTransport()
    conn.transport = transport  # type: ignore[assignment]
    conn.uid, conn.gid = UID, UID
    assert router.accept(conn) == 0
    conn.accepted = True
    return router, conn, transport, seen


def answers(transport: FakeTransport) -> list[Message]:
    return FrameDecoder().feed(bytes(transport.out))


def test_unsigned_write_is_dropped_silently_when_signatures_are_required() -> None:
    _, conn, transport, seen = stack()
    payload = {"matchtag": 1, "io": {"stream": "stdin", "rank": "0", "data": "x"}}
    conn.data_received(encode_frame(Message.request("sdexec.write", payload, matchtag=5)))
    assert (seen, answers(transport)) == ([], [])


def test_badly_signed_write_is_dropped_silently() -> None:
    _, conn, transport, seen = stack()
    bad = sign.wrap(b'{"topic":"sdexec.list"}')
    msg = Message.request("sdexec.write", {"signature": bad}, flags=MsgFlag.NORESPONSE)
    conn.data_received(encode_frame(msg))
    assert (seen, answers(transport)) == ([], [])


def test_signed_write_reaches_the_handler_with_the_signed_payload() -> None:
    _, conn, _, seen = stack()
    body = {"matchtag": 1, "io": {"stream": "stdin", "rank": "0", "data": "x"}}
    payload = sign.signed_request("sdexec.write", body)
    conn.data_received(encode_frame(Message.request("sdexec.write", payload)))
    assert [r.payload() for r in seen] == [{**body, "topic": "sdexec.write"}]
    assert seen[0].signer == UID


def test_plain_write_is_not_parsed_as_json_by_the_gate() -> None:
    _, conn, _, seen = stack(owner=UID)  # signatures not required
    payload = jsonio.write_payload(1, "stdin", "0", b"line\n", False)
    conn.data_received(encode_frame(Message.request("sdexec.write", payload)))
    assert [r.fast_write() for r in seen] == [(1, "stdin", b"line\n", False)]
    assert seen[0].msg._json is None  # stdin's hot path: no json.loads


@pytest.mark.parametrize("owner", [UID, GUEST])
def test_signature_behind_a_bare_quote_is_still_checked(owner: int) -> None:
    _, conn, transport, seen = stack(owner=owner)
    bad = sign.wrap(b'{"topic":"sdexec.list"}')
    payload = (
        b'{"matchtag":1,"io":{"stream":"stdin","rank":"0","data":"x"},"signature":"'
        + bad.encode()
        + b'","z":{"a":"b"}}\0'
    )
    conn.data_received(encode_frame(Message.request("sdexec.write", payload)))
    assert (seen, answers(transport)) == ([], [])


def test_refusal_is_logged_with_uid_topic_and_reason() -> None:
    _, conn, transport, _ = stack()
    with capture_logs() as logs:
        conn.data_received(encode_frame(Message.request("sdexec.list", {}, matchtag=1)))
    (resp,) = answers(transport)
    assert resp.errnum == errno.EPERM
    (event,) = [e for e in logs if e["event"] == "request refused"]
    assert (event["uid"], event["topic"], event["reason"]) == (
        UID,
        "sdexec.list",
        "this server requires signed requests",
    )


# --- back-pressure -----------------------------------------------------------------------------


def test_full_output_buffer_stops_reading_and_dispatching() -> None:
    _, conn, transport, _ = stack(owner=UID)
    conn.pause_writing()
    conn.data_received(encode_frame(Message.request("sdexec.list", {}, matchtag=1)))
    assert (transport.reading, answers(transport)) == (False, [])


def test_drained_output_buffer_resumes_and_answers_what_was_held() -> None:
    _, conn, transport, _ = stack(owner=UID)
    conn.pause_writing()
    conn.data_received(encode_frame(Message.request("sdexec.list", {}, matchtag=1)) * 3)
    conn.resume_writing()
    assert transport.reading
    assert [m.matchtag for m in answers(transport)] == [1, 1, 1]


def test_output_buffer_over_the_hard_limit_closes_the_connection() -> None:
    _, conn, transport, _ = stack(owner=UID)
    conn.write_limit = 100
    transport.size = 101
    conn.send(Message(MsgType.RESPONSE, topic="x"))
    assert transport.aborted


def test_gate_holds_reading_while_munge_verification_backs_up() -> None:
    async def run() -> bool:
        async with asyncio.TaskGroup() as tg:
            router, conn, transport, _ = stack(owner=UID)
            router.attach(tg)
            assert router.gate is not None
            gate: Gate = router.gate.__self__  # type: ignore[attr-defined]
            gate.queues[conn.id] = collections.deque()  # as if a munge check were pending
            for i in range(70):
                conn.data_received(encode_frame(Message.request("sdexec.list", {}, matchtag=i + 1)))
            held = not transport.reading
            del gate.queues[conn.id]
            conn.unhold("verify")
            return held

    assert asyncio.run(run())


def test_list_without_a_payload_is_served_when_signatures_are_not_required() -> None:
    _, conn, transport, _ = stack(owner=UID)
    conn.data_received(encode_frame(Message(MsgType.REQUEST, topic="sdexec.list", aux2=1)))
    assert [m.errnum for m in answers(transport)] == [0]


def test_list_without_a_payload_is_eperm_when_signatures_are_required() -> None:
    _, conn, transport, _ = stack()
    conn.data_received(encode_frame(Message(MsgType.REQUEST, topic="sdexec.list", aux2=1)))
    assert [m.errnum for m in answers(transport)] == [errno.EPERM]


# --- serve options ------------------------------------------------------------------------------


def test_owner_defaults_to_the_server_uid() -> None:
    from sdexec.security.setup import resolve_owner

    assert resolve_owner(None, 1234) == 1234


def test_owner_may_be_a_user_name() -> None:
    from sdexec.security.setup import resolve_owner

    assert resolve_owner("root", 1234) == 0


def test_unknown_owner_name_means_the_owner_cannot_be_determined() -> None:
    from sdexec.security.setup import resolve_owner

    assert resolve_owner("no-such-user-sdexec", 1234) is None


def test_unknown_signature_mechanism_is_refused() -> None:
    from sdexec.security.setup import mechanisms

    with pytest.raises(ValueError):
        mechanisms("none,rsa")


def test_munge_signature_without_libmunge_is_eperm(monkeypatch: pytest.MonkeyPatch) -> None:
    from sdexec.security import kv, munge

    monkeypatch.setattr(munge, "available", lambda: False)
    _, conn, transport, _ = stack()
    header = kv.encode([("version", 1), ("mechanism", "munge"), ("userid", UID)])
    fake = sign._b64(header) + ".e30=.MUNGE:AAAA:"
    conn.data_received(
        encode_frame(Message.request("sdexec.list", {"signature": fake}, matchtag=1))
    )
    (resp,) = answers(transport)
    assert resp.errnum == errno.EPERM
    assert "not available" in (resp.error_text() or "")


def test_guest_may_not_use_message_channels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guest, "can_switch_user", lambda: True)
    cmd = {
        "cmdline": ["true"],
        "env": {},
        "opts": {},
        "channels": [],
        "msgchans": [{"name": "BACKDOOR", "uri": "local:///run/sdexec/local"}],
    }
    er = rfc42.parse_exec({"cmd": cmd, "flags": 0})
    with pytest.raises(SdexecError) as info:
        guest_props(_Req(GUEST, ROLE_USER), er)
    assert info.value.errno == errno.EPERM
