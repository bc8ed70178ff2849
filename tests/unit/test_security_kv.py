"""RFC 38 key-value encoding: the RFC's test vectors and strict decoding."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sdexec.base.errors import SdexecError
from sdexec.security import kv

DBL_MAX_TEXT = (
    "179769313486231570814527423731704356798070567525844996598917476803157260780028538760589558"
    "632766878171540458953514382464234321326889464182768467546703537516986049910576551282076245"
    "490090389328944075868508455133942304583236903222948165808559332123348274797826204144723168"
    "738177180919299881250404026184124858368.000000"
)

# (name, value, encoding) from RFC 38 "Test Vectors".
VECTORS: list[tuple[str, object, bytes]] = [
    ("PATH", "/bin:/usr/bin", b"PATH\0s/bin:/usr/bin\0"),
    ("EMPTY_STRING", "", b"EMPTY_STRING\0s\0"),
    ("JOB_ID_STRING", "ƒuzzybunny", "JOB_ID_STRING\0sƒuzzybunny\0".encode()),
    ("INT_PLUS", 42, b"INT_PLUS\0i42\0"),
    ("INT_MINUS", -42, b"INT_MINUS\0i-42\0"),
    ("INT64_MAX", 9223372036854775807, b"INT64_MAX\0i9223372036854775807\0"),
    ("INT64_MIN", -9223372036854775808, b"INT64_MIN\0i-9223372036854775808\0"),
    ("DOUBLE", 3.0, b"DOUBLE\0d3.000000\0"),
    ("DOUBLE_INF", math.inf, b"DOUBLE_INF\0dinf\0"),
    ("DBL_MIN", 2.2250738585072014e-308, b"DBL_MIN\0d0.000000\0"),
    ("DBL_MAX", 1.7976931348623158e308, f"DBL_MAX\0d{DBL_MAX_TEXT}\0".encode()),
    ("MINUS_DBL_MAX", -1.7976931348623158e308, f"MINUS_DBL_MAX\0d-{DBL_MAX_TEXT}\0".encode()),
    ("FALSE", False, b"FALSE\0bfalse\0"),
    ("TRUE", True, b"TRUE\0btrue\0"),
    ("TIMESTAMP", kv.Timestamp(1692370785), b"TIMESTAMP\0t2023-08-18T14:59:45Z\0"),
]


@pytest.mark.parametrize(("name", "value", "encoding"), VECTORS, ids=[v[0] for v in VECTORS])
def test_rfc38_vector_encodes_exactly(name: str, value: object, encoding: bytes) -> None:
    assert kv.encode({name: value}) == encoding


@pytest.mark.parametrize(
    ("name", "value", "encoding"),
    [v for v in VECTORS if v[0] != "DBL_MIN"],  # %.6f loses DBL_MIN by design
    ids=[v[0] for v in VECTORS if v[0] != "DBL_MIN"],
)
def test_rfc38_vector_decodes_to_its_value_and_type(
    name: str, value: object, encoding: bytes
) -> None:
    decoded = kv.decode(encoding)
    assert decoded == {name: value}
    assert type(decoded[name]) is type(value)


def test_all_vectors_concatenated_decode_in_order() -> None:
    blob = b"".join(v[2] for v in VECTORS)
    assert list(kv.decode(blob)) == [v[0] for v in VECTORS]


def test_integer_is_never_decoded_as_a_double() -> None:
    assert type(kv.decode(b"N\0i3\0")["N"]) is int


@pytest.mark.parametrize(
    "blob",
    [
        b"KEY\0s",  # no terminating NUL
        b"KEY\0",  # no value
        b"\0sX\0",  # empty key
        b"KEY\0\0",  # no type
        b"KEY\0xvalue\0",  # unknown type
        b"KEY\0i12a\0",
        b"KEY\0i\0",
        b"KEY\0i9223372036854775808\0",  # over INT64_MAX
        b"KEY\0btrue \0",
        b"KEY\0d\0",
        b"KEY\0d 1.0\0",
        b"KEY\0t2023-08-18 14:59:45\0",
        b"KEY\0s1\0KEY\0s2\0",  # duplicate
        b"K\xff\0s1\0",  # not UTF-8
    ],
)
def test_malformed_objects_are_einval(blob: bytes) -> None:
    with pytest.raises(SdexecError) as info:
        kv.decode(blob)
    assert info.value.errno == 22


def test_oversized_object_is_refused() -> None:
    with pytest.raises(SdexecError):
        kv.decode(b"K\0s" + b"x" * kv.MAX_ENCODED + b"\0")


def test_nul_in_a_string_value_cannot_be_encoded() -> None:
    with pytest.raises(SdexecError):
        kv.encode({"K": "a\0b"})


def test_integer_outside_int64_cannot_be_encoded() -> None:
    with pytest.raises(SdexecError):
        kv.encode({"K": 2**63})


_keys = st.text(min_size=1, max_size=20).filter(lambda k: "\0" not in k)
_values = st.one_of(
    st.text(max_size=40).filter(lambda v: "\0" not in v),
    st.integers(min_value=kv.INT64_MIN, max_value=kv.INT64_MAX),
    st.booleans(),
    st.integers(min_value=0, max_value=2**33).map(kv.Timestamp),
)


@given(st.dictionaries(_keys, _values, max_size=8))
def test_encode_then_decode_is_identity_with_types(pairs: dict[str, object]) -> None:
    decoded = kv.decode(kv.encode(pairs))
    assert decoded == pairs
    assert [type(v) for v in decoded.values()] == [type(v) for v in pairs.values()]


@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_give_einval(blob: bytes) -> None:
    try:
        kv.decode(blob)
    except SdexecError as exc:
        assert exc.errno == 22
