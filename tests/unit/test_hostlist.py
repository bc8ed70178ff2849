"""RFC 29 hostlists (sdexec.proto.hostlist)."""

from __future__ import annotations

import pytest

from sdexec.base.errors import SdexecError
from sdexec.proto import hostlist


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("", []),
        ("vm,vm,vm", ["vm", "vm", "vm"]),
        ("node[0-2]", ["node0", "node1", "node2"]),
        ("node[01-03,07]", ["node01", "node02", "node03", "node07"]),
        ("login1,node[9-10]", ["login1", "node9", "node10"]),
        ("rack[1-2]-a", ["rack1-a", "rack2-a"]),
    ],
)
def test_decode(text: str, names: list[str]) -> None:
    assert hostlist.decode(text) == names


@pytest.mark.parametrize("text", ["node[1-", "node]1[", "node[2-1]", "a,,b", "n[1[2]]", "n[x]"])
def test_malformed_hostlist_is_einval(text: str) -> None:
    with pytest.raises(SdexecError):
        hostlist.decode(text)
