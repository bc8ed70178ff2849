"""tcp:// with CURVE in one process: a router with the built-in services behind a
ZmqListener, and the asyncio client through the bridge.  No systemd."""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import socket
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from sdexec.base.errors import SdexecError
from sdexec.broker.builtins import Builtins
from sdexec.broker.router import Router
from sdexec.client.handle import Handle
from sdexec.client.rpc import RemoteError
from sdexec.transport.zmq import read_cert, write_keypair
from sdexec.transport.zmq_server import ZmqListener

OWNER = os.getuid()


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    d = tmp_path / "keys"
    write_keypair(d, "server", {})
    write_keypair(d, "client", {})
    write_keypair(d, "intruder", {})
    write_keypair(d, "guest", {"uid": "4242"})
    auth = tmp_path / "authorized"
    auth.mkdir()
    for name in ("client", "guest"):
        shutil.copy(d / f"{name}.key", auth / f"{name}.key")
    return d


def use_keys(monkeypatch: pytest.MonkeyPatch, keys: Path, client: str) -> None:
    monkeypatch.setenv("SDEXEC_CURVE_CERT", str(keys / f"{client}.key_secret"))
    monkeypatch.setenv("SDEXEC_CURVE_SERVER", str(keys / "server.key"))


Scenario = Callable[[str, Router], Awaitable[None]]


def serve(keys: Path, scenario: Scenario) -> None:
    async def main() -> None:
        router = Router(owner_uid=OWNER)
        Builtins(router, rank=0, size=1, owner=OWNER)
        listener = ZmqListener(
            f"tcp://127.0.0.1:{_free_port()}",
            router,
            keys / "server.key_secret",
            keys.parent / "authorized",
            OWNER,
        )
        uri = listener.bind()
        async with asyncio.TaskGroup() as tg:
            router.attach(tg)
            task = tg.create_task(listener.run())
            try:
                await asyncio.wait_for(scenario(uri, router), 20)
            finally:
                task.cancel()

    asyncio.run(main())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_keypair_files_round_trip(keys: Path) -> None:
    cert = read_cert(keys / "client.key_secret")
    public = read_cert(keys / "client.key")
    assert cert.public == public.public and len(cert.public) == 40
    assert cert.secret is not None and public.secret is None


def test_secret_key_file_is_private(keys: Path) -> None:
    assert stat.S_IMODE((keys / "client.key_secret").stat().st_mode) == 0o600


def test_uid_metadata_is_written(keys: Path) -> None:
    assert read_cert(keys / "guest.key").metadata == {"uid": "4242"}


def test_keygen_refuses_to_overwrite(keys: Path) -> None:
    with pytest.raises(FileExistsError):
        write_keypair(keys, "client", {})


def test_rpc_over_tcp(keys: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_keys(monkeypatch, keys, "client")
    answers: list[object] = []

    async def scenario(uri: str, router: Router) -> None:
        h = await Handle.connect(uri)
        answers.append((await h.rpc("attr.get", {"name": "security.owner"}))["value"])
        await h.close()

    serve(keys, scenario)
    assert answers == [str(OWNER)]


def test_events_over_tcp(keys: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_keys(monkeypatch, keys, "client")
    got: list[tuple[str | None, object]] = []

    async def scenario(uri: str, router: Router) -> None:
        h = await Handle.connect(uri)
        await h.subscribe("t.")
        router.publish("t.x", {"n": 1})
        ev = await h.event()
        got.append((ev.topic, ev.json()))
        await h.close()

    serve(keys, scenario)
    assert got == [("t.x", {"n": 1})]


def test_connection_is_stamped_with_the_key_owner(
    keys: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_keys(monkeypatch, keys, "client")
    uids: list[int] = []

    async def scenario(uri: str, router: Router) -> None:
        h = await Handle.connect(uri)
        await h.rpc("attr.get", {"name": "size"})
        uids.extend(c.uid for c in router.connections.values())
        await h.close()

    serve(keys, scenario)
    assert uids == [OWNER]


def test_unauthorized_key_is_eperm(keys: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_keys(monkeypatch, keys, "intruder")
    errors: list[int] = []

    async def scenario(uri: str, router: Router) -> None:
        try:
            await Handle.connect(uri)
        except SdexecError as exc:
            errors.append(exc.errno)

    serve(keys, scenario)
    assert errors == [errno.EPERM]


def test_key_mapped_to_another_uid_is_refused_by_the_router(
    keys: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_keys(monkeypatch, keys, "guest")
    errors: list[int] = []

    async def scenario(uri: str, router: Router) -> None:
        h = await Handle.connect(uri)
        try:
            await h.rpc("attr.get", {"name": "size"})
        except RemoteError as exc:
            errors.append(exc.errno)
        await h.close()

    serve(keys, scenario)
    assert errors == [errno.EPERM]


def test_disconnect_runs_the_routers_hooks(keys: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_keys(monkeypatch, keys, "client")
    closed: list[str] = []

    async def scenario(uri: str, router: Router) -> None:
        gone = asyncio.Event()

        def hook(conn_id: str) -> None:
            closed.append(conn_id)
            gone.set()

        router.disconnect_hooks.append(hook)
        h = await Handle.connect(uri)
        await h.rpc("attr.get", {"name": "size"})
        (conn_id,) = router.connections
        await h.close()
        await gone.wait()
        assert closed == [conn_id]

    serve(keys, scenario)
    assert len(closed) == 1


def test_refused_tcp_connection_is_econnrefused(
    keys: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_keys(monkeypatch, keys, "client")

    async def main() -> None:
        await Handle.connect(f"tcp://127.0.0.1:{_free_port()}")

    with pytest.raises(SdexecError) as info:
        asyncio.run(main())
    assert info.value.errno == errno.ECONNREFUSED


def test_missing_key_file_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDEXEC_CURVE_CERT", str(tmp_path / "none.key_secret"))
    with pytest.raises(SdexecError) as info:
        asyncio.run(Handle.connect("tcp://127.0.0.1:1"))
    assert info.value.errno == errno.ENOENT
