"""RFC 3 message model and multipart codec (sdexec.proto.message)."""

from __future__ import annotations

import errno
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sdexec.base.errors import ProtocolError
from sdexec.proto.message import (
    MATCHTAG_NONE,
    NODEID_ANY,
    PROTO_SIZE,
    USERID_UNKNOWN,
    Message,
    MsgFlag,
    MsgType,
    decode_json_payload,
    decode_parts,
    encode_parts,
    encode_payload,
    encode_proto,
)

NON_STRUCTURAL = [
    MsgFlag.NORESPONSE,
    MsgFlag.UPSTREAM,
    MsgFlag.PRIVATE,
    MsgFlag.STREAMING,
    MsgFlag.USER1,
]


def round_trip(msg: Message) -> Message:
    return decode_parts(encode_parts(msg))


def proto(
    mtype: int = 1, flags: int = 0, *, magic: int = 0x8E, version: int = 1, aux: int = 0
) -> bytes:
    return struct.pack(">BBBBIIII", magic, version, mtype, flags, 0, 0, aux, 0)


def protocol_error(parts: list[bytes]) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode_parts(parts)
    assert info.value.errno == errno.EPROTO
    return info.value


# --- round trips -------------------------------------------------------------


@pytest.mark.parametrize("mtype", list(MsgType.ALL))
def test_round_trip_each_message_type(mtype: int) -> None:
    msg = Message(
        mtype,
        topic="svc.method",
        payload=b'{"a":1}\0',
        routes=["r1"],
        userid=1000,
        rolemask=2,
        aux1=7,
        aux2=9,
    )
    assert round_trip(msg) == msg


@pytest.mark.parametrize("flag", NON_STRUCTURAL)
def test_round_trip_each_flag(flag: int) -> None:
    msg = Message(MsgType.REQUEST, topic="t", flags=flag)
    decoded = round_trip(msg)
    assert decoded.flags == flag
    assert decoded == msg


def test_round_trip_all_flags_together() -> None:
    every = 0
    for flag in NON_STRUCTURAL:
        every |= flag
    msg = Message(MsgType.RESPONSE, topic="t", flags=every)
    assert round_trip(msg).flags == every


def test_round_trip_message_with_only_proto() -> None:
    msg = Message(MsgType.EVENT)
    assert encode_parts(msg) == [encode_proto(msg)]
    assert round_trip(msg) == msg


def test_round_trip_control_message_type_and_status() -> None:
    msg = Message(MsgType.CONTROL, aux1=3, aux2=0xDEADBEEF)
    decoded = round_trip(msg)
    assert (decoded.type, decoded.aux1, decoded.aux2) == (MsgType.CONTROL, 3, 0xDEADBEEF)


def test_round_trip_empty_topic_and_empty_payload() -> None:
    msg = Message(MsgType.REQUEST, topic="", payload=b"", routes=[])
    assert round_trip(msg) == msg


def test_round_trip_non_ascii_topic_and_routes() -> None:
    msg = Message(MsgType.REQUEST, topic="sdexec.é", routes=["ü", "日本"])
    assert round_trip(msg) == msg


def test_round_trip_maximum_header_values() -> None:
    top = 0xFFFFFFFF
    msg = Message(MsgType.RESPONSE, topic="t", userid=top, rolemask=top, aux1=top, aux2=top)
    assert round_trip(msg) == msg


# --- PROTO frame and structural flags ----------------------------------------


def test_proto_frame_layout_is_big_endian() -> None:
    msg = Message(
        MsgType.RESPONSE,
        topic="t",
        flags=MsgFlag.STREAMING,
        userid=0x01020304,
        rolemask=0x05060708,
        aux1=0x090A0B0C,
        aux2=0x0D0E0F10,
    )
    assert encode_proto(msg) == bytes(
        [0x8E, 0x01, 0x02, 0x41, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]
    )
    assert len(encode_proto(msg)) == PROTO_SIZE


def test_proto_is_the_last_part() -> None:
    msg = Message(MsgType.REQUEST, topic="t", payload=b"x", routes=["a"])
    parts = encode_parts(msg)
    assert parts == [b"a", b"", b"t", b"x", encode_proto(msg)]


