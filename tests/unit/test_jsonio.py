"""sdexec.proto.jsonio: the byte-level io encoders agree with the json module."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sdexec.client.exec import ExecSession, encode_io
from sdexec.proto import jsonio, rfc42
from sdexec.proto.message import Message, MsgType, encode_payload

PIECES = [
    b"a",
    b"\n",
    b"\\",
    b'"',
    b"\t",
    b"\r",
    b"\x00",
    b"\x01",
    b"\x1f",
    "é".encode(),
    "€".encode(),
    b"\xff",
    b"/",
    b"\\n",
    b"u",
    b"\x7f",
]


def samples(seed: int, count: int = 3000) -> list[bytes]:
    rnd = random.Random(seed)
    return [b"".join(rnd.choice(PIECES) for _ in range(rnd.randint(0, 12))) for _ in range(count)]


@pytest.mark.parametrize("eof", [False, True])
def test_output_payload_is_byte_identical_to_the_json_module(eof: bool) -> None:
    for data in samples(1):
        want = encode_payload(rfc42.output(7, rfc42.io_object("stdout", "0", data, eof)))
        assert jsonio.output_payload(7, "stdout", "0", data, eof) == want


def test_parse_output_gives_what_json_loads_gives_or_none() -> None:
    for data in samples(2):
        payload = jsonio.output_payload(9, "stderr", "3", data, False)
        parsed = jsonio.parse_output(payload)
        assert parsed is None or parsed == json.loads(payload[:-1])


def test_parse_output_data_round_trips_the_bytes() -> None:
    for data in samples(3):
        payload = jsonio.output_payload(9, "stdout", "0", data, True)
        parsed = jsonio.parse_output_data(payload)
        assert parsed is None or parsed == (9, "stdout", data, True)


def test_plain_text_and_binary_take_the_fast_path() -> None:
    for data in (b'line one\nline "two"\t\\ end\r\n', bytes(range(128, 256))):
        payload = jsonio.output_payload(1, "stdout", "0", data, False)
        assert jsonio.parse_output_data(payload) == (1, "stdout", data, False)


def test_write_payload_matches_the_client_dict_and_parses_back() -> None:
    for data in samples(4):
        payload = jsonio.write_payload(3, "stdin", "0", data, False)
        assert json.loads(payload[:-1]) == {"matchtag": 3, "io": encode_io("stdin", data)}
        parsed = jsonio.parse_write(payload)
        assert parsed is None or parsed == (3, "stdin", data, False)


def test_unescape_agrees_with_json_on_string_bodies() -> None:
    rnd = random.Random(5)
    for _ in range(3000):
        text = "".join(rnd.choice('a\\"\né\x00/') for _ in range(rnd.randint(0, 10)))
        body = json.dumps(text, ensure_ascii=False).encode()[1:-1]
        got = jsonio.unescape(body)
        assert got is None or got == text.encode()


def test_unescape_leaves_unicode_and_slash_escapes_to_json() -> None:
    assert jsonio.unescape(b"\\u0001") is None
    assert jsonio.unescape(b"a\\/b") is None
    assert jsonio.unescape(b"a\\\\/b") == b"a\\/b"


def test_other_layouts_are_left_to_json() -> None:
    payload = b'{"type":"output","io":{"stream":"stdout","rank":"0","data":"x"},"pid":1}\0'
    assert jsonio.parse_output(payload) is None
    assert jsonio.parse_output_data(payload) is None
    assert jsonio.parse_write(b'{"io":{"stream":"stdin"},"matchtag":1}\0') is None


def test_feed_message_decodes_output_like_feed() -> None:
    req = Message.request("sdexec.exec", {}, matchtag=1)
    session = ExecSession({"cmdline": ["x"], "env": {}})
    for data in samples(6, 300):
        msg = req.response(jsonio.output_payload(5, "stdout", "0", data, False))
        event = session.feed_message(msg)
        assert event is not None and event.data == data and event.stream == "stdout"
    eof = req.response(jsonio.output_payload(5, "stderr", "0", None, True))
    event = session.feed_message(eof)
    assert event is not None and event.eof and session.eof_streams == {"stderr"}
    assert eof.type == MsgType.RESPONSE


# --- exactness of the decoders (hypothesis) ----------------------------------------

_TEXT = st.text(alphabet=st.sampled_from(list('ab"\\\n\té€/u0')), max_size=16)


def _as_json_loads(payload: bytes) -> dict[str, Any]:
    obj = json.loads(payload.rstrip(b"\0"))
    assert isinstance(obj, dict)
    return obj


@given(st.binary(max_size=64), st.booleans())
def test_write_payload_parses_back_exactly(data: bytes, eof: bool) -> None:
    payload = jsonio.write_payload(11, "stdin", "0", data, eof)
    parsed = jsonio.parse_write(payload)
    assert parsed is None or parsed == (11, "stdin", data, eof)


@given(_TEXT, _TEXT, _TEXT)
def test_parse_write_never_misreads_a_payload_with_more_members(
    data: str, key: str, value: str
) -> None:
    # Members after "data" can be smuggled in only through a bare quote.
    body = json.dumps(data, ensure_ascii=False)[1:-1]
    quoted = [json.dumps(s, ensure_ascii=False)[1:-1] for s in (key, value)]
    extra = '"},"' + quoted[0] + '":{"a":"' + quoted[1]
    head = '{"matchtag":1,"io":{"stream":"stdin","rank":"0","data":"'
    for text in (body + extra, extra + body, body):
        payload = (head + text + '"}}').encode()
        try:
            obj = _as_json_loads(payload)
        except ValueError:
            continue  # not JSON: either answer is fine, the service drops it
        parsed = jsonio.parse_write(payload + b"\0")
        if parsed is not None:
            assert set(obj) == {"matchtag", "io"}
            assert set(obj["io"]) <= {"stream", "rank", "data"}
            assert parsed[2] == obj["io"]["data"].encode()


def test_parse_write_refuses_a_hidden_signature() -> None:
    payload = (
        b'{"matchtag":1,"io":{"stream":"stdin","rank":"0","data":"x"},'
        b'"signature":"S","z":{"a":"b"}}\0'
    )
    assert "signature" in _as_json_loads(payload)
    assert jsonio.parse_write(payload) is None
    escaped = b'{"matchtag":1,"io":{"stream":"stdin","rank":"0","data":"say \\"hi\\"\\n"}}\0'
    assert jsonio.parse_write(escaped) == (1, "stdin", b'say "hi"\n', False)


def test_base64_bodies_hold_only_the_alphabet() -> None:
    head = b'{"type":"output","pid":1,"io":{"stream":"stdout","rank":"0","data":"'
    good = head + b'QUJD","encoding":"base64"}}\0'
    assert jsonio.parse_output_data(good) == (1, "stdout", b"ABC", False)
    bad = head + b'QUJD","x":"QUJD","encoding":"base64"}}\0'
    assert jsonio.parse_output_data(bad) is None
    assert jsonio.parse_output(bad) is None
    slash = head + b'\\/w==","encoding":"base64"}}\0'
    assert jsonio.parse_output_data(slash) is None  # JSON's \/ is left to json


@given(st.binary(max_size=64), st.booleans())
def test_parse_output_data_round_trips_any_bytes(data: bytes, eof: bool) -> None:
    payload = jsonio.output_payload(3, "stderr", "0", data, eof)
    fast = jsonio.parse_output_data(payload)
    assert fast is None or fast == (3, "stderr", data, eof)
    if b"\0" not in data and not any(c < 0x20 and c not in b"\t\n\r" for c in data):
        assert fast is not None  # only \u escapes are left to json
    parsed = jsonio.parse_output(payload)
    assert parsed is None or parsed == _as_json_loads(payload)


def test_stream_and_rank_with_quotes_are_left_to_json() -> None:
    payload = b'{"type":"output","pid":1,"io":{"stream":"std"out","rank":"0","data":"x"}}\0'
    assert jsonio.parse_output_data(payload) is None
