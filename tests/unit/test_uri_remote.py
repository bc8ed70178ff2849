"""Remote URIs: ssh:// and tcp:// parsing, resolver entry points, the ssh command line."""

from __future__ import annotations

import errno
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sdexec.base import uri
from sdexec.base.errors import SdexecError
from sdexec.transport.ssh import ssh_argv


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("ssh://host/run/s", (None, "host", None, "/run/s")),
        ("ssh://u@host:2222/run/s", ("u", "host", 2222, "/run/s")),
        ("ssh://[::1]:22/x", (None, "::1", 22, "/x")),
        ("ssh://a@b@host/x", ("a@b", "host", None, "/x")),
    ],
)
def test_parse_ssh(text: str, parsed: tuple[object, ...]) -> None:
    assert uri.parse_ssh(text) == parsed


@pytest.mark.parametrize(
    "text", ["ssh://host", "ssh://host/", "ssh:///x", "ssh://h:0/x", "ssh://@h/x"]
)
def test_malformed_ssh_uris_do_not_resolve(text: str) -> None:
    with pytest.raises(SdexecError) as info:
        uri.resolve(text)
    assert info.value.errno == errno.EINVAL
    assert info.value.message.startswith(f"Unable to resolve {text} to a URI")


def test_parse_tcp() -> None:
    assert uri.parse_tcp("tcp://10.0.0.1:5555") == ("10.0.0.1", 5555)
    assert uri.parse_tcp("tcp://[::1]:7") == ("::1", 7)


@pytest.mark.parametrize("text", ["tcp://host", "tcp://:5", "tcp://h:70000", "tcp://h:5/x"])
def test_malformed_tcp_uris_do_not_resolve(text: str) -> None:
    with pytest.raises(SdexecError) as info:
        uri.resolve(text)
    assert info.value.errno == errno.EINVAL


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A real distribution on sys.path with an ``sdexec.uri_resolvers`` entry point."""
    dist = tmp_path / "sdexec_test_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: sdexec-test-plugin\nVersion: 1.0\n"
    )
    (dist / "entry_points.txt").write_text(
        "[sdexec.uri_resolvers]\njob = sdexec_test_plugin:resolve\nloop = sdexec_test_plugin:loop\n"
    )
    (tmp_path / "sdexec_test_plugin.py").write_text(
        "def resolve(target):\n    return '/run/jobs/' + target.split(':', 1)[1] + '/local'\n"
        "def loop(target):\n    return target\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("sdexec_test_plugin", None)


def test_entry_point_resolves_its_scheme(plugin: None) -> None:
    assert uri.resolve("job:42") == "local:///run/jobs/42/local"


def test_resolver_that_loops_is_eloop(plugin: None) -> None:
    with pytest.raises(SdexecError) as info:
        uri.resolve("loop:x")
    assert info.value.errno == errno.ELOOP


def test_scheme_without_resolver_is_unresolvable(plugin: None) -> None:
    with pytest.raises(SdexecError) as info:
        uri.resolve("nosuch:1")
    assert info.value.message == "Unable to resolve nosuch:1 to a URI"


def test_ssh_argv_runs_the_relay_for_the_path() -> None:
    argv = ssh_argv("ssh://alice@node1:2200/run/sdexec/local", {})
    assert argv == [
        "ssh",
        "-p",
        "2200",
        "-l",
        "alice",
        "--",
        "node1",
        "sdexec relay /run/sdexec/local",
    ]


def test_ssh_argv_uses_sdexec_ssh_and_rcmd() -> None:
    env = {"SDEXEC_SSH": "ssh -i 'my key'", "SDEXEC_SSH_RCMD": "/opt/bin/sdexec"}
    argv = ssh_argv("ssh://node1/s", env)
    assert argv == ["ssh", "-i", "my key", "--", "node1", "/opt/bin/sdexec relay /s"]


def test_ssh_argv_forwards_the_local_pythonpath() -> None:
    argv = ssh_argv("ssh://node1/s", {"PYTHONPATH": "/src dir"})
    assert argv[-1] == "env PYTHONPATH='/src dir' sdexec relay /s"


def test_ssh_argv_forwards_configured_paths_instead() -> None:
    env = {"PYTHONPATH": "/local", "SDEXEC_SSH_PYTHONPATH": "/remote", "SDEXEC_SSH_PATH": "/rb"}
    assert ssh_argv("ssh://node1/s", env)[-1] == "env PYTHONPATH=/remote PATH=/rb sdexec relay /s"


def test_empty_sdexec_ssh_pythonpath_forwards_nothing() -> None:
    env = {"PYTHONPATH": "/local", "SDEXEC_SSH_PYTHONPATH": ""}
    assert ssh_argv("ssh://node1/s", env)[-1] == "sdexec relay /s"


def test_ssh_argv_quotes_the_remote_path() -> None:
    assert ssh_argv("ssh://node1/a b", {})[-1] == "sdexec relay '/a b'"
