"""RFC 29 hostlists: ``node[0-3,7],login1`` <-> a list of host names.

Flux reports the host of every rank as one hostlist (the broker attribute
``hostlist``, in rank order).  A hostlist is a comma-separated list of
entries; an entry may hold one bracketed range set, an RFC 22 idset whose
numbers keep their zero padding (``node[01-03]`` is node01, node02, node03).
Names repeat when several ranks share a host (``vm,vm,vm``).

Sans-IO; imports only the error type.
"""

from __future__ import annotations

import errno

from sdexec.base.errors import SdexecError


def _split_top(text: str) -> list[str]:
    """Split at commas that are not inside brackets."""
    entries: list[str] = []
    depth = 0
    start = 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
            if depth > 1:
                raise SdexecError(errno.EINVAL, f"hostlist {text!r}: nested brackets")
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise SdexecError(errno.EINVAL, f"hostlist {text!r}: unbalanced brackets")
        elif ch == "," and depth == 0:
            entries.append(text[start:i])
            start = i + 1
    if depth:
        raise SdexecError(errno.EINVAL, f"hostlist {text!r}: unbalanced brackets")
    entries.append(text[start:])
    return entries


def _expand(entry: str, text: str) -> list[str]:
    if "[" not in entry:
        return [entry]
    prefix, _, rest = entry.partition("[")
    body, _, suffix = rest.partition("]")
    names: list[str] = []
    for part in body.split(","):
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise SdexecError(errno.EINVAL, f"hostlist {text!r}: bad range {part!r}")
        width = len(lo)
        first, last = int(lo), int(hi) if sep else int(lo)
        if last < first:
            raise SdexecError(errno.EINVAL, f"hostlist {text!r}: bad range {part!r}")
        names.extend(f"{prefix}{n:0{width}d}{suffix}" for n in range(first, last + 1))
    return names


def decode(text: str) -> list[str]:
    """The host names of a hostlist, in order (``""`` is empty)."""
    if not text.strip():
        return []
    names: list[str] = []
    for entry in _split_top(text.strip()):
        if not entry:
            raise SdexecError(errno.EINVAL, f"hostlist {text!r}: empty entry")
        names.extend(_expand(entry, text))
    return names
