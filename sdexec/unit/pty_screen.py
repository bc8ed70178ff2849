"""The terminal holder's screen model: a small VT100/xterm emulator, pure.

Theory of operation
-------------------
:class:`Screen` is fed the bytes a program writes to its terminal
(:meth:`Screen.feed`) and keeps what a terminal would show: the main and
alternate screens with their characters and colours (a *pen* per cell, kept
as the SGR text that selects it), the cursor and its pending wrap, the
scroll region, tab stops, the G0/G1 character sets and the modes that change
what keys send (cursor keys, keypad, mouse reporting, bracketed paste).
Input may be cut anywhere: an escape sequence or a UTF-8 character split by
the end of a read is kept (up to :data:`PENDING_MAX`) until the rest comes.

:meth:`Screen.render` draws the model back as bytes for a terminal that has
just attached (the rows of each screen, then the tab stops, scroll region,
modes and title, then the cursor), and a fresh model fed that redraw ends
in the same state; :meth:`Screen.text` is the
screen as plain text.  :meth:`Screen.skip` follows a flood of output cheaply
(only the modes and colours it sets), for a holder that falls behind.

The model's size is bounded (:data:`MAX_COLS` x :data:`MAX_ROWS`): a larger
terminal keeps its top-left part.  Used by :mod:`sdexec.unit.pty_holder`,
which runs as a plain file inside a unit, so this module imports only the
standard library.
"""

from __future__ import annotations

import codecs
import re

#: The model's limits (the pty itself may be bigger; the model keeps its top-left part).
MAX_COLS = 1000
MAX_ROWS = 500
#: An escape sequence cut by the end of a read is kept up to this size.
PENDING_MAX = 4096
#: Entries of each of the model's small caches (pens by SGR change).
MEMO_MAX = 4096

_SPECIAL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CSI = re.compile(r"\[([0-?]*)([ -/]*)([@-~])")
_CSI_CUT = re.compile(r"\[[0-?]*[ -/]*\Z")
_STRING = re.compile(r"[\]P_^X]((?:[^\x07\x1b]|\x1b(?!\\))*)(?:\x07|\x1b\\)", re.S)
_STRING_CUT = re.compile(r"[\]P_^X](?:[^\x07\x1b]|\x1b(?!\\))*\x1b?\Z", re.S)
_ESC = re.compile(r"([ -/]*)([0-~])")
_ESC_CUT = re.compile(r"[ -/]*\Z")
#: CSI finals that move the cursor or edit the line (they end a pending wrap).
_MOVES = frozenset("ABCDEFGHIJKLMPXZ@`abdef")
_PRIVATE = frozenset("?>=<")
_PLAIN_LINES = re.compile(r"(?:[ -~]*\r\n)+")
_SKIPPED_MODES = re.compile(rb"\x1b\[\?([0-9;]*)([hl])")
_SKIPPED_SGR = re.compile(rb"\x1b\[([0-9;:]*)m")

#: DEC special graphics (``ESC ( 0``): line drawing, as Unicode.
DEC_GRAPHICS = str.maketrans(
    {
        "`": "\u25c6", "a": "\u2592", "b": "\u2409", "c": "\u240c", "d": "\u240d",
        "e": "\u240a", "f": "\u00b0", "g": "\u00b1", "h": "\u2424", "i": "\u240b",
        "j": "\u2518", "k": "\u2510", "l": "\u250c", "m": "\u2514", "n": "\u253c",
        "o": "\u23ba", "p": "\u23bb", "q": "\u2500", "r": "\u23bc", "s": "\u23bd",
        "t": "\u251c", "u": "\u2524", "v": "\u2534", "w": "\u252c", "x": "\u2502",
        "y": "\u2264", "z": "\u2265", "{": "\u03c0", "|": "\u2260", "}": "\u00a3",
        "~": "\u00b7",
    }
)  # fmt: skip

#: DEC private modes that a redraw sets again when they differ from the default
#: (what keys and the mouse send, how the screen looks); 6 (origin) and the
#: alternate screen are replayed on their own.
REPLAYED_MODES = (1, 5, 7, 25, 1000, 1002, 1003, 1004, 1005, 1006, 1015, 2004)
DEFAULT_MODES = {7: True, 25: True}
ALT_SCREEN_MODES = (47, 1047, 1049)


def _wide(ch: str) -> int:
    """Cells ``ch`` takes: 2 (wide), 1, or 0 (combining: joins the previous cell)."""
    import unicodedata  # only for text beyond ASCII

    if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


