"""Hosts files: parsing, ranks, host names, selection with -r and -x."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from sdexec.base.errors import SdexecError
from sdexec.cluster.hosts import Host, Hosts, host_of_uri, load, parse

TEXT = """\
# the test cluster
local:///run/sdexec/local node0

ssh://root@node1.example:2222/run/sdexec/local
tcp://node2:7711   # no name: taken from the URI
node3 /run/sdexec/other
"""


def test_rank_is_the_position_among_server_lines() -> None:
    assert [h.rank for h in parse(TEXT)] == [0, 1, 2, 3]


def test_uri_and_optional_hostname_in_either_order() -> None:
    hosts = parse(TEXT)
    assert hosts[0] == Host(0, "local:///run/sdexec/local", "node0")
    assert hosts[3] == Host(3, "local:///run/sdexec/other", "node3")


def test_hostname_defaults_to_the_uri_host() -> None:
    hosts = parse(TEXT)
    assert hosts[1].name == "node1.example"
    assert hosts[2].name == "node2"


def test_local_uri_without_name_is_this_machine() -> None:
    assert host_of_uri("local:///x") == os.uname().nodename


def test_ipv6_tcp_host() -> None:
    assert host_of_uri("tcp://[::1]:7711") == "::1"


def test_line_without_uri_is_refused_with_its_line_number() -> None:
    with pytest.raises(SdexecError, match=r"f:2: expected one URI") as e:
        parse("local:///a\nnode1\n", "f")
    assert e.value.errno == errno.EINVAL


def test_line_with_three_words_is_refused() -> None:
    with pytest.raises(SdexecError, match="expected URI"):
        parse("local:///a n extra\n")


def test_bad_uri_is_refused() -> None:
    with pytest.raises(SdexecError, match="f:1: "):
        parse("bogus://x n\n", "f")


def test_file_without_servers_is_refused() -> None:
    with pytest.raises(SdexecError, match="no server URI"):
        parse("# nothing\n\n")


def test_select_all() -> None:
    assert [h.rank for h in Hosts(parse(TEXT)).select("all")] == [0, 1, 2, 3]


def test_select_idset_minus_exclusions() -> None:
    assert [h.rank for h in Hosts(parse(TEXT)).select("1-3", "3")] == [1, 2]


def test_select_default_is_all() -> None:
    assert len(Hosts(parse(TEXT)).select(None, "0")) == 3


def test_rank_not_in_the_file_is_refused() -> None:
    with pytest.raises(SdexecError, match=r"rank 4,9 is not in the hosts file \(ranks 0-3\)"):
        Hosts(parse(TEXT)).select("0,4,9")


def test_empty_selection_is_refused() -> None:
    with pytest.raises(SdexecError, match="no rank is selected"):
        Hosts(parse(TEXT)).select("1", "1")


def test_bad_idset_is_refused() -> None:
    with pytest.raises(SdexecError) as e:
        Hosts(parse(TEXT)).select("3-1")
    assert e.value.errno == errno.EINVAL


def test_load_reads_sdexec_hosts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "hosts"
    f.write_text("/a/b n0\n")
    monkeypatch.setenv("SDEXEC_HOSTS", str(f))
    assert load(None)[0] == Host(0, "local:///a/b", "n0")


def test_load_without_file_or_variable_explains(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SDEXEC_HOSTS", raising=False)
    with pytest.raises(
        SdexecError, match="give --hosts FILE, set SDEXEC_HOSTS, or run inside Flux"
    ):
        load(None)


def test_load_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(SdexecError, match=r"hosts file .*nope: No such file") as e:
        load(str(tmp_path / "nope"))
    assert e.value.errno == errno.ENOENT


def test_inside_flux_the_ranks_are_the_instances(monkeypatch: pytest.MonkeyPatch) -> None:
    from sdexec.cluster import ranks

    monkeypatch.setenv("FLUX_URI", "local:///run/flux/local")
    monkeypatch.setattr(
        ranks,
        "flux_hosts",
        lambda uri: [Host(r, uri, f"node{r}", nodeid=r) for r in range(3)],
    )
    chosen = ranks.instance(None).select("1-2")
    assert [(h.rank, h.nodeid, h.name) for h in chosen] == [(1, 1, "node1"), (2, 2, "node2")]
    # An explicit hosts file still wins.
    with pytest.raises(SdexecError, match="No such file"):
        ranks.instance("/nonexistent/hosts")
