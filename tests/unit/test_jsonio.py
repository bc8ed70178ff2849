"""sdexec.proto.jsonio: the byte-level io encoders agree with the json module."""

from __future__ import annotations

import json
import random

import pytest

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
