"""The terminal holder's screen model (sdexec.unit.pty_screen.Screen), sans-IO.

What matters is that a redraw (``render``) shows what the program's output
showed.  Two properties say it for any output: the model does not depend on
how the output was cut into reads, and a fresh model fed with ``render()``
ends in the same state (same cells, cursor, modes).  The cases below pin
the meaning of common sequences; test_pty_detach.py checks it all against
a real terminal (tmux).
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from sdexec.unit.pty_screen import Screen


def state(s: Screen) -> tuple[Any, ...]:
    """Everything a redraw must reproduce."""
    cur = s.cur
    bufs = [s.main] + ([s.alt] if s.in_alt else [])
    saved = s.buf.saved
    return (
        s.cols,
        s.rows,
        [(b.chars, b.pens) for b in bufs],
        (cur.x, cur.y, cur.wrap, cur.pen, cur.origin, cur.charsets, cur.shift),
        s.in_alt,
        (s.alt_mode, s.alt_saved.x, s.alt_saved.y) if s.in_alt and s.alt_mode == 1049 else None,
        {m: v for m, v in s.modes.items() if m in (1, 5, 7, 25, 1000, 1002, 1006, 2004)},
        (s.top, s.bottom, s.insert, s.keypad, sorted(s.tabs), s.title),
        (saved.x, saved.y, saved.pen) if saved is not None else None,
    )


def fed(data: bytes, cols: int = 20, rows: int = 6) -> Screen:
    s = Screen(cols, rows)
    s.feed(data)
    return s


def normalize_modes(s: Screen) -> None:
    """Modes at their defaults and absent ones are the same thing."""
    for mode, default in ((7, True), (25, True)):
        s.modes.setdefault(mode, default)
    for mode in list(s.modes):
        if s.modes[mode] is False and mode not in (7, 25):
            del s.modes[mode]


# --- any output --------------------------------------------------------------------------

csi_finals = "ABCDEFGHJKLMPSTXZ@`abdfgmrsu"
tokens = st.one_of(
    st.text(alphabet="abcdefgh XYZ0123", min_size=1, max_size=12).map(str.encode),
    st.sampled_from([b"\r", b"\n", b"\r\n", b"\x08", b"\t", b"\x0e", b"\x0f", b"\x07"]),
    st.builds(
        lambda p, f: b"\x1b[" + p.encode() + f.encode(),
        st.sampled_from(["", "0", "1", "2", "3", "5", "12", "2;3", "1;40", "3;5", "0;7"]),
        st.sampled_from(csi_finals),
    ),
    st.builds(
        lambda m, hl: b"\x1b[?" + m.encode() + hl.encode(),
        st.sampled_from(["1", "6", "7", "25", "47", "1047", "1048", "1049", "2004", "1000"]),
        st.sampled_from("hl"),
    ),
    st.builds(
        lambda p: b"\x1b[" + p.encode() + b"m",
        st.sampled_from(["1", "31", "44", "38;5;202", "48;2;1;2;3", "4:3", "7;1;32", "22", "0"]),
    ),
    st.sampled_from(
        [
            b"\x1b7",
            b"\x1b8",
            b"\x1bD",
            b"\x1bM",
            b"\x1bE",
            b"\x1bH",
            b"\x1b(0",
            b"\x1b(B",
            b"\x1b)0",
            b"\x1b=",
            b"\x1b>",
            b"\x1b]2;a title\x07",
            b"\x1b[4h",
            b"\x1b[4l",
            b"\x1b[3g",
            b"\x1b#8",
            b"\x1b[!p",
        ]
    ),
    st.sampled_from(["日本", "é", "e\u0301", "中文字", "\u00e9\u20ac"]).map(str.encode),
)
streams = st.lists(tokens, max_size=60).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(streams, st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=20))
def test_the_model_does_not_depend_on_how_reads_cut_the_output(
    data: bytes, cuts: list[int]
) -> None:
    whole = fed(data)
    pieces = Screen(20, 6)
    pos, i = 0, 0
    while pos < len(data):
        step = cuts[i % len(cuts)]
        pieces.feed(data[pos : pos + step])
        pos += step
        i += 1
    assert state(pieces) == state(whole)


@settings(max_examples=400, deadline=None)
@given(streams, st.sampled_from([(20, 6), (7, 3), (1, 1), (40, 2)]))
def test_a_redraw_brings_a_fresh_terminal_to_the_same_state(
    data: bytes, size: tuple[int, int]
) -> None:
    s = fed(data, *size)
    again = fed(s.render(), *size)
    normalize_modes(s)
    normalize_modes(again)
    assert state(again) == state(s)


@settings(max_examples=200, deadline=None)
@given(streams, st.integers(1, 30), st.integers(1, 10))
def test_any_resize_keeps_the_model_consistent(data: bytes, cols: int, rows: int) -> None:
    s = fed(data)
    s.resize(cols, rows)
    assert (s.cols, s.rows) == (cols, rows)
    for buf in (s.main, s.alt):
        assert len(buf.chars) == len(buf.pens) == rows
        assert all(len(r) == cols for r in buf.chars + buf.pens)
    assert 0 <= s.cur.x < cols and 0 <= s.cur.y < rows
    s.feed(b"more text\r\n" * 3)
    again = fed(s.render(), cols, rows)
    normalize_modes(s)
    normalize_modes(again)
    assert state(again) == state(s)


# --- what sequences mean -------------------------------------------------------------------


def test_lines_scroll_and_the_last_screenful_stays() -> None:
    s = fed(b"".join(b"%d\r\n" % i for i in range(1, 201)) + b"$ ", cols=10, rows=5)
    assert s.text() == "197\n198\n199\n200\n$\n"
    assert (s.cur.x, s.cur.y) == (2, 4)


def test_bulk_lines_scroll_inside_the_region_only() -> None:
    s = fed(b"top\x1b[2;4r\x1b[4;1H" + b"".join(b"l%d\r\n" % i for i in range(9)), 10, 5)
    s.feed(b"\x1b[5;1Hbottom")
    assert s.text() == "top\nl7\nl8\n\nbottom\n"


def test_long_lines_wrap_at_the_margin() -> None:
    s = fed(b"abcdefghijkl", cols=5, rows=3)
    assert s.text() == "abcde\nfghij\nkl\n"
    s = fed(b"abcde", cols=5, rows=3)
    assert s.cur.wrap and s.text() == "abcde\n"  # the wrap waits for the next character
    s.feed(b"\r")
    assert not s.cur.wrap and (s.cur.x, s.cur.y) == (0, 0)


def test_no_autowrap_overwrites_the_last_column() -> None:
    assert fed(b"\x1b[?7labcdefgh", cols=5, rows=2).text() == "abcdh\n"


def test_erasing_uses_the_background_colour() -> None:
    s = fed(b"\x1b[1;44mab\x1b[K", cols=4, rows=1)
    assert s.main.pens[0] == ["1;44", "1;44", "44", "44"]


def test_sgr_is_kept_in_a_canonical_form() -> None:
    s = fed(b"\x1b[31;1mx\x1b[22;4mx\x1b[38;5;9;48;2;1;2;3mx\x1b[mx", cols=6, rows=1)
    assert s.main.pens[0][:4] == ["1;31", "4;31", "4;38;5;9;48;2;1;2;3", ""]


def test_the_alternate_screen_keeps_the_main_one() -> None:
    s = fed(b"shell$ vi\r\n\x1b[?1049h\x1b[Hediting", cols=10, rows=3)
    assert s.in_alt and s.text() == "editing\n"
    s.feed(b"\x1b[?1049l")
    assert not s.in_alt and s.text() == "shell$ vi\n"
    assert (s.cur.x, s.cur.y) == (0, 1)


def test_a_redraw_in_the_alternate_screen_draws_both_screens() -> None:
    s = fed(b"main\r\n\x1b[?1049h\x1b[2;3Halt", cols=10, rows=3)
    redraw = s.render()
    assert b"main" in redraw and b"alt" in redraw
    assert redraw.index(b"main") < redraw.index(b"\x1b[?1049h") < redraw.index(b"alt")
    again = fed(redraw, 10, 3)
    again.feed(b"\x1b[?1049l")
    assert again.text() == "main\n"


def test_wide_and_combining_characters_take_their_cells() -> None:
    s = fed("日本x\r\ne\u0301!".encode(), cols=6, rows=2)
    assert s.main.chars[0][:5] == ["日", "", "本", "", "x"]
    assert s.main.chars[1][:2] == ["e\u0301", "!"]
    s.feed(b"\x1b[1;2Hz")  # over the right half of 日
    assert s.main.chars[0][:3] == [" ", "z", "本"]


def test_line_drawing_characters() -> None:
    assert fed(b"\x1b(0lqk\x1b(Bq", cols=5, rows=1).text() == "\u250c\u2500\u2510q\n"


def test_a_sequence_cut_by_a_read_is_completed_by_the_next() -> None:
    s = Screen(10, 2)
    for piece in (b"a\x1b", b"[3", b"1m", b"b\x1b]2;ti", b"tle\x07c"):
        s.feed(piece)
    assert s.text() == "abc\n" and s.main.pens[0][1] == "31" and s.title == "title"


def test_queries_are_answered_in_the_model() -> None:
    s = fed(b"\x1b[3;5H\x1b[6n\x1b[c\x1b[5n", cols=10, rows=5)
    assert s.replies == [b"\x1b[3;5R", b"\x1b[?62;22c", b"\x1b[0n"]


def test_resize_drops_rows_below_the_cursor_first() -> None:
    s = fed(b"1\r\n2\r\n3", cols=5, rows=6)
    s.resize(5, 3)
    assert s.text() == "1\n2\n3\n" and s.cur.y == 2
    s = fed(b"1\r\n2\r\n3\r\n4\r\n5", cols=5, rows=5)
    s.resize(5, 3)
    assert s.text() == "3\n4\n5\n" and s.cur.y == 2
    s.resize(3, 4)
    assert s.text() == "3\n4\n5\n" and (s.cols, s.rows) == (3, 4)


def test_the_model_is_bounded() -> None:
    s = Screen(9999, 9999)
    assert (s.cols, s.rows) == (1000, 500)
    s.feed(b"\x1b[9999;9999Hx")
    assert (s.cur.x, s.cur.y) == (999, 499)


def test_a_runaway_string_sequence_is_dropped() -> None:
    s = Screen(10, 2)
    s.feed(b"\x1b]2;" + b"x" * 10000)
    s.feed(b"\x07ok")
    assert "ok" in s.text()


def test_inserting_inside_a_wide_character_blanks_both_halves() -> None:
    s = fed("日本".encode() + b"\x1b[4h\x1b[1;2Hm", cols=6, rows=1)  # IRM, on 日's right half
    assert s.main.chars[0] == [" ", "m", " ", "本", "", " "]
    s = fed("日本".encode() + b"\x1b[1;4H\x1b[2@", cols=6, rows=1)  # ICH on 本's right half
    assert s.main.chars[0] == ["日", "", " ", " ", " ", " "]


def test_a_redraw_keeps_a_pending_wrap_after_a_wide_character() -> None:
    s = fed("abcd日".encode(), cols=6, rows=2)
    assert s.cur.wrap
    again = fed(s.render(), 6, 2)
    assert state(again) == state(s)
    again.feed(b"x")
    assert again.text() == "abcd日\nx\n"


def test_skipped_output_keeps_its_modes_and_colours_only() -> None:
    s = fed(b"kept\r\n", cols=10, rows=3)
    s.feed(b"\x1b[12")  # a sequence cut by the read the holder skips after
    s.skip(b"drawn\r\n\x1b[?1049h\x1b[?1h\x1b[1;32mmore\r\n\x1b[?1h")
    assert s.in_alt and s.modes[1] and s.cur.pen == "1;32"
    s.feed(b"after")
    assert s.text() == "\nafter\n"  # on the alternate screen, the cursor where it was