class _Cursor:
    """Where the next character goes, and with what attributes (DECSC saves it all)."""

    __slots__ = ("charsets", "origin", "pen", "shift", "wrap", "x", "y")

    def __init__(self) -> None:
        self.x = 0
        self.y = 0
        self.pen = ""  # SGR parameters, canonical ("" is the default rendition)
        self.wrap = False  # at the last column, the next character wraps first
        self.origin = False  # DECOM: positions are relative to the scroll region
        self.charsets = ["B", "B"]  # G0, G1: "0" is DEC graphics
        self.shift = 0  # 0: G0 (SI), 1: G1 (SO)

    def copy(self) -> _Cursor:
        c = _Cursor()
        c.x, c.y, c.pen, c.wrap, c.origin = self.x, self.y, self.pen, self.wrap, self.origin
        c.charsets, c.shift = list(self.charsets), self.shift
        return c


class _Buffer:
    """One screen's cells: a character (or "" right of a wide one) and a pen per cell."""

    __slots__ = ("chars", "pens", "saved")

    def __init__(self, cols: int, rows: int) -> None:
        self.chars = [[" "] * cols for _ in range(rows)]
        self.pens = [[""] * cols for _ in range(rows)]
        self.saved: _Cursor | None = None  # DECSC


class _Pen:
    """SGR state, turned into a canonical parameter string."""

    __slots__ = ("bg", "fg", "flags", "ul", "ulc")

    def __init__(self) -> None:
        self.flags: set[int] = set()  # 1 2 3 5 7 8 9
        self.ul = ""  # "4", "21", "4:3", ...
        self.fg = ""
        self.bg = ""
        self.ulc = ""  # underline colour (58)

    def text(self) -> str:
        parts = [str(f) for f in sorted(self.flags)]
        for part in (self.ul, self.fg, self.bg, self.ulc):
            if part:
                parts.append(part)
        return ";".join(parts)

    @classmethod
    def parse(cls, text: str) -> _Pen:
        pen = cls()
        if text:
            pen.apply(text.split(";"))
        return pen

    def apply(self, fields: list[str]) -> None:
        i = 0
        while i < len(fields):
            f = fields[i]
            i += 1
            if ":" in f:  # sub-parameters: 4:3 (curly underline), 38:2::R:G:B
                head = f.split(":", 1)[0]
                if head == "4":
                    self.ul = "" if f in ("4:0", "4:") else f
                elif head in ("38", "48", "58"):
                    setattr(self, {"38": "fg", "48": "bg", "58": "ulc"}[head], f)
                continue
            n = int(f) if f.isdigit() else 0
            if n == 0:
                self.flags.clear()
                self.ul = self.fg = self.bg = self.ulc = ""
            elif n in (1, 2, 3, 5, 7, 8, 9):
                self.flags.add(n)
            elif n == 4:
                self.ul = "4"
            elif n == 21:
                self.ul = "21"
            elif n == 22:
                self.flags -= {1, 2}
            elif n in (23, 25, 27, 28, 29):
                self.flags.discard(n - 20)
            elif n == 24:
                self.ul = ""
            elif 30 <= n <= 37 or 90 <= n <= 97:
                self.fg = str(n)
            elif n == 39:
                self.fg = ""
            elif 40 <= n <= 47 or 100 <= n <= 107:
                self.bg = str(n)
            elif n == 49:
                self.bg = ""
            elif n == 59:
                self.ulc = ""
            elif n in (38, 48, 58):
                kind = fields[i] if i < len(fields) else ""
                take = 2 if kind == "5" else 4 if kind == "2" else 1
                value = ";".join([str(n), *fields[i : i + take]])
                i += take
                if kind in ("5", "2"):
                    setattr(self, {38: "fg", 48: "bg", 58: "ulc"}[n], value)


