"""The one decoder of RFC 24 io data (sdexec.proto.iodata), as server and client use it."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sdexec.base.errors import ProtocolError
from sdexec.client.exec import ExecSession, build_command, encode_io
from sdexec.proto import rfc42
from sdexec.proto.iodata import decode_io_data


@given(st.binary(max_size=300))
def test_io_data_round_trips_any_bytes(data: bytes) -> None:
    assert decode_io_data(encode_io("stdout", data)) == data
    assert decode_io_data(rfc42.io_object("stdout", "0", data)) == data


def test_decode_accepts_explicit_utf8_and_missing_data() -> None:
    assert decode_io_data({"data": "x", "encoding": "UTF-8"}) == b"x"
    assert decode_io_data({"stream": "stdout", "eof": True}) == b""


@pytest.mark.parametrize(
    "io",
    [
        {"data": "x", "encoding": "rot13"},
        {"data": "!!!", "encoding": "base64"},
        {"data": 5},
        {"data": "x", "encoding": 5},
        {"data": "\ud800"},
    ],
)
def test_decode_rejects_bad_io_with_eproto(io: dict[str, object]) -> None:
    with pytest.raises(ProtocolError):
        decode_io_data(io)


def _server_reads(io: dict[str, Any]) -> bytes | None:
    try:
        return rfc42.parse_write({"matchtag": 1, "io": {"stream": "stdin", **io}}).data
    except ProtocolError:
        return None


def _client_reads(io: dict[str, Any]) -> bytes | None:
    session = ExecSession(build_command(["cat"], env={}))
    try:
        event = session.feed({"type": "output", "io": {"stream": "stdout", **io}})
    except ProtocolError:
        return None
    assert event is not None
    return event.data


io_fields = st.fixed_dictionaries(
    {},
    optional={
        "data": st.none() | st.text(max_size=20) | st.integers() | st.just("aGk="),
        "encoding": st.none()
        | st.sampled_from(["UTF-8", "utf-8", "utf8", "UTF8", "base64", "rot13", "Base64"])
        | st.integers(),
    },
)


@given(io_fields)
def test_server_and_client_read_the_same_io_objects_alike(io: dict[str, Any]) -> None:
    assert _server_reads(io) == _client_reads(io)
