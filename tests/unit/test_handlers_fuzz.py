"""Fuzzing the RFC 42 request handlers without systemd (sdexec.server.service).

A real :class:`~sdexec.broker.router.Router` and
:class:`~sdexec.server.service.Service` run against a *fake* bus: it records
``StartTransientUnit`` and keeps the unit's ends of the stdio pipes, acting
as the process.  Hypothesis then interleaves arbitrary requests to every
``sdexec.*`` topic with the unit signals systemd would send (start, output,
finish, exec failure) and client disconnects, and checks that:

* every answer is a success or an error with an errno the protocol allows
  (EIO or anything else means a handler crashed);
* a NORESPONSE request is never answered, a plain request at most once, and
  nothing follows the final response of a stream;
* no exception escapes the router, the handlers or the unit listeners;
* no file descriptor is leaked.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import json
import os
import tempfile
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, cast
from unittest import mock

import fuzzstrategies
import structlog
from fuzzstrategies import ALLOWED_ERRNOS, request_payloads
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sdexec.broker.router import Router
from sdexec.proto.message import Message, MsgFlag, MsgType
from sdexec.proto.rfc42 import ExecFlag
from sdexec.server import outputlog
from sdexec.server.process import Process, ProcState
from sdexec.server.service import Service
from sdexec.systemd.bus import SystemdBus
from sdexec.systemd.journal import Journal
from sdexec.systemd.unitstate import CLD_DUMPED, CLD_EXITED, CLD_KILLED
from sdexec.transport.unix import Connection

TOPICS = ["exec", "attach", "logs", "write", "kill", "wait", "list", "disconnect"]

CRASH_EVENTS = frozenset({"handler crashed", "task failed", "disconnect hook failed"})
FIRST_PID = 10001


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


# --- fakes ----------------------------------------------------------------------------------


class FakeConn:
    """A Connection-shaped object that collects what the router sends."""

    stamps_credentials = True

    _ids = itertools.count(1)

    def __init__(self, uid: int) -> None:
        self.id = f"fuzz{next(self._ids)}"
        self.uid = uid
        self.pid = 1
        self.transport: object | None = object()
        self.writable = True
        self.sent: list[Message] = []
        self.listeners: list[Any] = []
        self.pending = 0  # requests owing a response (Connection.pending)
        self.last_active = 0.0

    def send(self, msg: Message) -> None:
        if self.transport is not None:  # like Connection.send: a closed peer gets nothing
            self.sent.append(msg)

    def send_pieces(self, msg: Message, payload: list[bytes]) -> None:
        msg.payload = b"".join(payload)
        self.send(msg)

    async def wait_writable(self) -> None:
        await asyncio.sleep(0)

    def on_writable(self, fn: Any) -> None:
        self.listeners.append(fn)

    def remove_on_writable(self, fn: Any) -> None:
        self.listeners.remove(fn)

    def close(self) -> None:
        self.transport = None


@dataclass
class FakeUnit:
    """What the fake systemd keeps of a started unit: the process's pipe ends."""

    name: str
    fds: dict[str, int] = field(default_factory=dict)  # stdin/stdout/stderr -> our dup
    files: dict[str, str] = field(default_factory=dict)  # stdout/stderr -> append file
    pid: int = 0

    def close(self) -> None:
        for fd in self.fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()


