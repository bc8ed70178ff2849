"""Server URIs: defaults, resolution of what users type, and errors."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sdexec.base import uri
from sdexec.base.errors import SdexecError


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.delenv("SDEXEC_URI", raising=False)
    yield monkeypatch


def test_default_path_is_under_xdg_runtime_dir(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setattr(os, "getuid", lambda: 1000)
    clean_env.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert uri.default_local_path() == "/run/user/1000/sdexec/local"


def test_root_with_xdg_runtime_dir_uses_the_system_socket(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setattr(os, "getuid", lambda: 0)
    clean_env.setenv("XDG_RUNTIME_DIR", "/run/user/0")  # any root ssh login
    assert uri.default_local_path() == "/run/sdexec/local"


def test_default_path_for_root_is_under_run(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setattr(os, "getuid", lambda: 0)
    assert uri.default_local_path() == "/run/sdexec/local"


def test_default_path_for_other_users_is_under_tmp(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setattr(os, "getuid", lambda: 1234)
    assert uri.default_local_path() == "/tmp/sdexec-1234/local"


def test_default_uri_prefers_sdexec_uri(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setattr(os, "getuid", lambda: 7)
    clean_env.setenv("XDG_RUNTIME_DIR", "/run/user/7")
    assert uri.default_uri() == "local:///run/user/7/sdexec/local"
    clean_env.setenv("SDEXEC_URI", "local:///elsewhere")
    assert uri.default_uri() == "local:///elsewhere"


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("local:///run/x/local", "local:///run/x/local"),
        ("/run/x/local", "local:///run/x/local"),
        ("ssh://user@host:22/run/sdexec/local", "ssh://user@host:22/run/sdexec/local"),
        ("tcp://10.0.0.1:5000", "tcp://10.0.0.1:5000"),
    ],
)
def test_resolve_accepts_uris_and_absolute_paths(target: str, expected: str) -> None:
    assert uri.resolve(target) == expected


@pytest.mark.parametrize("target", ["relative/path", "http://x", "", "local://", "pid:abc"])
def test_resolve_rejects_anything_else_with_einval(target: str) -> None:
    with pytest.raises(SdexecError) as info:
        uri.resolve(target)
    assert info.value.errno == errno.EINVAL


def test_resolve_error_message_names_the_target() -> None:
    with pytest.raises(SdexecError) as info:
        uri.resolve("foo")
    assert info.value.message == "Unable to resolve foo to a URI"


@contextlib.contextmanager
def sleeper(env: dict[str, str]) -> Iterator[int]:
    """The pid of a process with environment ``env``, once it runs.

    (Right after exec(2) returns to the parent, the child's /proc environ
    can still read empty, so wait for it to say it is up.)
    """
    code = "import time; print(flush=True); time.sleep(30)"
    with subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        proc.stdout.readline()
        try:
            yield proc.pid
        finally:
            proc.kill()


def test_resolve_pid_reads_sdexec_uri_from_the_process_environment() -> None:
    with sleeper({"SDEXEC_URI": "/run/elsewhere/local"}) as pid:
        assert uri.resolve(f"pid:{pid}") == "local:///run/elsewhere/local"


def test_resolve_pid_without_sdexec_uri_is_an_error() -> None:
    with sleeper({}) as pid, pytest.raises(SdexecError) as info:
        uri.resolve(f"pid:{pid}")
    assert info.value.errno == errno.ENOENT
    assert "SDEXEC_URI" in info.value.message


def test_resolve_pid_of_a_missing_process_is_esrch() -> None:
    with sleeper({}) as pid:
        pass
    with pytest.raises(SdexecError) as info:
        uri.resolve(f"pid:{pid}")
    assert info.value.errno == errno.ESRCH


def test_local_path_of_a_local_uri() -> None:
    assert uri.local_path("local:///a/b") == "/a/b"
    with pytest.raises(SdexecError) as info:
        uri.local_path("ssh://host/a")
    assert info.value.errno == errno.EINVAL


def test_socket_path_of_a_remote_uri_is_eprotonosupport() -> None:
    with pytest.raises(SdexecError) as info:
        uri.socket_path("tcp://host:1")
    assert info.value.errno == errno.EPROTONOSUPPORT


def test_socket_path_defaults_to_the_default_uri(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("SDEXEC_URI", "/x/local")
    assert uri.socket_path() == "/x/local"
    assert uri.socket_path(None) == "/x/local"


def test_without_a_server_of_its_own_a_node_of_a_flux_system_instance_is_used(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clean_env.delenv("FLUX_URI", raising=False)
    clean_env.setattr(os, "getuid", lambda: 999)
    clean_env.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    broker = tmp_path / "flux-local"
    clean_env.setattr(uri, "FLUX_SYSTEM_SOCKET", str(broker))
    assert uri.default_uri() == f"local://{tmp_path}/run/sdexec/local"  # no broker socket
    broker.touch()
    assert uri.default_uri() == f"local://{broker}"
    (tmp_path / "run/sdexec").mkdir(parents=True)
    (tmp_path / "run/sdexec/local").touch()  # a server of our own wins
    assert uri.default_uri() == f"local://{tmp_path}/run/sdexec/local"
    clean_env.setenv("FLUX_URI", "local:///elsewhere")
    assert uri.default_uri() == "local:///elsewhere"
