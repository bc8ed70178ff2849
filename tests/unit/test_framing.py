"""Flux local:// stream framing (sdexec.proto.framing)."""

from __future__ import annotations

import errno
import itertools
import struct
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sdexec.base.errors import ProtocolError
from sdexec.proto.framing import (
    DEFAULT_MAX_MESSAGE,
    FRAME_MAGIC,
    HANDSHAKE_OK,
    HEADER_SIZE,
    FrameDecoder,
    encode_frame,
    encode_frame_pieces,
    encode_parts_stream,
    split_parts,
)
from sdexec.proto.message import Message, MsgFlag, MsgType, encode_parts

MAGIC_HOST = struct.pack("=I", FRAME_MAGIC)


def frame(body: bytes, *, magic: bytes = MAGIC_HOST, size: int | None = None) -> bytes:
    """A frame header (host-order magic, big-endian size) followed by ``body``."""
    return magic + struct.pack(">I", len(body) if size is None else size) + body


def sample(i: int = 0, payload: bytes | None = None) -> Message:
    msg = Message.request("sdexec.exec", {"i": i}, matchtag=i + 1, flags=MsgFlag.STREAMING)
    if payload is not None:
        msg.payload = payload
    msg.push_route(f"client-{i}")
    return msg


def protocol_error(decoder: FrameDecoder, data: bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decoder.feed(data)
    assert info.value.errno == errno.EPROTO
    return info.value


# --- encoding ----------------------------------------------------------------


def test_handshake_accept_is_one_zero_byte() -> None:
    assert HANDSHAKE_OK == b"\x00"


def test_frame_header_is_host_order_magic_and_big_endian_length() -> None:
    data = encode_frame(sample())
    assert data[:4] == MAGIC_HOST
    assert struct.unpack(">I", data[4:8])[0] == len(data) - HEADER_SIZE


def test_frame_magic_is_in_host_byte_order() -> None:
    expected = FRAME_MAGIC.to_bytes(4, sys.byteorder)
    assert encode_frame(sample())[:4] == expected


def test_short_parts_have_one_byte_sizes() -> None:
    assert encode_parts_stream([b"ab", b""])[HEADER_SIZE:] == b"\x02ab\x00"


def test_part_of_254_bytes_has_a_one_byte_size() -> None:
    body = encode_parts_stream([b"x" * 254])[HEADER_SIZE:]
    assert body[:1] == b"\xfe"
    assert len(body) == 1 + 254


def test_part_of_255_bytes_has_an_escaped_four_byte_size() -> None:
    body = encode_parts_stream([b"x" * 255])[HEADER_SIZE:]
    assert body[:5] == b"\xff\x00\x00\x00\xff"
    assert len(body) == 5 + 255


def test_long_part_size_is_big_endian() -> None:
    body = encode_parts_stream([b"y" * 70000])[HEADER_SIZE:]
    assert body[:5] == b"\xff" + struct.pack(">I", 70000)


def test_split_parts_inverts_part_encoding() -> None:
    parts = [b"", b"a", b"b" * 254, b"c" * 255, b"d" * 1000]
    assert split_parts(encode_parts_stream(parts)[HEADER_SIZE:]) == parts


def test_split_parts_accepts_long_form_for_a_short_part() -> None:
    assert split_parts(b"\xff\x00\x00\x00\x02hi") == [b"hi"]


# --- decoding ----------------------------------------------------------------


def test_one_message_round_trips() -> None:
    msg = sample()
    assert FrameDecoder().feed(encode_frame(msg)) == [msg]


def test_long_parts_round_trip() -> None:
    msg = sample(payload=b"z" * 300)
    msg.topic = "t" * 255
    assert FrameDecoder().feed(encode_frame(msg)) == [msg]


def test_byte_by_byte_feeding_yields_the_message_at_the_last_byte() -> None:
    msg = sample(payload=b"p" * 300)
    data = encode_frame(msg)
    decoder = FrameDecoder()
    for i, byte in enumerate(data[:-1]):
        assert decoder.feed(bytes([byte])) == []
        assert decoder.buffered == i + 1
    assert decoder.feed(data[-1:]) == [msg]
    assert decoder.buffered == 0


def test_many_messages_in_one_feed_keep_their_order() -> None:
    msgs = [sample(i) for i in range(50)]
    assert FrameDecoder().feed(b"".join(encode_frame(m) for m in msgs)) == msgs


def test_message_split_at_every_offset() -> None:
    first, second = sample(1), sample(2, payload=b"q" * 260)
    data = encode_frame(first) + encode_frame(second)
    for cut in range(len(data) + 1):
        decoder = FrameDecoder()
        assert decoder.feed(data[:cut]) + decoder.feed(data[cut:]) == [first, second]


def test_feed_of_nothing_yields_nothing() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(b"") == []
    assert decoder.buffered == 0


def test_partial_header_is_buffered_without_error() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(b"\x00" * (HEADER_SIZE - 1)) == []
    assert decoder.buffered == HEADER_SIZE - 1


def test_large_stream_in_small_chunks_survives_buffer_compaction() -> None:
    msgs = [sample(i, payload=bytes([i % 256]) * 3000) for i in range(100)]
    data = b"".join(encode_frame(m) for m in msgs)
    assert len(data) > 4 * 65536
    decoder = FrameDecoder()
    out: list[Message] = []
    for i in range(0, len(data), 997):
        out += decoder.feed(data[i : i + 997])
    assert out == msgs
    assert decoder.buffered == 0


def test_feed_parts_returns_undecoded_part_lists() -> None:
    msg = sample()
    assert FrameDecoder().feed_parts(encode_frame(msg)) == [encode_parts(msg)]


def test_feed_accepts_bytearray_and_memoryview() -> None:
    data = encode_frame(sample())
    assert FrameDecoder().feed(bytearray(data)) == [sample()]  # type: ignore[arg-type]
    assert FrameDecoder().feed(memoryview(data)) == [sample()]  # type: ignore[arg-type]


# --- decoding errors ---------------------------------------------------------


def test_bad_frame_magic() -> None:
    protocol_error(FrameDecoder(), frame(b"\x01x", magic=b"\x12\x00\xee\xfe"))


def test_byte_swapped_frame_magic_is_refused() -> None:
    swapped = FRAME_MAGIC.to_bytes(4, "big" if sys.byteorder == "little" else "little")
    protocol_error(FrameDecoder(), frame(b"\x01x", magic=swapped))


def test_bad_magic_after_a_good_message() -> None:
    protocol_error(FrameDecoder(), encode_frame(sample()) + b"\x00" * HEADER_SIZE)


def test_oversize_message_is_refused_from_its_header_alone() -> None:
    decoder = FrameDecoder(max_message=1000)
    protocol_error(decoder, frame(b"", size=1001))


def test_message_of_exactly_max_size_is_accepted() -> None:
    data = encode_frame(sample())
    decoder = FrameDecoder(max_message=len(data) - HEADER_SIZE)
    assert decoder.feed(data) == [sample()]


def test_message_one_byte_over_max_size_is_refused() -> None:
    data = encode_frame(sample())
    protocol_error(FrameDecoder(max_message=len(data) - HEADER_SIZE - 1), data)


def test_default_max_message_refuses_a_4_gib_claim() -> None:
    assert DEFAULT_MAX_MESSAGE < 0xFFFFFFFF
    protocol_error(FrameDecoder(), frame(b"", size=0xFFFFFFFF))


def test_part_longer_than_its_frame() -> None:
    protocol_error(FrameDecoder(), frame(b"\x05abc"))


def test_long_part_size_truncated() -> None:
    protocol_error(FrameDecoder(), frame(b"\xff\x00\x00"))


def test_long_part_longer_than_its_frame() -> None:
    protocol_error(FrameDecoder(), frame(b"\xff\x00\x00\x01\x00abc"))


def test_frame_with_no_parts_is_not_a_message() -> None:
    protocol_error(FrameDecoder(), frame(b""))


def test_frame_whose_parts_are_not_a_message() -> None:
    protocol_error(FrameDecoder(), frame(b"\x03abc"))


def test_decoder_stays_failed_after_a_framing_error() -> None:
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError) as first:
        decoder.feed(frame(b"\x05abc"))
    assert first.value is not None  # the exception (and its traceback) is still alive
    with pytest.raises(ProtocolError):
        decoder.feed(encode_frame(sample()))