class FakeBus:
    """Duck-typed stand-in for SystemdBus: records calls, emits unit signals on demand."""

    _STDIO: ClassVar[dict[str, str]] = {
        "StandardInputFileDescriptor": "stdin",
        "StandardOutputFileDescriptor": "stdout",
        "StandardErrorFileDescriptor": "stderr",
    }
    _FILES: ClassVar[dict[str, str]] = {
        "StandardOutputFileToAppend": "stdout",
        "StandardErrorFileToAppend": "stderr",
    }

    def __init__(self) -> None:
        self.watched: dict[str, Any] = {}
        self.units: dict[str, FakeUnit] = {}
        self.calls: list[tuple[str, str]] = []
        self._pids = itertools.count(FIRST_PID)

    def watch(self, unit: str, listener: Any) -> None:
        self.watched[unit] = listener

    def unwatch(self, unit: str, listener: Any = None) -> None:
        if listener is None or self.watched.get(unit) is listener:
            self.watched.pop(unit, None)

    async def start_transient(self, unit: str, props: list[list[Any]], fds: list[int]) -> str:
        self.calls.append(("start", unit))
        fake = FakeUnit(unit)
        for name, variant in props:
            stream = self._STDIO.get(name)
            if stream is not None and fds[variant.value] > 2:  # not the server's own stdio
                fake.fds[stream] = os.dup(fds[variant.value])  # also proves the fd is open
            if name in self._FILES:
                fake.files[self._FILES[name]] = variant.value
        for fd in fake.fds.values():
            os.set_blocking(fd, False)
        self.units[unit] = fake
        await asyncio.sleep(0)
        return "/job/1"

    async def kill(self, unit: str, signum: int, who: str = "all") -> None:
        self.calls.append(("kill", unit))

    async def kill_mode(self, unit: str) -> str:
        return "control-group"

    async def stop(self, unit: str) -> None:
        self.calls.append(("stop", unit))

    async def reset_failed(self, unit: str) -> None:
        self.calls.append(("reset-failed", unit))

    # --- signals, as systemd would send them -------------------------------------------------

    def listeners(self, state: ProcState) -> Iterator[tuple[FakeUnit, Process]]:
        for name, listener in list(self.watched.items()):
            unit = self.units.get(name)
            if unit is not None and listener.state is state:
                yield unit, listener

    def start_all(self) -> None:
        for unit, proc in self.listeners(ProcState.STARTING):
            unit.pid = next(self._pids)
            proc.service_changed({"ExecMainPID": 0, "ExecMainCode": 0, "ExecMainStatus": 0})
            proc.unit_changed({"ActiveState": "inactive", "SubState": "dead"})
            proc.service_changed({"ExecMainPID": unit.pid})
            proc.unit_changed({"ActiveState": "active", "SubState": "running"})
            proc.job_removed("done")

    def exec_fail_all(self) -> None:
        for unit, proc in self.listeners(ProcState.STARTING):
            unit.close()
            proc.service_changed(
                {"ExecMainPID": next(self._pids), "ExecMainCode": CLD_EXITED,
                 "ExecMainStatus": 203, "Result": "exit-code"}
            )  # fmt: skip
            proc.unit_changed({"ActiveState": "failed", "SubState": "failed"})
            proc.job_removed("failed")

    def output(self, stream: str, data: bytes, state: ProcState = ProcState.RUNNING) -> None:
        """``data`` written by the running processes (``state``: or those the
        server does not know to be started yet, which run and write already)."""
        for unit, _proc in self.listeners(state):
            fd = unit.fds.get(stream)
            if fd is not None:
                with contextlib.suppress(BlockingIOError, BrokenPipeError):
                    os.write(fd, data)
            path = unit.files.get(stream)
            if path is not None:  # a background unit's output goes to its log file
                with open(path, "ab") as f:
                    f.write(data)

    def finish_all(self, code: int, status: int) -> None:
        for unit, proc in self.listeners(ProcState.RUNNING):
            unit.close()  # the process exits: its pipe ends close
            proc.service_changed({"ExecMainCode": code, "ExecMainStatus": status})
            proc.unit_changed({"ActiveState": "inactive", "SubState": "dead"})

    def close(self) -> None:
        for unit in self.units.values():
            unit.close()


class FakeJournal:
    """The journal always says: systemd could not exec the command."""

    async def spawn_failure(self, unit: str, within: float = 0.5) -> tuple[int, str, str] | None:
        await asyncio.sleep(0)
        return errno.ENOENT, "No such file or directory", "EXEC"


# --- strategies --------------------------------------------------------------------------------

# Any text, lone surrogates included: json.dumps escapes them as \udXXX on the wire.
texts = st.text(st.characters(codec=None), max_size=10)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.integers(-2, 20)
    | st.floats()
    | texts
)
json_values = fuzzstrategies.json_values(texts, scalars, 4)


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any] = json_values) -> Any:
    return fuzzstrategies.mostly(good, bad)


