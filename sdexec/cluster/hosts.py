"""Hosts files: an sdexec *instance* as a list of server URIs, one per rank.

Theory of operation
-------------------
A site runs one ``sdexec serve`` per node.  To address many nodes at once, a
client is given a hosts file (``--hosts FILE``, else ``$SDEXEC_HOSTS``)::

    # URI                                  [HOSTNAME]
    local:///run/sdexec/local              node0
    ssh://root@node1/run/sdexec/local
    tcp://node2.cluster:7711               node2

One server per line: a URI (anything :func:`sdexec.base.uri.resolve` accepts) and
an optional hostname, separated by blanks, in either order (the URI is the
word with ``://`` or a leading ``/``).  Blank lines and ``#`` comments are
ignored; the *rank* of a server is the index of its line among the others,
counting from 0, so the first server is rank 0 whatever comments precede it.
Without a hostname, the host is taken from the URI (``ssh://user@HOST:22/``,
``tcp://HOST:PORT``) or, for ``local://``, is this machine's name.

Inside a Flux instance the ranks come from Flux instead
(:mod:`sdexec.cluster.ranks`).

Commands select ranks with RFC 22 idsets (``-r 0-3,7``, or ``all``) and
exclude some with ``-x``; :meth:`Hosts.select` does both and refuses a rank
the file does not have.

Sans-IO except :func:`load` (which reads the file); imports only the idset
codec, so the CLI can use it without a cost at start-up.
"""

from __future__ import annotations

import errno
import os

from sdexec.base import uri as _uri
from sdexec.base.errors import SdexecError
from sdexec.proto import idset

HOSTS_ENV = "SDEXEC_HOSTS"
FLUX_URI_ENV = "FLUX_URI"
ALL = "all"


#: RFC 3 nodeid "any": the server the URI reaches itself.
NODEID_ANY = 0xFFFFFFFF


class Host:
    """One server of an instance: its rank, URI and host name.

    ``nodeid``: the RFC 3 node to address through the URI (a Flux broker
    routes a request to the sdexec module of rank ``nodeid``); NODEID_ANY for
    a server of its own (a hosts file's line).
    """

    __slots__ = ("name", "nodeid", "rank", "uri")

    def __init__(self, rank: int, uri: str, name: str, nodeid: int = NODEID_ANY) -> None:
        self.rank = rank
        self.uri = uri
        self.name = name
        self.nodeid = nodeid

    def __repr__(self) -> str:
        extra = "" if self.nodeid == NODEID_ANY else f", nodeid={self.nodeid}"
        return f"Host({self.rank}, {self.uri!r}, {self.name!r}{extra})"

    def _key(self) -> tuple[int, str, str, int]:
        return (self.rank, self.uri, self.name, self.nodeid)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Host):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def describe(self) -> str:
        """``rank N (host)``, for messages."""
        return f"rank {self.rank} ({self.name})"


def host_of_uri(uri: str) -> str:
    """The host name a URI points at (this machine's name for ``local://``)."""
    for scheme in ("ssh://", "tcp://"):
        if uri.startswith(scheme):
            rest = uri[len(scheme) :].split("/", 1)[0]
            rest = rest.rsplit("@", 1)[-1]
            if rest.startswith("["):  # [IPv6]:port
                return rest[1:].split("]", 1)[0]
            return rest.split(":", 1)[0] or "localhost"
    return os.uname().nodename


def _is_uri(word: str) -> bool:
    return "://" in word or word.startswith("/") or word.startswith("pid:")


def parse(text: str, source: str = "hosts") -> list[Host]:
    """The servers a hosts file's text lists, in rank order.

    Raises SdexecError(EINVAL) naming ``source`` and the line for a line
    with no URI, more than two words, or a URI :func:`sdexec.base.uri.resolve`
    refuses; and for a file that lists no server at all.
    """
    hosts: list[Host] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        where = f"{source}:{lineno}"
        if len(words) > 2:
            raise SdexecError(errno.EINVAL, f"{where}: expected URI [HOSTNAME], got {line!r}")
        uris = [w for w in words if _is_uri(w)]
        if len(uris) != 1:
            raise SdexecError(errno.EINVAL, f"{where}: expected one URI, got {line!r}")
        try:
            resolved = _uri.resolve(uris[0])
        except SdexecError as exc:
            raise SdexecError(errno.EINVAL, f"{where}: {exc.message}") from None
        names = [w for w in words if w is not uris[0]]
        name = names[0] if names else host_of_uri(resolved)
        hosts.append(Host(len(hosts), resolved, name))
    if not hosts:
        raise SdexecError(errno.EINVAL, f"{source}: no server URI in the hosts file")
    return hosts


def load(path: str | None = None) -> Hosts:
    """The hosts file ``path``, else ``$SDEXEC_HOSTS`` (EINVAL if neither is given)."""
    if not path:
        path = os.environ.get(HOSTS_ENV) or None
    if path is None:
        raise SdexecError(
            errno.EINVAL,
            f"-r needs a hosts file or a Flux instance: give --hosts FILE, "
            f"set {HOSTS_ENV}, or run inside Flux ({FLUX_URI_ENV})",
        )
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        num = exc.errno or errno.EIO
        raise SdexecError(num, f"hosts file {path}: {os.strerror(num)}") from None
    return Hosts(parse(text, path))


class Hosts:
    """An instance: its servers by rank."""

    def __init__(self, hosts: list[Host]) -> None:
        self.hosts = hosts

    def __len__(self) -> int:
        return len(self.hosts)

    def __getitem__(self, rank: int) -> Host:
        return self.hosts[rank]

    def ranks(self, text: str) -> set[int]:
        """The ranks of an RFC 22 idset or ``all``; EINVAL for one not in the file."""
        if text == ALL:
            return set(range(len(self.hosts)))
        ranks = idset.decode(text)
        missing = sorted(r for r in ranks if r >= len(self.hosts))
        if missing:
            have = idset.encode(range(len(self.hosts)))
            raise SdexecError(
                errno.EINVAL,
                f"rank {idset.encode(missing)} is not in the hosts file (ranks {have})",
            )
        return ranks

    def select(self, ranks: str | None, exclude: str | None = None) -> list[Host]:
        """The servers of ``ranks`` (default ``all``) minus ``exclude``, in rank order.

        EINVAL for a bad idset, a rank the file does not have, or an empty
        selection.
        """
        chosen = self.ranks(ranks if ranks is not None else ALL)
        if exclude:
            chosen -= idset.decode(exclude)
        if not chosen:
            raise SdexecError(errno.EINVAL, "no rank is selected")
        return [self.hosts[r] for r in sorted(chosen)]
