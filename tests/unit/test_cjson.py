"""sdexec.proto.cjson writes and reads exactly what the json module does."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sdexec.proto import cjson

documents = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


def reference_dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


@given(documents)
def test_dumps_is_json_dumps_compact_and_unescaped(doc: Any) -> None:
    assert cjson.dumps(doc) == reference_dumps(doc)


@given(documents)
def test_loads_reads_back_what_either_wrote(doc: Any) -> None:
    assert cjson.loads(cjson.dumps(doc)) == doc
    assert cjson.loads(json.dumps(doc, indent=2).encode()) == doc


@given(st.text(max_size=40))
def test_loads_accepts_and_rejects_as_json_does(text: str) -> None:
    try:
        expected: Any = json.loads(text)
    except ValueError:
        with pytest.raises(ValueError):
            cjson.loads(text)
        return
    got = cjson.loads(text)
    if isinstance(expected, float) and math.isnan(expected):
        assert math.isnan(got)
    else:
        assert got == expected


@pytest.mark.parametrize(
    "text",
    ["", "   ", "{", '{"a":1} x', "[1,]", '"\x01"', "nul", '{"a":1}{"b":2}', "01"],
)
def test_bad_text_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        json.loads(text)
    with pytest.raises(ValueError):
        cjson.loads(text)


def test_bytes_that_are_not_utf8_are_refused() -> None:
    with pytest.raises(UnicodeDecodeError):
        cjson.loads(b'"\xff"')


def test_whitespace_around_a_document_is_allowed() -> None:
    assert cjson.loads(b' \t\n{"a": [1, 2]}\r\n ') == {"a": [1, 2]}


def test_constants_and_big_numbers() -> None:
    assert (
        cjson.dumps([float("inf"), 10**30, -0.0])
        == "[Infinity,1000000000000000000000000000000,-0.0]"
    )
    assert cjson.loads("[-Infinity, 1e400, 12345678901234567890]") == [
        float("-inf"),
        float("inf"),
        12345678901234567890,
    ]


def test_what_json_cannot_hold_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="Object of type bytes is not JSON serializable"):
        cjson.dumps({"a": b"x"})


def test_a_cycle_is_a_value_error() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="Circular reference"):
        cjson.dumps(loop)


def test_the_c_accelerator_is_in_use() -> None:
    # On CPython the fallback to the json module would cost every CLI start ~8 ms.
    assert cjson._c_codec() is not None
