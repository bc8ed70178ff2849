"""tcp:// has the bounds local:// has (issue 15, items 9 and 10).

A real server listening on ``tcp://`` with CURVE, on a real private systemd.
A flood of TCP connections that never finish the CURVE handshake; one
message of 300 MB; a client that never reads the output it asked for.
What must hold: the owner still gets in over ``local://``, the log stays
small and without tracebacks, and the server's memory stays bounded.  The
figures for docs/records/reliability.md are printed (``pytest -s``).
"""

from __future__ import annotations

import os
import resource
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from faults import assert_no_traceback, eventually
from remote import curve_settings, free_port, keygen
from servers import OwnServer, own_manager

from sdexec.proto.message import Message, encode_parts
from sdexec.transport.zmq import read_cert


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.fixture(scope="module")
def tcp(workdir: Path) -> Iterator[tuple[OwnServer, str, Path]]:
    """A server with a tcp:// listener; yields it, its tcp URI and its key directory."""
    keys, authorized = workdir / "tcpf-keys", workdir / "tcpf-authorized"
    authorized.mkdir()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    for name in ("server", "client"):
        keygen(keys, name, env=env)
    shutil.copy(keys / "client.key", authorized / "client.key")
    uri = f"tcp://127.0.0.1:{free_port()}"
    args = [
        "--listen", uri, "--curve-key", str(keys / "server.key_secret"),
        "--curve-authorized", str(authorized), "--max-output-buffer", str(4 << 20),
    ]  # fmt: skip
    with own_manager(workdir) as manager:
        srv = OwnServer(
            manager, str(workdir / "tcpf.sock"), manager.state_dir, workdir / "tcpf.log",
            extra_args=args,
        )  # fmt: skip
        # Fewer descriptors than the flood has connections.
        srv.start(preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096)))
        try:
            yield srv, uri, keys
            assert_no_traceback(srv)
        finally:
            srv.kill()
            for unit in srv.units():
                srv.systemctl("stop", unit)


def test_a_flood_of_unauthenticated_tcp_connections_leaves_the_owner_a_way_in(
    tcp: tuple[OwnServer, str, Path],
) -> None:
    srv, uri, _ = tcp
    assert srv.proc is not None
    host, port = uri.removeprefix("tcp://").rsplit(":", 1)
    before_fds, before_log = fd_count(srv.proc.pid), srv.log_path.stat().st_size
    flood: list[socket.socket] = []
    most = 0
    try:
        for _ in range(5000):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex((host, int(port)))
            flood.append(s)
            if len(flood) % 500 == 0:
                most = max(most, fd_count(srv.proc.pid) - before_fds)
        most = max(most, fd_count(srv.proc.pid) - before_fds)
        # MAX_HANDSHAKING, once the server has caught up with the flood.
        settled = eventually(lambda: fd_count(srv.proc.pid) - before_fds <= 256 + 16, timeout=20)
        held = fd_count(srv.proc.pid) - before_fds
        assert settled, held
        r = srv.sdexec("ps", timeout=30)
        assert r.returncode == 0, r.stderr
        r = srv.sdexec("exec", "--", "echo", "in", timeout=30)
        assert (r.returncode, r.stdout) == (0, b"in\n")
    finally:
        for s in flood:
            s.close()
    grown = srv.log_path.stat().st_size - before_log
    assert grown < 64 << 10, grown
    print(
        f"\nFIGURE tcp flood: 5000 unauthenticated connections held {held} descriptors of "
        f"the server ({most} at the peak); the log grew {grown} bytes"
    )


def _dealer(uri: str, keys: Path) -> tuple[zmq.Context[zmq.Socket[bytes]], zmq.Socket[bytes]]:
    cert, server = read_cert(keys / "client.key_secret"), read_cert(keys / "server.key")
    assert cert.secret is not None
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    d = ctx.socket(zmq.DEALER)
    d.linger = 0
    d.curve_publickey, d.curve_secretkey, d.curve_serverkey = (
        cert.public, cert.secret, server.public,
    )  # fmt: skip
    d.sndhwm = d.rcvhwm = 0
    d.connect(uri)
    return ctx, d


def test_a_300_mb_tcp_message_is_refused_without_buffering_it(
    tcp: tuple[OwnServer, str, Path],
) -> None:
    srv, uri, keys = tcp
    assert srv.proc is not None
    base = rss_mib(srv.proc.pid)
    ctx, d = _dealer(uri, keys)
    try:
        msg = Message.request("sdexec.list", {}, matchtag=1)
        parts = encode_parts(msg)
        parts[-2] = b"x" * (300 << 20)  # the payload frame
        d.send_multipart(parts)
        peak = base
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            peak = max(peak, rss_mib(srv.proc.pid))
            time.sleep(0.05)
    finally:
        d.close(0)
        ctx.term()
    assert peak - base < 64, (base, peak)
    assert srv.sdexec("ps").returncode == 0
    print(f"\nFIGURE 300 MB tcp message: server RSS {base:.0f} -> at most {peak:.0f} MiB")


def test_a_tcp_client_that_never_reads_stays_bounded_on_both_ends(
    tcp: tuple[OwnServer, str, Path],
) -> None:
    srv, uri, keys = tcp
    assert srv.proc is not None
    base = rss_mib(srv.proc.pid)
    env = srv.env(SDEXEC_URI=uri, **curve_settings(keys))
    cli = subprocess.Popen(
        [*srv_cli(), "exec", "--", "cat", "/dev/zero"],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert cli.stdout is not None
        assert len(cli.stdout.read(1 << 20)) == 1 << 20  # it runs; then nobody reads
        server_peak = client_peak = 0.0
        for _ in range(100):  # 10 s
            time.sleep(0.1)
            server_peak = max(server_peak, rss_mib(srv.proc.pid))
            client_peak = max(client_peak, rss_mib(cli.pid))
        assert cli.poll() is None
    finally:
        cli.kill()
        cli.communicate(timeout=30)
    assert eventually(lambda: srv.units() == [], timeout=30)
    assert server_peak - base < 64, (base, server_peak)
    assert client_peak < 128, client_peak
    print(
        f"\nFIGURE tcp client that never reads, 10 s of cat /dev/zero: server RSS {base:.0f} "
        f"-> at most {server_peak:.0f} MiB, client at most {client_peak:.0f} MiB"
    )


def srv_cli() -> list[str]:
    import sys

    return [sys.executable, "-m", "sdexec.cli.main"]