labels = mostly(st.sampled_from(["a", "b", "c", ""]))
pids = mostly(st.integers(FIRST_PID - 1, FIRST_PID + 4))
argv0 = st.sampled_from(
    ["/bin/true", "true", "sh", "./x", "", "/", "/nonexistent/x", "/etc/passwd", "/bin/true/x"]
)
cmdlines = mostly(st.lists(mostly(argv0, texts), min_size=1, max_size=3))
envs = mostly(
    st.dictionaries(
        mostly(st.sampled_from(["PATH", "HOME", "A", "", "B=C", "BASH_FUNC_x%%"]), texts),
        mostly(st.sampled_from(["/usr/bin:/bin", "", "/nonexistent", ":", "/etc"]), texts),
        max_size=3,
    )
)
opts = mostly(
    st.dictionaries(
        mostly(st.sampled_from(["SDEXEC_PROP_MemoryMax", "SDEXEC_PROP_Nope", "x"]), texts),
        mostly(st.sampled_from(["1G", "50%", "x"]), texts),
        max_size=2,
    )
    | st.fixed_dictionaries({"stdin_BUFSIZE": mostly(st.sampled_from(["1", "4k", "0", "x"]))}),
    json_values,
)
msgchans = mostly(
    st.none() | st.lists(st.fixed_dictionaries({"name": texts, "uri": texts}), max_size=2)
)
valid_cmds = st.fixed_dictionaries(
    {
        "cmdline": st.lists(
            st.sampled_from(["/bin/true"] * 3 + ["true", "sh"]) | argv0, min_size=1, max_size=2
        ),
        "env": st.sampled_from([{}, {"PATH": "/usr/bin:/bin"}, {}, {"PATH": "/nonexistent"}]),
        "opts": st.just({}),
        "channels": st.just([]),
    },
    optional={"label": st.sampled_from(["a", "b", "c"])},
)
fuzzy_cmds = mostly(
    st.fixed_dictionaries(
        {"cmdline": cmdlines, "env": envs},
        optional={
            "opts": opts,
            "channels": mostly(st.lists(texts, max_size=2)),
            "cwd": mostly(st.sampled_from(["/", "/tmp", "rel", "/tmp/../x", ""])),
            "label": labels,
            "msgchans": msgchans,
            "msgchan": msgchans,
        },
    )
)
cmds = st.integers(0, 1).flatmap(lambda i: valid_cmds if i == 0 else fuzzy_cmds)
io_objects = mostly(
    st.fixed_dictionaries(
        {"stream": mostly(st.sampled_from(["stdin", "stdout", "x"]))},
        optional={
            "data": mostly(st.sampled_from(["", "hi\n", "aGk=", "!!"]) | texts),
            "encoding": mostly(st.sampled_from(["base64", "UTF-8", "utf8", "x"])),
            "eof": mostly(st.booleans()),
            "rank": texts,
        },
    )
)
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "cmd": cmds,
    "flags": mostly(st.integers(0, 31)),
    "local_flags": mostly(st.sampled_from([0, 1, 2, 4])),
    "pid": pids,
    "label": labels,
    "signum": mostly(st.integers(-1, 66)),
    "matchtag": mostly(st.integers(0, 8)),
    "io": io_objects,
    "tail": mostly(st.integers(-1, 3)),
    "follow": mostly(st.booleans()),
}


@dataclass(frozen=True)
class Req:
    topic: str
    payload: bytes | None
    streaming: bool
    noresponse: bool


@dataclass(frozen=True)
class Sig:
    kind: str  # start | exec-fail | output | early-output | finish | reconnect
    stream: str = "stdout"
    data: bytes = b""
    code: int = CLD_EXITED
    status: int = 0