# --- properties --------------------------------------------------------------

u32 = st.integers(min_value=0, max_value=0xFFFFFFFF)
non_structural = st.sets(
    st.sampled_from(
        [MsgFlag.NORESPONSE, MsgFlag.UPSTREAM, MsgFlag.PRIVATE, MsgFlag.STREAMING, MsgFlag.USER1]
    )
).map(lambda fs: sum(int(f) for f in fs))
messages = st.builds(
    Message,
    type=st.sampled_from(list(MsgType.ALL)),
    topic=st.none() | st.text(max_size=300).filter(lambda t: not t.endswith("\0")),
    payload=st.none() | st.binary(max_size=600),
    flags=non_structural,
    routes=st.none() | st.lists(st.text(min_size=1, max_size=12), max_size=4),
    userid=u32,
    rolemask=u32,
    aux1=u32,
    aux2=u32,
)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def feed_until_error(decoder: FrameDecoder, chunks: list[bytes]) -> list[Message]:
    """Feed chunks; stop at the first ProtocolError (a stream error is fatal)."""
    out: list[Message] = []
    for chunk in chunks:
        try:
            out += decoder.feed(chunk)
        except ProtocolError as exc:
            assert exc.errno == errno.EPROTO
            break
    return out


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(messages, min_size=1, max_size=4), st.lists(st.integers(min_value=0), max_size=6))
def test_any_messages_round_trip_through_frames_in_any_chunking(
    msgs: list[Message], cuts: list[int]
) -> None:
    data = b"".join(encode_frame(m) for m in msgs)
    decoder = FrameDecoder()
    out: list[Message] = []
    for chunk in chunked(data, cuts):
        out += decoder.feed(chunk)
    assert out == msgs
    assert decoder.buffered == 0