def test_wire_flags_derive_from_fields() -> None:
    assert Message(MsgType.REQUEST).wire_flags == 0
    assert Message(MsgType.REQUEST, topic="t").wire_flags == MsgFlag.TOPIC
    assert Message(MsgType.REQUEST, payload=b"").wire_flags == MsgFlag.PAYLOAD
    assert Message(MsgType.REQUEST, routes=[]).wire_flags == MsgFlag.ROUTE


def test_wire_flags_ignore_structural_bits_in_flags() -> None:
    msg = Message(MsgType.REQUEST, flags=MsgFlag.TOPIC | MsgFlag.PAYLOAD | MsgFlag.ROUTE)
    assert msg.wire_flags == 0
    assert encode_parts(msg) == [encode_proto(msg)]


def test_decoded_flags_exclude_structural_bits() -> None:
    msg = Message(MsgType.REQUEST, topic="t", payload=b"p", routes=[], flags=MsgFlag.STREAMING)
    assert round_trip(msg).flags == MsgFlag.STREAMING


def test_aux_word_views() -> None:
    req = Message(MsgType.REQUEST, aux1=5, aux2=6)
    assert (req.nodeid, req.matchtag, req.errnum) == (5, 6, 0)
    resp = Message(MsgType.RESPONSE, aux1=2, aux2=6)
    assert (resp.errnum, resp.matchtag) == (2, 6)
    assert Message(MsgType.EVENT, aux1=42).sequence == 42


def test_streaming_and_noresponse_views() -> None:
    msg = Message(MsgType.REQUEST, flags=MsgFlag.STREAMING)
    assert msg.streaming
    assert not msg.noresponse
    assert Message(MsgType.REQUEST, flags=MsgFlag.NORESPONSE).noresponse


# --- route stacks ------------------------------------------------------------


def test_no_route_stack_means_no_delimiter() -> None:
    msg = Message(MsgType.EVENT, topic="heartbeat")
    assert b"" not in encode_parts(msg)[:-1]
    assert round_trip(msg).routes is None


def test_empty_route_stack_is_a_lone_delimiter() -> None:
    msg = Message(MsgType.REQUEST, topic="t", routes=[])
    assert encode_parts(msg)[:2] == [b"", b"t"]
    assert round_trip(msg).routes == []


def test_several_routes_keep_wire_order() -> None:
    msg = Message(MsgType.REQUEST, topic="t", routes=["newest", "middle", "origin"])
    assert encode_parts(msg)[:4] == [b"newest", b"middle", b"origin", b""]
    assert round_trip(msg).routes == ["newest", "middle", "origin"]


def test_push_route_puts_most_recent_hop_first() -> None:
    msg = Message.request("t")
    msg.push_route("client")
    msg.push_route("broker")
    assert msg.routes == ["broker", "client"]


def test_pop_route_removes_most_recent_hop() -> None:
    msg = Message(MsgType.RESPONSE, routes=["broker", "client"])
    assert msg.pop_route() == "broker"
    assert msg.pop_route() == "client"
    assert msg.routes == []


def test_pop_route_on_empty_stack_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        Message(MsgType.RESPONSE, routes=[]).pop_route()


def test_pop_route_without_route_stack_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        Message(MsgType.RESPONSE).pop_route()


def test_push_route_enables_a_missing_route_stack() -> None:
    msg = Message(MsgType.EVENT, topic="t")
    msg.push_route("hop")
    assert msg.routes == ["hop"]
    assert msg.wire_flags & MsgFlag.ROUTE


def test_sender_is_the_route_nearest_the_delimiter() -> None:
    msg = Message.request("t")
    msg.push_route("origin")
    msg.push_route("relay")
    assert msg.sender == "origin"


def test_sender_is_none_without_routes() -> None:
    assert Message(MsgType.REQUEST, routes=[]).sender is None
    assert Message(MsgType.REQUEST).sender is None


def test_empty_route_identity_is_refused() -> None:
    msg = Message(MsgType.REQUEST, topic="t", routes=[""])
    with pytest.raises(ProtocolError):
        encode_parts(msg)
    with pytest.raises(ProtocolError):
        Message(MsgType.REQUEST, topic="t").push_route("")


# --- payloads ----------------------------------------------------------------


def test_encode_payload_json_is_compact_and_nul_terminated() -> None:
    assert encode_payload({"a": [1, 2], "b": "é"}) == '{"a":[1,2],"b":"é"}\0'.encode()


def test_encode_payload_bytes_pass_through() -> None:
    assert encode_payload(b"raw") == b"raw"
    assert encode_payload(bytearray(b"raw")) == b"raw"


