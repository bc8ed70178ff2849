"""Where a many-rank command finds its ranks: a hosts file, or the Flux instance.

``--hosts FILE`` is a hosts file (:mod:`sdexec.cluster.hosts`).  Without it,
inside a Flux instance (``$FLUX_URI`` set) the ranks are the instance's own
(:mod:`sdexec.cluster.fluxranks`), reached through the local broker with no
hosts file at all; outside Flux, ``$SDEXEC_HOSTS`` names the hosts file, and
without one, on a node of a Flux system instance, that instance's ranks.
"""

from __future__ import annotations

import os

from sdexec.base.uri import system_instance_uri
from sdexec.cluster import hosts
from sdexec.cluster.fluxranks import flux_hosts


def instance(path: str | None = None) -> hosts.Hosts:
    """The ranks ``-r``/``-x`` select from (SdexecError if there are none)."""
    uri = os.environ.get(hosts.FLUX_URI_ENV)
    if not path and not uri and not os.environ.get(hosts.HOSTS_ENV):
        uri = system_instance_uri()
    if not path and uri:
        return hosts.Hosts(flux_hosts(uri))
    return hosts.load(path)


def one_rank(path: str | None, rank: int) -> hosts.Host:
    """The server of ``rank`` (``-r RANK`` of attach and logs)."""
    return instance(path).select(str(rank))[0]
