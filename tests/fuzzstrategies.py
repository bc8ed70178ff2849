"""Hypothesis strategies shared by the handler fuzz tests (unit and integration).

Each test module keeps its own value strategies (what it can clean up after
differs: the unit test's fakes take anything, the real server's units must
end); what they share is how a request payload is put together from them.
"""

from __future__ import annotations

import errno
import json
from typing import Any

from hypothesis import strategies as st

# What a well-behaved handler may answer with.  ENODATA ends a stream.
ALLOWED_ERRNOS = frozenset(
    {
        errno.EPROTO,
        errno.EINVAL,
        errno.ENOENT,
        errno.ESRCH,
        errno.EEXIST,
        errno.EACCES,
        errno.EBUSY,
        errno.ENOSYS,
        errno.ENOTDIR,
        errno.ENODATA,
    }
)

# The payload keys each method reads: (present nearly always, present sometimes).
TOPIC_FIELDS: dict[str, tuple[list[str], list[str]]] = {
    "exec": (["cmd", "flags"], ["local_flags"]),
    "write": (["matchtag", "io"], []),
    "kill": (["signum"], ["pid", "label"]),
    "wait": ([], ["pid", "label"]),
    "attach": ([], ["pid", "label"]),
    "logs": ([], ["pid", "label", "tail", "follow"]),
    "list": ([], []),
    "disconnect": ([], []),
    "attr.get": (["name"], []),
}


def json_values(texts: st.SearchStrategy[str], scalars: st.SearchStrategy[Any], size: int) -> Any:
    """Any JSON value built from ``scalars``, with containers of up to ``size`` items."""
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=size) | st.dictionaries(texts, inner, max_size=size),
        max_leaves=2 * size + 2,
    )


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> Any:
    """Well-formed nine times out of ten, so requests get past the first check."""
    return st.integers(0, 9).flatmap(lambda i: bad if i == 9 else good)


@st.composite
def request_payloads(
    draw: st.DrawFn,
    method: str,
    fields: dict[str, st.SearchStrategy[Any]],
    anything: st.SearchStrategy[Any],
    texts: st.SearchStrategy[str],
    unknown_reads: list[str],
) -> bytes | None:
    """A request payload for ``method``: mostly an object with the keys the method
    reads (values from ``fields``, each required key dropped 1 time in 20, plus a
    stray key), sometimes other JSON (``anything``), raw bytes or none at all.
    A method not in :data:`TOPIC_FIELDS` may get each of ``unknown_reads``."""
    kind = draw(st.sampled_from(["object"] * 17 + ["json", "raw", "none"]))
    if kind == "none":
        return None
    if kind == "raw":
        return draw(st.binary(max_size=20))
    if kind == "json":
        return json.dumps(draw(anything)).encode() + b"\0"
    required, optional = TOPIC_FIELDS.get(method, ([], unknown_reads))
    keys = [k for k in required if draw(st.integers(0, 19)) != 19]
    keys += [k for k in optional if draw(st.booleans())]
    keys += draw(st.lists(st.sampled_from(sorted(fields)), max_size=1))
    obj: dict[str, Any] = {k: draw(fields[k]) for k in keys}
    obj.update(draw(st.dictionaries(texts, anything, max_size=1)))
    # Surrogates are escaped (ensure_ascii), so they reach the server as \udXXX.
    # Flux payloads end with NUL; a payload without one is accepted too.
    return json.dumps(obj).encode() + (b"\0" if draw(st.integers(0, 3)) != 3 else b"")