def test_encode_payload_none_is_no_payload() -> None:
    assert encode_payload(None) is None


def test_payload_with_trailing_nul_round_trips_byte_exact() -> None:
    msg = Message(MsgType.REQUEST, topic="t", payload=b'{"x":1}\0')
    decoded = round_trip(msg)
    assert decoded.payload == b'{"x":1}\0'
    assert decoded.json() == {"x": 1}


def test_payload_without_trailing_nul_is_accepted() -> None:
    msg = round_trip(Message(MsgType.REQUEST, topic="t", payload=b'{"x":1}'))
    assert msg.payload == b'{"x":1}'
    assert msg.json() == {"x": 1}


def test_json_of_missing_payload_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        Message(MsgType.REQUEST, topic="t").json()


@pytest.mark.parametrize("payload", [b"not json\0", b"[1,2]\0", b'"s"\0', b"\xff\xfe\0", b"{}\0\0"])
def test_json_of_invalid_or_non_object_payload_is_a_protocol_error(payload: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_json_payload(payload)
    assert info.value.errno == errno.EPROTO


# --- constructors ------------------------------------------------------------


def test_request_constructor() -> None:
    msg = Message.request("sdexec.exec", {"cmd": {}}, matchtag=3)
    assert msg.type == MsgType.REQUEST
    assert msg.topic == "sdexec.exec"
    assert msg.payload == b'{"cmd":{}}\0'
    assert msg.matchtag == 3
    assert msg.nodeid == NODEID_ANY
    assert msg.routes == []
    assert msg.userid == USERID_UNKNOWN


def test_request_constructor_defaults_to_no_matchtag() -> None:
    assert Message.request("t").matchtag == MATCHTAG_NONE


def test_event_constructor() -> None:
    msg = Message.event("sdexec.state", {"s": 1}, sequence=12)
    assert (msg.type, msg.topic, msg.sequence, msg.routes) == (
        MsgType.EVENT,
        "sdexec.state",
        12,
        None,
    )
    assert msg.json() == {"s": 1}


# --- responses ---------------------------------------------------------------


def streaming_request() -> Message:
    msg = Message.request("sdexec.exec", {}, matchtag=77, flags=MsgFlag.STREAMING)
    msg.push_route("client-uuid")
    return msg


def test_response_copies_topic_matchtag_and_routes() -> None:
    resp = streaming_request().response({"pid": 1})
    assert resp.type == MsgType.RESPONSE
    assert resp.topic == "sdexec.exec"
    assert resp.matchtag == 77
    assert resp.routes == ["client-uuid"]
    assert resp.json() == {"pid": 1}
    assert resp.errnum == 0


def test_response_copies_streaming_flag() -> None:
    assert streaming_request().response({}).streaming


def test_response_does_not_copy_other_flags() -> None:
    req = Message.request("t", flags=MsgFlag.NORESPONSE | MsgFlag.USER1)
    assert req.response({}).flags == 0


def test_response_to_non_streaming_request_is_not_streaming() -> None:
    assert not Message.request("t").response({}).streaming


def test_response_routes_are_a_copy() -> None:
    req = streaming_request()
    resp = req.response({})
    assert resp.routes is not req.routes
    resp.pop_route()
    assert req.routes == ["client-uuid"]


def test_response_without_route_stack_has_none() -> None:
    req = Message(MsgType.REQUEST, topic="t")
    assert req.response({}).routes is None


def test_error_response_carries_nul_terminated_text() -> None:
    resp = streaming_request().response(errnum=errno.ENOENT, text="no such file")
    assert resp.errnum == errno.ENOENT
    assert resp.payload == b"no such file\0"
    assert resp.error_text() == "no such file"


def test_error_response_without_text_has_no_payload() -> None:
    resp = streaming_request().response(errnum=errno.ENODATA)
    assert resp.payload is None
    assert resp.error_text() is None
    assert resp.wire_flags & MsgFlag.PAYLOAD == 0


def test_error_response_ignores_the_json_payload() -> None:
    resp = Message.request("t").response({"x": 1}, errnum=errno.EPERM, text="denied")
    assert resp.payload == b"denied\0"


def test_error_response_round_trips_with_errnum() -> None:
    resp = round_trip(streaming_request().response(errnum=errno.EPROTO, text="bad"))
    assert (resp.errnum, resp.error_text(), resp.matchtag) == (errno.EPROTO, "bad", 77)


def test_error_text_accepts_text_without_nul() -> None:
    assert Message(MsgType.RESPONSE, payload=b"oops", aux1=1).error_text() == "oops"


# --- decode errors -----------------------------------------------------------


def test_decode_no_parts() -> None:
    protocol_error([])


@pytest.mark.parametrize("size", [0, 19, 21, 40])
def test_decode_proto_of_wrong_size(size: int) -> None:
    protocol_error([b"\x8e\x01\x01\x00" + bytes(size - 4) if size >= 4 else bytes(size)])


def test_decode_bad_magic() -> None:
    protocol_error([proto(magic=0x8F)])


@pytest.mark.parametrize("version", [0, 2, 255])
def test_decode_bad_version(version: int) -> None:
    protocol_error([proto(version=version)])


@pytest.mark.parametrize("mtype", [0, 3, 5, 0x10, 0xFF])
def test_decode_unknown_type(mtype: int) -> None:
    protocol_error([proto(mtype)])


def test_decode_topic_flag_without_topic_part() -> None:
    protocol_error([proto(flags=MsgFlag.TOPIC)])


def test_decode_payload_flag_without_payload_part() -> None:
    protocol_error([b"topic", proto(flags=MsgFlag.TOPIC | MsgFlag.PAYLOAD)])


def test_decode_route_flag_without_delimiter() -> None:
    protocol_error([b"r1", b"r2", proto(flags=MsgFlag.ROUTE)])


def test_decode_extra_part_without_flags() -> None:
    protocol_error([b"stray", proto()])


def test_decode_extra_part_after_payload() -> None:
    protocol_error([b"t", b"p", b"extra", proto(flags=MsgFlag.TOPIC | MsgFlag.PAYLOAD)])


def test_decode_non_utf8_topic() -> None:
    protocol_error([b"\xff", proto(flags=MsgFlag.TOPIC)])


def test_decode_non_utf8_route() -> None:
    protocol_error([b"\xc3", b"", proto(flags=MsgFlag.ROUTE)])


def test_decode_tolerates_nul_terminated_topic() -> None:
    msg = decode_parts([b"svc.ping\0", proto(flags=MsgFlag.TOPIC)])
    assert msg.topic == "svc.ping"


def test_decode_accepts_payload_only_message() -> None:
    msg = decode_parts([b"data", proto(flags=MsgFlag.PAYLOAD)])
    assert (msg.topic, msg.payload, msg.routes) == (None, b"data", None)


# --- properties --------------------------------------------------------------

u32 = st.integers(min_value=0, max_value=0xFFFFFFFF)
flags = st.sets(st.sampled_from(NON_STRUCTURAL)).map(lambda fs: sum(int(f) for f in fs))
# A topic ending in NUL is deliberately read back without it (see decode_parts).
topics = st.none() | st.text(max_size=30).filter(lambda t: not t.endswith("\0"))
routes = st.none() | st.lists(st.text(min_size=1, max_size=12), max_size=4)
messages = st.builds(
    Message,
    type=st.sampled_from(list(MsgType.ALL)),
    topic=topics,
    payload=st.none() | st.binary(max_size=300),
    flags=flags,
    routes=routes,
    userid=u32,
    rolemask=u32,
    aux1=u32,
    aux2=u32,
)


@settings(max_examples=300)
@given(messages)
def test_any_message_round_trips_through_parts(msg: Message) -> None:
    assert round_trip(msg) == msg


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=24), max_size=6))
def test_decode_of_arbitrary_parts_is_a_message_or_protocol_error(parts: list[bytes]) -> None:
    try:
        decode_parts(parts)
    except ProtocolError as exc:
        assert exc.errno == errno.EPROTO


@settings(max_examples=300)
@given(
    st.lists(st.binary(max_size=8), max_size=5),
    st.sampled_from(list(MsgType.ALL)),
    st.integers(min_value=0, max_value=255),
)
def test_decode_with_valid_proto_and_arbitrary_parts_never_crashes(
    body: list[bytes], mtype: int, wire_flags: int
) -> None:
    try:
        msg = decode_parts([*body, proto(int(mtype), wire_flags)])
    except ProtocolError as exc:
        assert exc.errno == errno.EPROTO
    else:
        assert msg.wire_flags == wire_flags