@st.composite
def requests(draw: st.DrawFn) -> Req:
    # Disconnect (and "reconnect" below) drop every stream: keep them rare.
    weights = {"good-exec": 4, "exec": 3, "write": 3, "kill": 3, "wait": 3, "attach": 2,
               "logs": 2, "list": 1, "disconnect": 1, "x": 1}  # fmt: skip
    method = draw(st.sampled_from([m for m, n in weights.items() for _ in range(n)]))
    if method == "good-exec":  # a request that will start a (fake) unit
        body = {
            "cmd": draw(valid_cmds),
            "flags": draw(st.integers(0, 31)),
            "local_flags": draw(st.sampled_from([0, 2])),
        }
        payload = json.dumps(body).encode() + b"\0"
        return Req("sdexec.exec", payload, streaming=draw(st.booleans()), noresponse=False)
    topic = draw(st.sampled_from([f"sdexec.{method}"] * 9 + [method]))
    return Req(
        topic,
        draw(request_payloads(method, FIELDS, json_values, texts, list(FIELDS))),
        streaming=draw(st.booleans()),
        noresponse=draw(st.integers(0, 4)) == 4,
    )


@st.composite
def signals(draw: st.DrawFn) -> Sig:
    kind = draw(st.sampled_from(["start"] * 4 + ["output"] * 3 + ["finish"] * 3 + ["exec-fail"]
                                + ["early-output", "reconnect"]))  # fmt: skip
    if kind in ("output", "early-output"):
        data = draw(st.sampled_from([b"hello\n", "\u20ac".encode()[:2], b"\xff\xfe"]) | st.binary())
        return Sig(kind, stream=draw(st.sampled_from(["stdout", "stderr"])), data=data)
    if kind == "finish":
        code = draw(st.sampled_from([CLD_EXITED, CLD_KILLED, CLD_DUMPED]))
        return Sig(kind, code=code, status=draw(st.sampled_from([0, 1, 9, 11, 203])))
    return Sig(kind)


actions = st.lists(
    st.integers(0, 2).flatmap(lambda i: signals() if i == 2 else requests()),
    min_size=1,
    max_size=20,
)