class Screen:
    """A terminal screen fed with a program's output; :meth:`render` draws it again.

    A model of what an xterm-compatible terminal (tmux, xterm, the Linux
    console) shows, good enough to redraw it on another such terminal: what
    shells, readline, less, vi, top and curses programs use.  Not modelled:
    double-width lines, left/right margins, scrollback, and any mode that
    does not change what is shown or what keys send.  Output beyond the
    model's size (:data:`MAX_COLS` x :data:`MAX_ROWS`) is clipped.
    """

    def __init__(self, cols: int, rows: int) -> None:
        self.cols = max(1, min(cols, MAX_COLS))
        self.rows = max(1, min(rows, MAX_ROWS))
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._pending = ""  # an escape sequence cut by the end of a read
        #: Answers to terminal queries (DA, DSR), for the holder to send when nobody else will.
        self.replies: list[bytes] = []
        self.title = ""
        self._sgr_memo: dict[tuple[str, str], str] = {}
        self._blank_memo: dict[str, str] = {}
        self._reset()

    # --- state ------------------------------------------------------------------------

    def _reset(self) -> None:
        self.main = _Buffer(self.cols, self.rows)
        self.alt = _Buffer(self.cols, self.rows)
        self.buf = self.main
        self.alt_mode = 0  # which of 47/1047/1049 switched to the alternate screen
        self.alt_saved: _Cursor | None = None  # the cursor 1049 saved
        self.cur = _Cursor()
        self.top = 0
        self.bottom = self.rows - 1
        self.modes: dict[int, bool] = dict(DEFAULT_MODES)
        self.insert = False  # IRM
        self.newline = False  # LNM
        self.keypad = False  # DECKPAM
        self.tabs = self._default_tabs(self.cols)
        self.last = " "  # the last character printed (REP)

    @staticmethod
    def _default_tabs(cols: int) -> set[int]:
        return set(range(8, cols, 8))

    @property
    def in_alt(self) -> bool:
        return self.buf is self.alt

    def _blank_pen(self) -> str:
        """Erased cells take the background colour only (xterm's BCE)."""
        pen = self.cur.pen
        if not pen:
            return ""
        blank = self._blank_memo.get(pen)
        if blank is None:
            bg = _Pen.parse(pen).bg
            blank = _Pen.parse(bg).text() if bg else ""
            if len(self._blank_memo) >= MEMO_MAX:
                self._blank_memo.clear()
            self._blank_memo[pen] = blank
        return blank

    def _blank_row(self) -> tuple[list[str], list[str]]:
        return [" "] * self.cols, [self._blank_pen()] * self.cols

    # --- input ------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Apply ``data``, the program's output, as a terminal would."""
        text = self._decoder.decode(data)
        if self._pending:
            text = self._pending + text
            self._pending = ""
        n = len(text)
        pos = 0
        search = _SPECIAL.search
        while pos < n:
            m = search(text, pos)
            if m is None:
                self._print(text[pos:])
                return
            i = m.start()
            if i > pos:
                self._print(text[pos:i])
            c = text[i]
            if c == "\r":
                cur = self.cur
                cur.x = 0
                cur.wrap = False
                pos = i + 1
                if text.startswith("\n", pos):  # CR LF: the end of most lines
                    self._index()
                    pos += 1
                    if not self.insert and cur.charsets[cur.shift] != "0":
                        pos = self._plain_lines(text, pos)
                continue
            if c != "\x1b":
                self._control(c)
                pos = i + 1
                continue
            pos = self._escape(text, i + 1)
            if pos < 0:  # cut by the end of this read: keep it for the next
                rest = text[i:]
                self._pending = rest if len(rest) <= PENDING_MAX else ""
                return

    def _escape(self, text: str, j: int) -> int:
        """Handle the sequence after the ESC at ``j - 1``; where to go on (-1: incomplete)."""
        if j >= len(text):
            return -1
        nxt = text[j]
        if nxt == "[":
            m = _CSI.match(text, j)
            if m is not None:
                params, inter, final = m.groups()
                if final == "m" and not inter and params[:1] not in _PRIVATE:
                    self._sgr(params)  # the most common sequence by far
                else:
                    self._csi(params, inter, final)
                return m.end()
            return -1 if _CSI_CUT.match(text, j) else j
        if nxt in "]P_^X":
            m = _STRING.match(text, j)
            if m is not None:
                if nxt == "]":
                    self._osc(m.group(1))
                return m.end()
            return -1 if _STRING_CUT.match(text, j) else j
        m = _ESC.match(text, j)
        if m is not None:
            self._esc(m.group(1), m.group(2))
            return m.end()
        return -1 if _ESC_CUT.match(text, j) else j

    def skip(self, data: bytes) -> None:
        """Output not applied (the holder fell behind it): only what it set is kept.

        The modes it switched (the alternate screen, cursor keys, mouse...)
        and the colours of its last SGR sequences; what it drew is left out:
        after a flood of output, what follows it fills the screen anyway.
        """
        self._decoder.reset()
        self._pending = ""
        for m in _SKIPPED_MODES.finditer(data):
            on = m.group(2) == b"h"
            for f in m.group(1).split(b";"):
                if f.isdigit() and int(f) != 6:
                    self._dec_mode(int(f), on)
        for m in _SKIPPED_SGR.finditer(data, max(0, len(data) - 4096)):
            self._sgr(m.group(1).decode("ascii"))

    # --- printing ---------------------------------------------------------------------

    def _plain_lines(self, text: str, pos: int) -> int:
        """Lines of printable ASCII, each ended by CR LF, from column 0: all at once.

        Only the lines that land on a row with something on it are written
        one by one: those above the bottom of the scroll region and the
        first one at its bottom.  Each of the others is written on the blank
        row the previous one scrolled in, and then scrolled up itself; so
        the region ends as its upper rows, then those lines, then a blank
        row, cut to its height: the last screenful is built, not the rest.
        """
        m = _PLAIN_LINES.match(text, pos)
        if m is None:
            return pos
        lines = m.group().split("\r\n")
        lines.pop()
        cols = self.cols
        if max(map(len, lines)) > cols:
            return pos  # a line wraps: the general path
        cur = self.cur
        n = len(lines)
        i = 0
        while i < n:
            at_bottom = cur.y == self.bottom
            if lines[i]:
                self._put_ascii(lines[i])
            cur.x = 0
            cur.wrap = False
            self._index()
            i += 1
            if at_bottom:
                break
        if i < n:
            top, bottom = self.top, self.bottom
            height = bottom - top + 1
            pen, blank = cur.pen, self._blank_pen()
            rest = lines[i:][-height:]
            new_chars = [[*line, *" " * (cols - len(line))] for line in rest]
            new_pens = [[pen] * len(line) + [blank] * (cols - len(line)) for line in rest]
            buf = self.buf
            chars = buf.chars[top:bottom] + new_chars + [[" "] * cols]
            pens = buf.pens[top:bottom] + new_pens + [[blank] * cols]
            buf.chars[top : bottom + 1] = chars[-height:]
            buf.pens[top : bottom + 1] = pens[-height:]
        last = next((line for line in reversed(lines) if line), "")
        if last:
            self.last = last[-1]
        return m.end()

    def _print(self, s: str) -> None:
        cur = self.cur
        if cur.charsets[cur.shift] == "0":
            s = s.translate(DEC_GRAPHICS)
        if s.isascii():
            self._put_ascii(s)
        else:
            for ch in s:
                if ch.isascii():
                    self._put_ascii(ch)
                elif "\x80" <= ch <= "\x9f":
                    continue  # C1 controls inside decoded text: ignored
                else:
                    self._put_char(ch, _wide(ch))
        self.last = s[-1]

    def _wrap(self) -> None:
        cur = self.cur
        cur.wrap = False
        cur.x = 0
        self._index()

    def _put_ascii(self, s: str) -> None:
        cur = self.cur
        cols = self.cols
        autowrap = self.modes.get(7, True)
        i, n = 0, len(s)
        while i < n:
            if cur.wrap:
                if autowrap:
                    self._wrap()
                else:
                    cur.wrap = False
            x = cur.x
            chunk = s[i : i + cols - x]
            k = len(chunk)
            chars = self.buf.chars[cur.y]
            pens = self.buf.pens[cur.y]
            if self.insert:
                if x > 0 and chars[x] == "":  # inserting inside a wide character
                    chars[x - 1] = chars[x] = " "
                chars[x:x] = chunk
                pens[x:x] = [cur.pen] * k
                del chars[cols:], pens[cols:]
                _fix_cut(chars)
            else:
                if x > 0 and chars[x] == "":
                    chars[x - 1] = " "  # half of a wide character is overwritten
                end = x + k
                if end < cols and chars[end] == "":
                    chars[end] = " "
                chars[x:end] = chunk
                pens[x:end] = [cur.pen] * k
            i += k
            if x + k >= cols:
                cur.x = cols - 1
                if autowrap:
                    cur.wrap = True
                elif i < n:  # no autowrap: the rest overwrites the last column
                    chars[cols - 1] = s[n - 1]
                    pens[cols - 1] = cur.pen
                    return
            else:
                cur.x = x + k

    def _put_char(self, ch: str, width: int) -> None:
        cur = self.cur
        cols = self.cols
        if width == 0:  # combining: joins the character before the cursor
            x = cur.x if cur.wrap else cur.x - 1
            chars = self.buf.chars[cur.y]
            while x > 0 and chars[x] == "":
                x -= 1
            if x >= 0:
                chars[x] += ch
            return
        if width > cols:
            return
        autowrap = self.modes.get(7, True)
        if cur.wrap or cur.x + width > cols:
            if autowrap:
                if cur.x + width > cols and not cur.wrap:
                    self.buf.chars[cur.y][cur.x] = " "  # a wide char does not fit: wrap first
                self._wrap()
            else:
                cur.wrap = False
                cur.x = cols - width
        x = cur.x
        chars = self.buf.chars[cur.y]
        pens = self.buf.pens[cur.y]
        if self.insert:
            if x > 0 and chars[x] == "":
                chars[x - 1] = chars[x] = " "
            chars[x:x] = [ch] + [""] * (width - 1)
            pens[x:x] = [cur.pen] * width
            del chars[cols:], pens[cols:]
            _fix_cut(chars)
        else:
            if x > 0 and chars[x] == "":
                chars[x - 1] = " "
            end = x + width
            if end < cols and chars[end] == "":
                chars[end] = " "
            chars[x:end] = [ch] + [""] * (width - 1)
            pens[x:end] = [cur.pen] * width
        if x + width >= cols:
            cur.x = cols - 1
            cur.wrap = autowrap
        else:
            cur.x = x + width

    # --- controls ---------------------------------------------------------------------

    def _control(self, c: str) -> None:
        cur = self.cur
        if c == "\r":
            cur.x = 0
            cur.wrap = False
        elif c in "\n\x0b\x0c":
            self._index()
            if self.newline:
                cur.x = 0
        elif c == "\x08":
            if cur.wrap:
                cur.wrap = False
            elif cur.x > 0:
                cur.x -= 1
        elif c == "\t":
            self._tab(1)
        elif c == "\x0e":
            cur.shift = 1
        elif c == "\x0f":
            cur.shift = 0
        # BEL, NUL, ENQ, CAN, SUB, DEL and C1 change nothing on the screen.

    def _tab(self, n: int) -> None:
        cur = self.cur
        cur.wrap = False
        for _ in range(n):
            stops = [t for t in self.tabs if t > cur.x]
            cur.x = min(stops) if stops else self.cols - 1

    def _back_tab(self, n: int) -> None:
        cur = self.cur
        cur.wrap = False
        for _ in range(n):
            stops = [t for t in self.tabs if t < cur.x]
            cur.x = max(stops) if stops else 0

    def _index(self) -> None:
        """LF/IND: down one line, scrolling the region at its bottom."""
        cur = self.cur
        cur.wrap = False
        if cur.y == self.bottom:
            self._scroll_up(1)
        elif cur.y < self.rows - 1:
            cur.y += 1

    def _reverse_index(self) -> None:
        cur = self.cur
        cur.wrap = False
        if cur.y == self.top:
            self._scroll_down(1)
        elif cur.y > 0:
            cur.y -= 1

    def _scroll_up(self, n: int, top: int | None = None) -> None:
        top = self.top if top is None else top
        bottom = self.bottom
        n = min(n, bottom - top + 1)
        if n <= 0:
            return
        buf = self.buf
        del buf.chars[top : top + n], buf.pens[top : top + n]
        for _ in range(n):
            chars, pens = self._blank_row()
            buf.chars.insert(bottom - n + 1, chars)
            buf.pens.insert(bottom - n + 1, pens)

    def _scroll_down(self, n: int, top: int | None = None) -> None:
        top = self.top if top is None else top
        bottom = self.bottom
        n = min(n, bottom - top + 1)
        if n <= 0:
            return
        buf = self.buf
        del buf.chars[bottom - n + 1 : bottom + 1], buf.pens[bottom - n + 1 : bottom + 1]
        for _ in range(n):
            chars, pens = self._blank_row()
            buf.chars.insert(top, chars)
            buf.pens.insert(top, pens)

    def _erase(self, y: int, x0: int, x1: int) -> None:
        """Blank cells x0 <= x < x1 of row y (and the other half of a cut wide char)."""
        chars = self.buf.chars[y]
        pens = self.buf.pens[y]
        x0, x1 = max(0, x0), min(self.cols, x1)
        if x0 >= x1:
            return
        if x0 > 0 and chars[x0] == "":
            chars[x0 - 1] = " "
        if x1 < self.cols and chars[x1] == "":
            chars[x1] = " "
        blank = self._blank_pen()
        chars[x0:x1] = [" "] * (x1 - x0)
        pens[x0:x1] = [blank] * (x1 - x0)

    # --- escape sequences -------------------------------------------------------------

    def _esc(self, inter: str, final: str) -> None:
        cur = self.cur
        if inter in ("(", ")"):
            cur.charsets[0 if inter == "(" else 1] = "0" if final == "0" else "B"
        elif inter == "#":
            if final == "8":  # DECALN: fill with E
                for y in range(self.rows):
                    self.buf.chars[y] = ["E"] * self.cols
                    self.buf.pens[y] = [""] * self.cols
        elif inter:
            return
        elif final == "7":
            self.buf.saved = cur.copy()
        elif final == "8":
            self._restore_cursor()
        elif final == "D":
            self._index()
        elif final == "E":
            self._index()
            cur.x = 0
        elif final == "M":
            self._reverse_index()
        elif final == "H":
            self.tabs.add(cur.x)
        elif final == "c":
            title = self.title
            self._reset()
            self.title = title
        elif final == "=":
            self.keypad = True
        elif final == ">":
            self.keypad = False

    def _restore_cursor(self) -> None:
        saved = self.buf.saved
        cur = saved.copy() if saved is not None else _Cursor()
        cur.x = min(cur.x, self.cols - 1)
        cur.y = min(cur.y, self.rows - 1)
        self.cur = cur

    def _osc(self, body: str) -> None:
        code, _, text = body.partition(";")
        if code in ("0", "2"):
            self.title = text[:256]

    def _sgr(self, params: str) -> None:
        """SGR: the new pen, remembered for the next time the same change comes."""
        key = (self.cur.pen, params)
        pen = self._sgr_memo.get(key)
        if pen is None:
            state = _Pen.parse(self.cur.pen)
            state.apply(params.split(";") if params else ["0"])
            pen = state.text()
            if len(self._sgr_memo) >= MEMO_MAX:
                self._sgr_memo.clear()
            self._sgr_memo[key] = pen
        self.cur.pen = pen

    def _csi(self, params: str, inter: str, final: str) -> None:
        private = params[:1] if params[:1] in "?>=<" else ""
        body = params[len(private) :]
        fields = body.split(";") if body else []
        if inter:
            if inter == "!" and final == "p":  # DECSTR: soft reset
                self._soft_reset()
            return
        if private == "?":
            if final in "hl":
                for f in fields:
                    if f.isdigit():
                        self._dec_mode(int(f), final == "h")
            elif final == "J":
                self._csi_plain("J", fields)
            elif final == "K":
                self._csi_plain("K", fields)
            return
        if private == ">":
            if final == "c":
                self.replies.append(b"\x1b[>0;10;1c")
            return
        if private:
            return
        self._csi_plain(final, fields)

    def _csi_plain(self, final: str, fields: list[str]) -> None:
        cur = self.cur

        def arg(i: int, default: int = 1) -> int:
            if i < len(fields) and fields[i].isdigit():
                v = int(fields[i].split(":")[0])
                return v if v or not default else default
            return default

        if final == "m":
            self._sgr(";".join(fields))
            return
        if final in _MOVES:
            cur.wrap = False
        rows, cols = self.rows, self.cols
        if final in "A":
            lo = self.top if cur.y >= self.top else 0
            cur.y = max(lo, cur.y - arg(0))
        elif final in "Be":
            hi = self.bottom if cur.y <= self.bottom else rows - 1
            cur.y = min(hi, cur.y + arg(0))
        elif final in "Ca":
            cur.x = min(cols - 1, cur.x + arg(0))
        elif final == "D":
            cur.x = max(0, cur.x - arg(0))
        elif final == "E":
            cur.y = min(self.bottom if cur.y <= self.bottom else rows - 1, cur.y + arg(0))
            cur.x = 0
        elif final == "F":
            cur.y = max(self.top if cur.y >= self.top else 0, cur.y - arg(0))
            cur.x = 0
        elif final in "G`":
            cur.x = min(cols - 1, arg(0) - 1)
        elif final in "Hf":
            self._move_to(arg(0) - 1, arg(1) - 1)
        elif final == "d":
            self._move_to(arg(0) - 1, cur.x, keep_x=True)
        elif final == "J":
            mode = arg(0, 0)
            if mode == 0:
                self._erase(cur.y, cur.x, cols)
                for y in range(cur.y + 1, rows):
                    self._erase(y, 0, cols)
            elif mode == 1:
                for y in range(cur.y):
                    self._erase(y, 0, cols)
                self._erase(cur.y, 0, cur.x + 1)
            elif mode == 2:
                for y in range(rows):
                    self._erase(y, 0, cols)
        elif final == "K":
            mode = arg(0, 0)
            if mode == 0:
                self._erase(cur.y, cur.x, cols)
            elif mode == 1:
                self._erase(cur.y, 0, cur.x + 1)
            elif mode == 2:
                self._erase(cur.y, 0, cols)
        elif final == "L":
            if self.top <= cur.y <= self.bottom:
                self._scroll_down(arg(0), top=cur.y)
                cur.x = 0
        elif final == "M":
            if self.top <= cur.y <= self.bottom:
                self._scroll_up(arg(0), top=cur.y)
                cur.x = 0
        elif final == "@":
            self._insert_blanks(arg(0))
        elif final == "P":
            self._delete_chars(arg(0))
        elif final == "X":
            self._erase(cur.y, cur.x, cur.x + arg(0))
        elif final == "S":
            self._scroll_up(arg(0))
        elif final == "T":
            self._scroll_down(arg(0))
        elif final == "I":
            self._tab(arg(0))
        elif final == "Z":
            self._back_tab(arg(0))
        elif final == "b":
            last = self.last
            if last.isprintable():
                self._print(last * min(arg(0), rows * cols))
        elif final == "g":
            mode = arg(0, 0)
            if mode == 0:
                self.tabs.discard(cur.x)
            elif mode == 3:
                self.tabs.clear()
        elif final == "r":
            top = arg(0) - 1
            bottom = (arg(1, rows) or rows) - 1
            bottom = min(bottom, rows - 1)
            if top < bottom:
                self.top, self.bottom = top, bottom
                self._move_to(0, 0)
        elif final == "s":
            self.buf.saved = cur.copy()
        elif final == "u":
            self._restore_cursor()
        elif final in "hl":
            for f in fields:
                if f == "4":
                    self.insert = final == "h"
                elif f == "20":
                    self.newline = final == "h"
        elif final == "n":
            mode = arg(0, 0)
            if mode == 5:
                self.replies.append(b"\x1b[0n")
            elif mode == 6:
                y = cur.y - self.top if cur.origin else cur.y
                self.replies.append(f"\x1b[{y + 1};{cur.x + 1}R".encode())
        elif final == "c" and arg(0, 0) == 0:
            self.replies.append(b"\x1b[?62;22c")

    def _move_to(self, y: int, x: int, keep_x: bool = False) -> None:
        cur = self.cur
        cur.wrap = False
        if cur.origin:
            y = min(self.bottom, max(self.top, y + self.top))
        else:
            y = min(self.rows - 1, max(0, y))
        cur.y = y
        if not keep_x:
            cur.x = min(self.cols - 1, max(0, x))

    def _insert_blanks(self, n: int) -> None:
        cur = self.cur
        chars = self.buf.chars[cur.y]
        pens = self.buf.pens[cur.y]
        n = min(n, self.cols - cur.x)
        if cur.x > 0 and chars[cur.x] == "":
            chars[cur.x - 1] = chars[cur.x] = " "
        chars[cur.x : cur.x] = [" "] * n
        pens[cur.x : cur.x] = [self._blank_pen()] * n
        del chars[self.cols :], pens[self.cols :]
        _fix_cut(chars)

    def _delete_chars(self, n: int) -> None:
        cur = self.cur
        chars = self.buf.chars[cur.y]
        pens = self.buf.pens[cur.y]
        n = min(n, self.cols - cur.x)
        if cur.x > 0 and chars[cur.x] == "":
            chars[cur.x - 1] = " "
        del chars[cur.x : cur.x + n], pens[cur.x : cur.x + n]
        if cur.x < len(chars) and chars[cur.x] == "":
            chars[cur.x] = " "
        chars.extend([" "] * n)
        pens.extend([self._blank_pen()] * n)

    def _soft_reset(self) -> None:
        self.modes = dict(DEFAULT_MODES)
        self.insert = False
        self.keypad = False
        self.top, self.bottom = 0, self.rows - 1
        self.cur.pen = ""
        self.cur.origin = False
        self.cur.charsets = ["B", "B"]
        self.cur.shift = 0
        self.buf.saved = None

    def _dec_mode(self, mode: int, on: bool) -> None:
        if mode in ALT_SCREEN_MODES:
            self._alt_screen(mode, on)
        elif mode == 1048:
            if on:
                self.buf.saved = self.cur.copy()
            else:
                self._restore_cursor()
        elif mode == 6:
            self.cur.origin = on
            self._move_to(0, 0)
        else:
            self.modes[mode] = on
            if mode == 7 and not on:
                self.cur.wrap = False

    def _alt_screen(self, mode: int, on: bool) -> None:
        if on == self.in_alt:
            return
        if on:
            if mode == 1049:
                self.alt_saved = self.cur.copy()
            self.buf = self.alt
            self.alt_mode = mode
            if mode == 1049:
                self._clear(self.alt)
        else:
            if mode == 1047 or self.alt_mode == 1049:
                self._clear(self.alt)
            self.buf = self.main
            if self.alt_mode == 1049 and self.alt_saved is not None:
                self.cur = self.alt_saved
                self.cur.x = min(self.cur.x, self.cols - 1)
                self.cur.y = min(self.cur.y, self.rows - 1)
            self.alt_mode = 0

    def _clear(self, buf: _Buffer) -> None:
        blank = self._blank_pen()
        for y in range(self.rows):
            buf.chars[y] = [" "] * self.cols
            buf.pens[y] = [blank] * self.cols

    # --- window size ----------------------------------------------------------------

    def resize(self, cols: int, rows: int) -> None:
        """A new window size: rows go from the bottom while they are below the
        cursor, then from the top; columns are cut or added on the right."""
        cols = max(1, min(cols, MAX_COLS))
        rows = max(1, min(rows, MAX_ROWS))
        if (cols, rows) == (self.cols, self.rows):
            return
        cur = self.cur
        for buf in (self.main, self.alt):
            current = buf is self.buf
            for chars, pens in zip(buf.chars, buf.pens, strict=True):
                if cols < self.cols:
                    del chars[cols:], pens[cols:]
                    _fix_cut(chars)
                else:
                    chars.extend([" "] * (cols - self.cols))
                    pens.extend([""] * (cols - self.cols))
            if rows < self.rows:
                excess = self.rows - rows
                below = self.rows - 1 - cur.y if current else excess
                from_bottom = min(excess, max(0, below))
                from_top = excess - from_bottom
                del buf.chars[self.rows - from_bottom :], buf.pens[self.rows - from_bottom :]
                del buf.chars[:from_top], buf.pens[:from_top]
                if current:
                    cur.y -= from_top
            else:
                for _ in range(rows - self.rows):
                    buf.chars.append([" "] * cols)
                    buf.pens.append([""] * cols)
        old_cols = self.cols
        self.cols, self.rows = cols, rows
        cur.x = min(cur.x, cols - 1)
        cur.y = min(max(cur.y, 0), rows - 1)
        cur.wrap = False
        self.top, self.bottom = 0, rows - 1
        self.tabs = {t for t in self.tabs if t < cols} | set(
            range(old_cols + 8 - old_cols % 8, cols, 8)
        )
        for saved in (self.main.saved, self.alt.saved, self.alt_saved):
            if saved is not None:
                saved.x = min(saved.x, cols - 1)
                saved.y = min(saved.y, rows - 1)

    # --- output -----------------------------------------------------------------------

    def text(self) -> str:
        """The screen as plain text: one line per row, trailing blanks dropped."""
        lines = ["".join(row).rstrip() for row in self.buf.chars]
        while lines and not lines[-1]:
            lines.pop()
        return "".join(line + "\n" for line in lines)

    def render(self) -> bytes:
        """What draws this screen on a fresh xterm-like terminal of the same size."""
        out = ["\x1b[0m\x1b[r\x1b[?6l\x1b[?7h\x1b[4l\x1b(B\x1b)B\x0f\x1b[H\x1b[2J"]
        self._draw(self.main, out)
        if self.in_alt:
            saved = self.alt_saved if self.alt_mode == 1049 else None
            if saved is not None:
                out.append(f"\x1b[{saved.y + 1};{saved.x + 1}H")
                out.append(_sgr(saved.pen))
            out.append(f"\x1b[?{self.alt_mode}h\x1b[0m\x1b[H\x1b[2J")
            self._draw(self.alt, out)
        if self.tabs != self._default_tabs(self.cols):
            out.append("\x1b[3g")
            out.extend(f"\x1b[1;{t + 1}H\x1bH" for t in sorted(self.tabs))
        saved = self.buf.saved
        if saved is not None:
            out.append(f"\x1b[{saved.y + 1};{saved.x + 1}H{_sgr(saved.pen)}")
            out.append(_charsets(saved) + "\x1b7")
        if (self.top, self.bottom) != (0, self.rows - 1):
            out.append(f"\x1b[{self.top + 1};{self.bottom + 1}r")
        for mode in REPLAYED_MODES:
            on = self.modes.get(mode, DEFAULT_MODES.get(mode, False))
            if on != DEFAULT_MODES.get(mode, False):
                out.append(f"\x1b[?{mode}{'h' if on else 'l'}")
        if self.insert:
            out.append("\x1b[4h")
        if self.newline:
            out.append("\x1b[20h")
        if self.keypad:
            out.append("\x1b=")
        if self.title:
            out.append(f"\x1b]2;{self.title}\x07")
        cur = self.cur
        if cur.origin:
            out.append("\x1b[?6h")
        y = cur.y - self.top if cur.origin else cur.y
        if cur.wrap:
            # Print the last cell again: that puts the terminal in the same pending wrap.
            x = cur.x - 1 if cur.x > 0 and self.buf.chars[cur.y][cur.x] == "" else cur.x
            ch = self.buf.chars[cur.y][x] or " "
            out.append(f"\x1b[{y + 1};{x + 1}H{_sgr(self.buf.pens[cur.y][x])}{ch}")
        else:
            out.append(f"\x1b[{y + 1};{cur.x + 1}H")
        out.append(_charsets(cur))
        out.append(_sgr(cur.pen))
        return "".join(out).encode("utf-8", "replace")

    def _draw(self, buf: _Buffer, out: list[str]) -> None:
        for y in range(self.rows):
            chars, pens = buf.chars[y], buf.pens[y]
            end = self.cols
            while end > 0 and chars[end - 1] == " " and not pens[end - 1]:
                end -= 1
            if end == 0:
                continue
            out.append(f"\x1b[{y + 1};1H")
            pen = ""
            for x in range(end):
                ch = chars[x]
                if ch == "":
                    continue  # the right half of a wide character
                if pens[x] != pen:
                    pen = pens[x]
                    out.append(_sgr(pen))
                out.append(ch)
            if pen:
                out.append("\x1b[0m")


def _fix_cut(chars: list[str]) -> None:
    """A row cut at its right edge: a wide character that lost its right half goes."""
    last = chars[-1] if chars else " "
    if last and not last.isascii() and _wide(last[0]) == 2:
        chars[-1] = " "


def _sgr(pen: str) -> str:
    return f"\x1b[0;{pen}m" if pen else "\x1b[0m"


def _charsets(cur: _Cursor) -> str:
    g0, g1 = cur.charsets
    return f"\x1b({g0}\x1b){g1}" + ("\x0e" if cur.shift else "\x0f")