@settings(max_examples=300)
@given(st.binary(max_size=200), st.lists(st.integers(min_value=0), max_size=4))
def test_arbitrary_bytes_give_messages_or_protocol_error(data: bytes, cuts: list[int]) -> None:
    feed_until_error(FrameDecoder(max_message=4096), chunked(data, cuts))


@settings(max_examples=300)
@given(st.binary(max_size=120), st.lists(st.integers(min_value=0), max_size=4))
def test_arbitrary_bodies_behind_a_valid_header_give_messages_or_protocol_error(
    body: bytes, cuts: list[int]
) -> None:
    feed_until_error(FrameDecoder(), chunked(frame(body), cuts))


@settings(max_examples=300)
@given(
    messages,
    st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_corrupted_frames_give_messages_or_protocol_error(
    msg: Message, flips: list[tuple[int, int]]
) -> None:
    data = bytearray(encode_frame(msg))
    for where, value in flips:
        data[where % len(data)] = value
    feed_until_error(FrameDecoder(max_message=1 << 16), [bytes(data)])


# --- receiving into the decoder's buffer ---------------------------------------


def receive_into(decoder: FrameDecoder, data: bytes, sizes: list[int]) -> list[Message]:
    """Write ``data`` through get_buffer/buffer_updated, ``sizes`` bytes at a time."""
    out: list[Message] = []
    i = 0
    k = 0
    while i < len(data):
        view = decoder.get_buffer()
        assert len(view) >= 1
        n = min(len(view), len(data) - i, sizes[k % len(sizes)] if sizes else len(view))
        view[:n] = data[i : i + n]
        del view  # as a transport drops its reference
        out += decoder.buffer_updated(n)
        i += n
        k += 1
    return out


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(messages, min_size=1, max_size=4),
    st.lists(st.integers(min_value=1, max_value=5000), max_size=6),
)
def test_receiving_into_the_buffer_gives_what_feeding_gives(
    msgs: list[Message], sizes: list[int]
) -> None:
    data = b"".join(encode_frame(m) for m in msgs)
    decoder = FrameDecoder()
    assert receive_into(decoder, data, sizes) == msgs
    assert decoder.buffered == 0


def test_a_large_frame_is_offered_room_for_all_of_it() -> None:
    msg = sample(payload=b"x" * (300 << 10))
    data = encode_frame(msg)
    decoder = FrameDecoder()
    first = decoder.get_buffer()
    first[:HEADER_SIZE] = data[:HEADER_SIZE]
    del first
    assert decoder.buffer_updated(HEADER_SIZE) == []
    rest = decoder.get_buffer()
    assert len(rest) >= len(data) - HEADER_SIZE  # one read can take the rest
    rest[: len(data) - HEADER_SIZE] = data[HEADER_SIZE:]
    del rest
    assert decoder.buffer_updated(len(data) - HEADER_SIZE) == [msg]


def test_a_claimed_size_is_not_allocated_before_the_data_comes() -> None:
    decoder = FrameDecoder(max_message=64 << 20)
    view = decoder.get_buffer()
    view[:HEADER_SIZE] = frame(b"", size=60 << 20)[:HEADER_SIZE]
    del view
    assert decoder.buffer_updated(HEADER_SIZE) == []
    assert len(decoder.get_buffer()) <= 2 << 20


def test_a_large_buffer_is_let_go_when_empty() -> None:
    decoder = FrameDecoder()
    data = encode_frame(sample(payload=b"y" * (3 << 20)))
    assert receive_into(decoder, data, []) == [sample(payload=b"y" * (3 << 20))]
    assert len(decoder.get_buffer()) < 1 << 20


def test_a_view_kept_across_buffer_updated_stays_valid() -> None:
    # asyncio holds the view from get_buffer while buffer_updated runs.
    msgs = [sample(i, payload=bytes(70000)) for i in range(3)]
    data = b"".join(encode_frame(m) for m in msgs)
    decoder = FrameDecoder()
    out: list[Message] = []
    i = 0
    views = []
    while i < len(data):
        view = decoder.get_buffer()
        n = min(len(view), len(data) - i, 50000)
        view[:n] = data[i : i + n]
        views.append(view)  # never released
        out += decoder.buffer_updated(n)
        i += n
    assert out == msgs


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(messages, st.lists(st.binary(max_size=400), max_size=4))
def test_frame_pieces_join_to_the_frame(msg: Message, pieces: list[bytes]) -> None:
    whole = Message(**{f: getattr(msg, f) for f in Message._FIELDS})
    whole.payload = b"".join(pieces)
    msg.payload = b""  # the placeholder
    assert b"".join(encode_frame_pieces(msg, pieces)) == encode_frame(whole)