def body(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode() + b"\0"


@st.composite
def lifecycle_requests(draw: st.DrawFn) -> Req:
    """Well-formed requests about the processes the fuzzer starts: deep states, cheap draws."""
    method = draw(
        st.sampled_from(
            ["exec"] * 3 + ["write"] * 3 + ["kill", "wait", "attach", "logs"] * 2 + ["list"]
        )
    )
    streaming = draw(st.booleans())
    target: dict[str, Any] = draw(
        st.fixed_dictionaries({"pid": st.integers(FIRST_PID, FIRST_PID + 3)})
        | st.fixed_dictionaries({"label": st.sampled_from(["a", "b"])})
    )
    if method == "exec":
        cmd: dict[str, Any] = {"cmdline": ["/bin/true"], "env": {}, "opts": {}, "channels": []}
        if draw(st.booleans()):
            cmd["label"] = draw(st.sampled_from(["a", "b"]))
        if draw(st.booleans()):
            cmd["opts"] = {"stdin_BUFSIZE": draw(st.sampled_from(["1", "16", "1k"]))}
        flags = draw(st.sampled_from([0, 3, 8, 11, 16, 27, 31]))
        return Req("sdexec.exec", body({"cmd": cmd, "flags": flags}), streaming, False)
    if method == "write":
        io: dict[str, Any] = {"stream": draw(st.sampled_from(["stdin", "stdin", "other"]))}
        io["data"] = draw(st.sampled_from(["", "x", "line\n", "\u20ac" * 100]))
        io["eof"] = draw(st.booleans())
        payload = body({"matchtag": draw(st.integers(1, 6)), "io": io})
        return Req("sdexec.write", payload, False, draw(st.booleans()))
    if method == "kill":
        payload = body({**target, "signum": draw(st.sampled_from([9, 15, 0, 99]))})
        return Req("sdexec.kill", payload, streaming, False)
    if method in ("wait", "attach"):
        return Req(f"sdexec.{method}", body(target), streaming, False)
    if method == "logs":
        extra = draw(st.fixed_dictionaries({}, optional={"tail": st.integers(0, 2),
                                                         "follow": st.booleans()}))  # fmt: skip
        return Req("sdexec.logs", body({**target, **extra}), streaming, False)
    return Req("sdexec.list", body({}), streaming, False)


lifecycle_actions = st.lists(
    st.integers(0, 1).flatmap(lambda i: signals() if i == 1 else lifecycle_requests()),
    min_size=4,
    max_size=24,
)


# --- the harness -------------------------------------------------------------------------------


@dataclass
class Sent:
    conn: FakeConn
    matchtag: int
    req: Req


class Harness:
    """One router, one service, one fake bus; connections come and go."""

    def __init__(self) -> None:
        self.uid = os.getuid()
        self.router = Router(self.uid)
        self.bus = FakeBus()
        self.state_dir = tempfile.TemporaryDirectory(prefix="sdexec-fuzz-")
        self.service = Service(
            self.router,
            cast(SystemdBus, self.bus),
            journal=cast(Journal, FakeJournal()),
            state_dir=Path(self.state_dir.name),
        )
        self.conns: list[FakeConn] = []
        self.conn = self.connect()
        self.sent: list[Sent] = []
        self._tags = itertools.count(1)

    def connect(self) -> FakeConn:
        conn = FakeConn(self.uid)
        assert self.router.accept(cast(Connection, conn)) == 0
        self.conns.append(conn)
        return conn

    def disconnect(self) -> None:
        self.conn.close()
        self.router.closed(cast(Connection, self.conn))

    def request(self, req: Req) -> None:
        flags = (MsgFlag.STREAMING if req.streaming else 0) | (
            MsgFlag.NORESPONSE if req.noresponse else 0
        )
        # Flux sends NORESPONSE requests with no matchtag; every other one gets its own.
        matchtag = 0 if req.noresponse else next(self._tags)
        msg = Message.request(req.topic, matchtag=matchtag, flags=flags)
        msg.payload = req.payload
        self.sent.append(Sent(self.conn, matchtag, req))
        self.router.received(cast(Connection, self.conn), msg)

    def signal(self, sig: Sig) -> None:
        if sig.kind == "start":
            self.bus.start_all()
        elif sig.kind == "exec-fail":
            self.bus.exec_fail_all()
        elif sig.kind == "output":
            self.bus.output(sig.stream, sig.data)
        elif sig.kind == "early-output":
            self.bus.output(sig.stream, sig.data, ProcState.STARTING)
        elif sig.kind == "finish":
            self.bus.finish_all(sig.code, sig.status)
        elif sig.kind == "reconnect":
            self.disconnect()
            self.conn = self.connect()

    async def settle(self) -> None:
        for _ in range(4):
            await asyncio.sleep(0)

    def release_all(self) -> None:
        svc = self.service
        procs = {*svc.processes(), *svc.by_pid.values(), *svc.by_label.values()}
        procs |= {*svc.by_stream.values(), *svc.starting}
        for proc in procs:
            proc.release()
        self.bus.close()

    def cleanup(self) -> None:
        self.service.close()
        self.state_dir.cleanup()

    # --- checks ---------------------------------------------------------------------------------

    def check_responses(self) -> None:
        for conn in self.conns:
            by_tag: dict[int, list[Message]] = {}
            for msg in conn.sent:
                assert msg.type == MsgType.RESPONSE
                assert msg.matchtag != 0, f"a NORESPONSE request was answered: {msg}"
                if msg.errnum:
                    event(f"errnum {errno.errorcode.get(msg.errnum, msg.errnum)}")
                    assert msg.errnum in ALLOWED_ERRNOS, (
                        msg.topic,
                        errno.errorcode.get(msg.errnum),
                        msg.error_text(),
                    )
                else:
                    body = msg.json()
                    event(f"response {body.get('type', 'list' if 'procs' in body else body)}")
                by_tag.setdefault(msg.matchtag, []).append(msg)
            for s in self.sent:
                if s.conn is not conn or s.matchtag == 0:
                    continue
                answers = by_tag.get(s.matchtag, [])
                if not s.req.streaming:
                    assert len(answers) <= 1, (s.req, answers)
                finals = [i for i, m in enumerate(answers) if m.errnum]
                if finals:
                    assert finals[0] == len(answers) - 1, f"responses after the final one: {s}"


async def scenario(harness: Harness, steps: list[Req | Sig]) -> None:
    """Feed ``steps``, then drop the connection; release whatever is left."""
    async with asyncio.TaskGroup() as tg:
        harness.router.attach(tg)
        try:
            for step in steps:
                if isinstance(step, Req):
                    harness.request(step)
                else:
                    harness.signal(step)
                await harness.settle()
            harness.disconnect()
            await harness.settle()
        finally:
            harness.release_all()


def run_steps(steps: list[Req | Sig]) -> tuple[Harness, list[MutableMapping[str, Any]]]:
    """Run ``steps`` on a fresh harness in a fresh loop; (harness, captured log events)."""
    # Output followers poll the log files: make their polling and quiet period short.
    with (
        mock.patch.object(outputlog, "POLL", 0.001),
        mock.patch.object(outputlog, "QUIET_AFTER_EXIT", 0.003),
        structlog.testing.capture_logs() as logs,
    ):
        harness = Harness()
        try:
            asyncio.run(scenario(harness, steps))
        finally:
            harness.cleanup()
    return harness, logs


def check_run(steps: list[Req | Sig]) -> None:
    before = open_fds()
    harness, logs = run_steps(steps)
    harness.check_responses()
    crashes = [e for e in logs if e.get("event") in CRASH_EVENTS]
    assert not crashes, crashes
    assert open_fds() == before, "file descriptors leaked"


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(actions)
def test_handlers_answer_arbitrary_requests_with_allowed_errors_only(
    steps: list[Req | Sig],
) -> None:
    check_run(steps)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lifecycle_actions)
