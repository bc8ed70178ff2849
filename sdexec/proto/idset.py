"""RFC 22 idsets: sets of non-negative integer ids as compact strings.

Theory of operation
-------------------
RFC 22 ("Implementation") writes a set of unique, non-negative ids in
ascending order, in decimal without leading zeroes, separated by commas, with
runs of consecutive ids optionally compressed into ``lo-hi`` ranges and the
whole optionally in square brackets: ``1-3,5-6,42`` or ``[1-3,5-6,42]``.

:func:`encode` always compresses runs of two or more ids (``0-1``, as
flux-core's ``IDSET_FLAG_RANGE`` does) and adds brackets only on request and
only around more than one id.  :func:`decode` accepts exactly what the RFC
allows, the way flux-core's current decoder does: no whitespace, no leading
zeroes, elements strictly ascending, ``lo < hi`` in a range, brackets both or
neither.  The special word ``all`` used by some commands is not an idset and is
left to the caller.

Ids are bounded like flux-core's (``unsigned int``, with ``UINT_MAX`` reserved
as the invalid id), and :func:`decode` refuses to expand a string into more
than ``max_count`` ids, so a short string from a peer (``0-4000000000``) cannot
exhaust memory.

Sans-IO and dependency-free; errors are ``SdexecError(EINVAL)``.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Iterable

from sdexec.base.errors import SdexecError

#: Largest id an idset may hold (flux-core: UINT_MAX - 1; UINT_MAX is "invalid").
MAX_ID = 2**32 - 2
#: Default bound on the number of ids :func:`decode` will produce.
DEFAULT_MAX_COUNT = 1 << 20

# One id: "0" or a decimal without leading zero.
_ID = r"(?:0|[1-9][0-9]*)"
_MAX_ID_DIGITS = len(str(MAX_ID))
_ELEMENT = re.compile(rf"({_ID})(?:-({_ID}))?")


def _show(text: str, limit: int = 60) -> str:
    """A string quoted for an error message, cut if very long."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _runs(ids: Iterable[int]) -> list[tuple[int, int]]:
    """Validated ids, sorted into maximal ``(lo, hi)`` runs of consecutive ids."""
    members = list(ids)
    for i in members:
        if isinstance(i, bool) or not isinstance(i, int):
            raise SdexecError(errno.EINVAL, f"idset member {i!r} is not an integer")
        if i < 0 or i > MAX_ID:
            raise SdexecError(errno.EINVAL, f"idset member {i} is out of range 0-{MAX_ID}")
    runs: list[tuple[int, int]] = []
    for i in sorted(set(members)):
        if runs and runs[-1][1] + 1 == i:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


def encode(ids: Iterable[int], *, brackets: bool = False) -> str:
    """The RFC 22 string for ``ids``: sorted, duplicates dropped, runs as ``lo-hi``.

    With ``brackets=True`` the string is enclosed in ``[]`` when the set has
    more than one id (``[0-3,7]``, but ``5`` and the empty string stay bare).
    Raises EINVAL for a member that is not an integer in ``0..MAX_ID``.
    """
    runs = _runs(ids)
    text = ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in runs)
    if brackets and sum(hi - lo + 1 for lo, hi in runs) > 1:
        text = f"[{text}]"
    return text


def decode(text: str, *, max_count: int = DEFAULT_MAX_COUNT) -> set[int]:
    """The set of ids an RFC 22 string stands for (``""`` and ``"[]"`` are empty).

    Raises EINVAL for anything the RFC does not allow, and for a string that
    stands for more than ``max_count`` ids.
    """
    body = text
    if body.startswith("[") or body.endswith("]"):
        if not (body.startswith("[") and body.endswith("]")) or len(body) < 2:
            raise SdexecError(errno.EINVAL, f"idset {_show(text)} has unbalanced brackets")
        body = body[1:-1]
    ids: set[int] = set()
    if not body:
        return ids
    last = -1
    for element in body.split(","):
        m = _ELEMENT.fullmatch(element)
        if m is None:
            raise SdexecError(errno.EINVAL, f"idset {_show(text)}: invalid element {element!r}")
        lo_text, hi_text = m.groups()
        for id_text in (lo_text, hi_text or lo_text):
            # Check the length first: int() of a huge digit string is slow or refused.
            if len(id_text) > _MAX_ID_DIGITS or int(id_text) > MAX_ID:
                raise SdexecError(errno.EINVAL, f"idset {_show(text)}: id out of range 0-{MAX_ID}")
        lo = int(lo_text)
        hi = lo if hi_text is None else int(hi_text)
        if hi_text is not None and hi <= lo:
            raise SdexecError(
                errno.EINVAL, f"idset {_show(text)}: range {element!r} is not ascending"
            )
        if lo <= last:
            raise SdexecError(errno.EINVAL, f"idset {_show(text)}: ids are not in ascending order")
        if len(ids) + (hi - lo + 1) > max_count:
            raise SdexecError(errno.EINVAL, f"idset {_show(text)} has more than {max_count} ids")
        ids.update(range(lo, hi + 1))
        last = hi
    return ids
