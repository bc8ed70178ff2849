"""sdexec.proto.b64: pybase64 and binascii give the same answers, and both are strict."""

from __future__ import annotations

import base64
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sdexec.proto import b64

FAST = b64.pybase64_codec()
SLOW = b64.binascii_codec()
assert FAST is not None, "pybase64 is installed by scripts/bootstrap (the fast extra)"
CODECS = pytest.mark.parametrize("codec", [FAST, SLOW], ids=["pybase64", "binascii"])

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="


def test_the_fast_codec_is_in_use() -> None:
    assert b64.backend() == "pybase64"


@given(st.binary(max_size=4096))
def test_both_encode_as_rfc4648_and_decode_back(data: bytes) -> None:
    expected = base64.b64encode(data)
    for encode, decode, _ in (FAST, SLOW):
        assert encode(data) == expected
        assert encode(memoryview(data)) == expected
        assert decode(expected) == data
        assert decode(expected.decode()) == data
    assert b64.decode(b64.encode(data)) == data


@given(st.binary(min_size=1, max_size=64), st.integers(0, 63), st.integers(0, 63))
def test_decoding_a_slice_of_a_payload(data: bytes, before: int, after: int) -> None:
    payload = b"x" * before + base64.b64encode(data) + b"y" * after
    view = memoryview(payload)[before : len(payload) - after]
    assert FAST[1](view) == SLOW[1](view) == data


def outcome(codec: b64.Codec | None, text: str) -> bytes | str:
    assert codec is not None
    try:
        return codec[1](text)
    except ValueError:
        return "error"


@given(st.text(alphabet=ALPHABET + "\n -_.é", max_size=24))
def test_both_accept_and_reject_the_same_text(text: str) -> None:
    assert outcome(FAST, text) == outcome(SLOW, text)


@CODECS
@pytest.mark.parametrize(
    "bad",
    [
        "aGVsbG8",
        "aGVs bG8=",
        "aGVsbG8=\n",
        "aGVsbG8=x",
        "=aGVsbG8",
        "aG-sbG8=",
        "é",
        "aGVsbA===",
        "0000=",
    ],
)
def test_not_base64_is_a_value_error(codec: b64.Codec, bad: str) -> None:
    with pytest.raises(ValueError):
        codec[1](bad)


def fresh_python(*lines: str) -> str:
    """What a new interpreter running ``lines`` prints (stripped)."""
    script = "\n".join(["import sys", *lines])
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_without_pybase64_the_standard_library_is_used() -> None:
    assert (
        fresh_python(
            "sys.modules['pybase64'] = None",
            "from sdexec.proto import b64",
            "assert b64.decode(b64.encode(b'\\xff\\x00')) == b'\\xff\\x00'",
            "print(b64.backend())",
        )
        == "binascii"
    )


def test_importing_it_does_not_load_a_codec() -> None:
    assert (
        fresh_python(
            "from sdexec.proto import b64, jsonio",
            "from sdexec.client import exec",
            "print('pybase64' in sys.modules)",
        )
        == "False"
    )