def test_process_lifecycle_requests_get_allowed_answers_only(steps: list[Req | Sig]) -> None:
    check_run(steps)


# --- targeted cases the fuzzer relies on -------------------------------------------------------


def exec_request(opts: dict[str, str] | None = None, flags: int = 0) -> Req:
    cmd = {"cmdline": ["/bin/true"], "env": {}, "opts": opts or {}, "channels": []}
    body = json.dumps({"cmd": cmd, "flags": flags}).encode() + b"\0"
    return Req("sdexec.exec", body, streaming=True, noresponse=False)


def types_of(conn: FakeConn) -> list[str]:
    return [m.json()["type"] if not m.errnum else errno.errorcode[m.errnum] for m in conn.sent]


def test_fake_run_streams_started_output_finished_and_enodata() -> None:
    flags = int(ExecFlag.STDOUT | ExecFlag.STDERR)
    harness, _ = run_steps(
        [exec_request(flags=flags), Sig("start"), Sig("output", data=b"hi\n"), Sig("finish")]
    )
    got = types_of(harness.conn)
    # Output EOFs may follow "finished"; ENODATA comes once both have happened.
    assert got[0] == "started"
    assert got[-1] == "ENODATA"
    assert got.count("finished") == 1
    bodies = [m.json() for m in harness.conn.sent if not m.errnum]
    outputs = [b["io"] for b in bodies if b["type"] == "output"]
    data = "".join(io.get("data", "") for io in outputs if io["stream"] == "stdout")
    assert data == "hi\n"
    assert sorted(io["stream"] for io in outputs if io.get("eof")) == ["stderr", "stdout"]


def test_output_written_before_started_is_sent_after_it_in_the_pieces_written() -> None:
    # t0005-rexec.t "line buffering can be disabled": a process that writes at
    # once runs before the server learns it started; its output was read only
    # then, all of it in one chunk, so unbuffered output came as one response.
    flags = int(ExecFlag.STDOUT)
    steps: list[Req | Sig] = [
        exec_request({"stdout_LINE_BUFFER": "false"}, flags),
        Sig("early-output", data=b"one"),
        Sig("early-output", data=b"two"),
        Sig("start"),
        Sig("output", data=b"three"),
        Sig("finish"),
    ]
    harness, _ = run_steps(steps)
    bodies = [m.json() for m in harness.conn.sent if not m.errnum]
    assert bodies[0]["type"] == "started"
    data = [b["io"]["data"] for b in bodies if b["type"] == "output" and "data" in b["io"]]
    assert data == ["one", "two", "three"]


