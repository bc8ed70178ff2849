"""The CLI's proxy, uri, keygen and relay commands (parsing and the light start-up path)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sdexec.cli import main as cli
from sdexec.cli import parser as cli_parser


def test_proxy_options_follow_flux_proxy() -> None:
    parser, _ = cli_parser.build_parser()
    args = parser.parse_args(["proxy", "-f", "-n", "--reconnect", "local:///x", "ls", "-l"])
    assert (args.force, args.nohup, args.reconnect) == (True, True, True)
    assert args.target == "local:///x"
    assert args.cmdline == ["ls", "-l"]


def test_proxy_long_options() -> None:
    parser, _ = cli_parser.build_parser()
    args = parser.parse_args(["proxy", "--force", "--nohup", "ssh://h/p"])
    assert (args.force, args.nohup, args.reconnect, args.cmdline) == (True, True, False, [])


def test_uri_prints_the_resolved_uri(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["uri", "/run/x/local"]) == 0
    assert capsys.readouterr().out == "local:///run/x/local\n"


def test_uri_of_garbage_fails_with_flux_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["uri", "garbage"]) == 1
    assert capsys.readouterr().err == "sdexec: Unable to resolve garbage to a URI\n"


def test_keygen_writes_a_pair_and_prints_the_paths(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["keygen", "-d", str(tmp_path), "--name", "me"]) == 0
    assert capsys.readouterr().out.split() == [f"{tmp_path}/me.key", f"{tmp_path}/me.key_secret"]


def test_keygen_does_not_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cli.main(["keygen", "-d", str(tmp_path)])
    assert cli.main(["keygen", "-d", str(tmp_path)]) == 1
    assert "already exists" in capsys.readouterr().err


def test_keygen_defaults_to_the_client_key_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SDEXEC_CURVE_DIR", str(tmp_path / "curve"))
    assert cli.main(["keygen"]) == 0
    assert (tmp_path / "curve" / "client.key_secret").exists()


def test_serve_listen_requires_keys() -> None:
    from sdexec.server import daemon

    parser, _ = cli_parser.build_parser()
    args = parser.parse_args(["serve", "--listen", "tcp://127.0.0.1:5555"])
    with pytest.raises(OSError, match="--curve-key and --curve-authorized"):
        daemon._tcp_options(args)


def test_serve_listen_takes_only_tcp() -> None:
    from sdexec.server import daemon

    parser, _ = cli_parser.build_parser()
    args = parser.parse_args(["serve", "--listen", "local:///x", "--curve-key", "k"])
    with pytest.raises(OSError, match="only tcp://"):
        daemon._tcp_options(args)


def test_connecting_to_a_local_uri_imports_nothing_heavy(tmp_path: Path) -> None:
    code = f"""
import sys, _socket
s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
s.bind({str(tmp_path / "s")!r}); s.listen(1)
from sdexec.transport.connector import open_link
link = open_link("local://{tmp_path / "s"}")
link.close()
heavy = {{"asyncio", "zmq", "structlog", "socket", "selectors", "subprocess", "shlex"}}
loaded = sorted(heavy & set(sys.modules))
assert not loaded, loaded
"""
    subprocess.run([sys.executable, "-c", code], check=True)


def test_serve_listen_checks_the_server_key_first(tmp_path: Path) -> None:
    from sdexec.server import daemon

    parser, _ = cli_parser.build_parser()
    args = parser.parse_args(
        [
            "serve",
            "--listen",
            "tcp://127.0.0.1:5555",
            "--curve-key",
            str(tmp_path / "none"),
            "--curve-authorized",
            str(tmp_path),
        ]
    )
    with pytest.raises(OSError, match="cannot read key file"):
        daemon._tcp_options(args)


def test_serve_listen_needs_the_secret_key_file(tmp_path: Path) -> None:
    from sdexec.server import daemon

    cli.main(["keygen", "-d", str(tmp_path), "--name", "server"])
    parser, _ = cli_parser.build_parser()
    args = parser.parse_args(
        [
            "serve",
            "--listen",
            "tcp://127.0.0.1:5555",
            "--curve-key",
            str(tmp_path / "server.key"),
            "--curve-authorized",
            str(tmp_path),
        ]
    )
    with pytest.raises(OSError, match="no secret key"):
        daemon._tcp_options(args)


def test_the_tcp_client_imports_neither_asyncio_nor_structlog() -> None:
    code = """
import sys
import sdexec.client.blocking, sdexec.transport.zmq
loaded = sorted({"asyncio", "structlog", "zmq.asyncio"} & set(sys.modules))
assert not loaded, loaded
"""
    subprocess.run([sys.executable, "-c", code], check=True)
