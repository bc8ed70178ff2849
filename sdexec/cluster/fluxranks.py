"""A Flux instance's ranks as sdexec hosts: one broker URI, a nodeid each.

Inside a Flux instance (``flux start``, ``flux proxy``, an allocation) the
local broker, ``$FLUX_URI``, reaches the ``sdexec`` service of every rank:
Flux's overlay routes a request by its RFC 3 ``nodeid``.  So the instance's
size and host names (the broker attributes ``size`` and ``hostlist``, asked
for once with ``attr.get``) are all a many-rank command needs: rank N is
``Host(N, FLUX_URI, hostlist[N], nodeid=N)``.
"""

from __future__ import annotations

import errno

from sdexec.base.errors import SdexecError
from sdexec.client.blocking import BlockingHandle
from sdexec.cluster.hosts import Host
from sdexec.proto import hostlist


def flux_hosts(uri: str) -> list[Host]:
    """Every rank of the Flux instance whose broker ``uri`` names."""
    with BlockingHandle.connect(uri) as handle:
        size_text = _attr(handle, "size")
        try:
            names = hostlist.decode(_attr(handle, "hostlist"))
        except SdexecError:
            names = []  # no (or an unreadable) hostlist: ranks stay unnamed
    try:
        size = int(size_text)
    except ValueError:
        raise SdexecError(errno.EPROTO, f"{uri}: the broker's size is {size_text!r}") from None
    return [
        Host(rank, uri, names[rank] if rank < len(names) else f"rank{rank}", nodeid=rank)
        for rank in range(size)
    ]


def _attr(handle: BlockingHandle, name: str) -> str:
    try:
        value = handle.rpc("attr.get", {"name": name}).get("value")
    except SdexecError as exc:
        if exc.errno == errno.ENOENT:
            return ""
        raise
    return str(value) if value is not None else ""