def test_fake_exec_failure_is_answered_with_enoent() -> None:
    harness, _ = run_steps([exec_request(), Sig("exec-fail")])
    assert types_of(harness.conn) == ["ENOENT"]


def test_fake_bus_gets_the_unit_start() -> None:
    harness, _ = run_steps([exec_request()])
    assert harness.bus.calls[0][0] == "start"


def test_invalid_stdin_bufsize_is_refused_at_exec() -> None:
    # Once found by this file: the option used to be parsed only when "started" was
    # sent, and the EINVAL escaped into the bus signal handler, wedging the stream.
    flags = int(ExecFlag.STDOUT | ExecFlag.WRITE_CREDIT)
    harness, _ = run_steps([exec_request({"stdin_BUFSIZE": "bogus"}, flags), Sig("start")])
    assert types_of(harness.conn) == ["EINVAL"]
    assert harness.bus.calls == []


def test_kill_and_wait_while_shutting_down_are_enosys_with_the_reason() -> None:
    # A module being unloaded: job-exec reads ENOSYS as "sdexec is not loaded".
    harness = Harness()
    harness.service.shutting_down = True
    harness.service.shutdown_reason = "sdexec module is unloading"
    steps: list[Req | Sig] = [
        Req("sdexec.kill", body({"pid": 1, "signum": 15}), streaming=False, noresponse=False),
        Req("sdexec.wait", body({"pid": 1}), streaming=False, noresponse=False),
    ]
    try:
        asyncio.run(scenario(harness, steps))
    finally:
        harness.cleanup()
    answers = harness.conn.sent[:2]
    assert [errno.errorcode[m.errnum] for m in answers] == ["ENOSYS", "ENOSYS"]
    assert all(b"sdexec module is unloading" in (m.payload or b"") for m in answers)


def background_exec(label: str) -> Req:
    cmd = {"cmdline": ["/bin/true"], "env": {}, "opts": {}, "channels": [], "label": label}
    return Req("sdexec.exec", body({"cmd": cmd, "flags": int(ExecFlag.WAITABLE)}), False, False)


def test_a_kept_process_whose_pid_is_given_again_is_still_listed_and_released() -> None:
    # The kernel gives pids again (pid_max is 32768 on many machines).  A finished
    # waitable process, kept for its wait, lost its place in the table to a newer
    # process with its pid: list no longer showed it, and an unload that stops
    # background units left its failed unit loaded.
    harness = Harness()

    async def run() -> None:
        async with asyncio.TaskGroup() as tg:
            harness.router.attach(tg)
            try:
                harness.request(background_exec("old"))
                await harness.settle()
                harness.bus.start_all()
                harness.bus.finish_all(CLD_EXITED, 6)
                await harness.settle()
                harness.bus._pids = itertools.count(FIRST_PID)  # the same pid, once more
                harness.request(background_exec("new"))
                await harness.settle()
                harness.bus.start_all()
                await harness.settle()
                harness.request(Req("sdexec.list", body({}), False, False))
                await harness.settle()
                await harness.service.shutdown(stop_background=True)
            finally:
                harness.release_all()

    try:
        asyncio.run(run())
    finally:
        harness.cleanup()
    (listed,) = [m.json()["procs"] for m in harness.conn.sent if "procs" in (m.json() or {})]
    assert sorted((p["label"], p["pid"], p["state"]) for p in listed) == [
        ("new", FIRST_PID, "R"),
        ("old", FIRST_PID, "Z"),
    ]
    units = {unit for verb, unit in harness.bus.calls if verb == "start"}
    old = next(u for u in units if "-old" in u)
    new = next(u for u in units if "-new" in u)
    assert ("stop", old) in harness.bus.calls and ("reset-failed", old) in harness.bus.calls
    assert ("stop", new) in harness.bus.calls
