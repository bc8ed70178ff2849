"""RFC 22 idset encoding and decoding (sdexec.proto.idset)."""

from __future__ import annotations

import errno
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sdexec.base.errors import SdexecError
from sdexec.proto import idset

ids_strategy = st.sets(st.integers(min_value=0, max_value=idset.MAX_ID), max_size=40)
# Small, dense sets exercise range compression far more often than sparse ones.
dense_ids = st.sets(st.integers(min_value=0, max_value=60), max_size=40)


# --- encode ------------------------------------------------------------------


def test_encode_empty_set_is_empty_string() -> None:
    assert idset.encode([]) == ""


def test_encode_single_id() -> None:
    assert idset.encode([7]) == "7"


def test_encode_sorts_and_compresses_runs() -> None:
    assert idset.encode([7, 3, 0, 1, 2]) == "0-3,7"


def test_encode_compresses_a_run_of_two() -> None:
    assert idset.encode([5, 6]) == "5-6"


def test_encode_rfc_example() -> None:
    assert idset.encode([1, 2, 3, 5, 6, 42]) == "1-3,5-6,42"


def test_encode_drops_duplicates() -> None:
    assert idset.encode([4, 4, 5, 4]) == "4-5"


def test_encode_accepts_any_iterable() -> None:
    assert idset.encode(range(3)) == "0-2"
    assert idset.encode(i for i in (9, 8)) == "8-9"


def test_encode_brackets_wrap_more_than_one_id() -> None:
    assert idset.encode([0, 1, 2, 3, 7], brackets=True) == "[0-3,7]"


def test_encode_brackets_wrap_a_single_range() -> None:
    assert idset.encode([1, 2], brackets=True) == "[1-2]"


def test_encode_brackets_leave_a_single_id_bare() -> None:
    assert idset.encode([5], brackets=True) == "5"


def test_encode_brackets_leave_the_empty_set_bare() -> None:
    assert idset.encode([], brackets=True) == ""


def test_encode_accepts_the_largest_id() -> None:
    assert idset.encode([idset.MAX_ID]) == str(2**32 - 2)


@pytest.mark.parametrize("bad", [-1, idset.MAX_ID + 1, 2**64])
def test_encode_rejects_ids_out_of_range(bad: int) -> None:
    with pytest.raises(SdexecError) as info:
        idset.encode([1, bad])
    assert info.value.errno == errno.EINVAL


@pytest.mark.parametrize("bad", ["3", 1.0, True, None])
def test_encode_rejects_non_integers(bad: object) -> None:
    with pytest.raises(SdexecError) as info:
        idset.encode([1, bad])  # type: ignore[list-item]
    assert info.value.errno == errno.EINVAL


# --- decode ------------------------------------------------------------------


def test_decode_empty_string_is_empty_set() -> None:
    assert idset.decode("") == set()


def test_decode_empty_brackets_is_empty_set() -> None:
    assert idset.decode("[]") == set()


def test_decode_single_id() -> None:
    assert idset.decode("0") == {0}


def test_decode_list_and_ranges() -> None:
    assert idset.decode("1-3,5-6,42") == {1, 2, 3, 5, 6, 42}


def test_decode_brackets() -> None:
    assert idset.decode("[1-3,5-6,42]") == {1, 2, 3, 5, 6, 42}


def test_decode_bracketed_single_id() -> None:
    assert idset.decode("[4]") == {4}


def test_decode_largest_id() -> None:
    assert idset.decode(str(idset.MAX_ID)) == {idset.MAX_ID}


@pytest.mark.parametrize(
    "text",
    [
        "all",  # a word commands accept, not an idset
        "1,",  # empty element
        ",1",
        "1,,2",
        "1-",
        "-1",
        "1--3",
        "1-2-3",
        " 1",  # no whitespace
        "1, 2",
        "1 ",
        "01",  # no leading zeroes
        "1-03",
        "00",
        "3,1",  # ascending order
        "1,1",  # unique
        "1-3,2",  # overlapping
        "1-3,3-5",
        "3-1",  # reversed range
        "2-2",  # a range must span two ids or more
        "[1",  # unbalanced brackets
        "1]",
        "[",
        "]",
        "[[1]]",
        "0x10",
        "1.5",
        "\u0661",  # ARABIC-INDIC DIGIT ONE: only ASCII digits count
        "4294967295",  # UINT_MAX is the invalid id
        "1-4294967295",
        "9" * 5000,  # too long to be an id at all
        "1-" + "9" * 5000,
    ],
)
def test_decode_rejects_what_rfc22_does_not_allow(text: str) -> None:
    with pytest.raises(SdexecError) as info:
        idset.decode(text)
    assert info.value.errno == errno.EINVAL


def test_decode_refuses_to_expand_beyond_max_count() -> None:
    with pytest.raises(SdexecError) as info:
        idset.decode("0-4294967294")
    assert info.value.errno == errno.EINVAL


def test_decode_max_count_is_adjustable() -> None:
    assert idset.decode("0-9", max_count=10) == set(range(10))
    with pytest.raises(SdexecError):
        idset.decode("0-9,11", max_count=10)


def test_decode_error_message_names_the_input() -> None:
    with pytest.raises(SdexecError) as info:
        idset.decode("1,x")
    assert "'1,x'" in info.value.message


# --- properties --------------------------------------------------------------


@settings(max_examples=200)
@given(ids_strategy)
def test_decode_inverts_encode(ids: set[int]) -> None:
    assert idset.decode(idset.encode(ids)) == ids


@settings(max_examples=200)
@given(dense_ids, st.booleans())
def test_decode_inverts_encode_with_or_without_brackets(ids: set[int], brackets: bool) -> None:
    assert idset.decode(idset.encode(ids, brackets=brackets)) == ids


@settings(max_examples=200)
@given(dense_ids)
def test_encode_is_canonical(ids: set[int]) -> None:
    text = idset.encode(ids)
    assert idset.encode(idset.decode(text)) == text


@settings(max_examples=200)
@given(dense_ids)
def test_encode_uses_only_rfc22_characters(ids: set[int]) -> None:
    assert set(idset.encode(ids, brackets=True)) <= set("0123456789,-[]")


@settings(max_examples=200)
@given(dense_ids)
def test_encode_never_leaves_adjacent_elements_mergeable(ids: set[int]) -> None:
    elements = [e for e in idset.encode(ids).split(",") if e]
    bounds = [tuple(int(x) for x in e.split("-")) for e in elements]
    for prev, cur in itertools.pairwise(bounds):
        assert cur[0] > prev[-1] + 1


@settings(max_examples=300)
@given(st.text(alphabet="0123456789,-[] ", max_size=20))
def test_decode_of_arbitrary_text_gives_a_set_or_einval(text: str) -> None:
    try:
        result = idset.decode(text)
    except SdexecError as exc:
        assert exc.errno == errno.EINVAL
    else:
        assert idset.decode(idset.encode(result)) == result
