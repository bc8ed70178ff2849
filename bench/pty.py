"""``sdexec exec --pty`` against ``systemd-run --pty`` on the same manager.

Usage::

    .venv/bin/python bench/pty.py [--keys 200] [--size 200M] [--only latency,output]

It starts its own ``sdexec serve`` on a private, confined manager (as
``sdexec serve --systemd=private`` does) and runs ``systemd-run --user
--pty`` on that same manager.  Each client runs on a pseudo-terminal of
this script's, as it would on a person's terminal.

* **latency**: a keystroke written to the local terminal until its echo is
  read back from it.  The remote program is ``cat`` on a cooked terminal, so
  the echo comes from the remote terminal itself: the time is the relay's
  (local pty, client, server, remote pty and back).  Keys alternate between
  the two sessions, so that both see the same machine state; the median of
  ``--keys`` each.
* **output**: ``yes | head -c SIZE`` through the remote terminal, the
  client's stdout on /dev/null, whole command timed; once as is (the remote
  terminal turns each ``\\n`` into ``\\r\\n``), once after ``stty -opost``
  (no output processing), which shows what the relay itself can carry.

It prints the figures and their ratios; it never asserts.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tty
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "sdexec.cli.main"]


def parse_size(text: str) -> int:
    scale = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}.get(text[-1:].lower(), 1)
    return int(text[:-1] if scale != 1 else text) * scale


class Server:
    def __init__(self, d: Path) -> None:
        self.d = d
        self.uri = f"local://{d}/local"
        self.state = d / "state"
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.log = open(d / "server.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                *CLI,
                "serve",
                "--uri",
                self.uri,
                "--systemd",
                "private",
                "--state-dir",
                str(self.state),
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=self.log,
        )
        deadline = time.monotonic() + 60
        while not (d / "local").exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((d / "server.log").read_text())
            time.sleep(0.05)

    def env(self) -> dict[str, str]:
        runtime = str(self.state / "systemd")
        return {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "SDEXEC_URI": self.uri,
            "XDG_RUNTIME_DIR": runtime,
            "DBUS_SESSION_BUS_ADDRESS": f"unix:path={runtime}/bus",
            "TERM": "xterm",
        }

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def commands(remote: str) -> dict[str, list[str]]:
    return {
        "sdexec --pty": [*CLI, "exec", "-t", "--", "sh", "-c", remote],
        "systemd-run --pty": ["systemd-run", "--user", "--pty", "-q", "sh", "-c", remote],
    }


class Session:
    """A client on a pty of ours: we are its terminal."""

    def __init__(self, argv: list[str], env: dict[str, str], stdout: int | None = None) -> None:
        self.master, slave = os.openpty()
        tty.setraw(self.master)
        os.set_blocking(self.master, False)
        self.proc = subprocess.Popen(
            argv,
            stdin=slave,
            stdout=slave if stdout is None else stdout,
            stderr=slave,
            env=env,
            start_new_session=True,
        )
        os.close(slave)
        self.buf = b""

    def read_until(self, want: bytes, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while want not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"no {want!r} in {self.buf[-200:]!r}")
            select.select([self.master], [], [], left)
            with contextlib.suppress(BlockingIOError):
                self.buf += os.read(self.master, 65536)
        self.buf = self.buf[self.buf.index(want) + len(want) :]

    def keystroke(self, key: bytes) -> float:
        t0 = time.perf_counter()
        os.write(self.master, key)
        self.read_until(key)
        return time.perf_counter() - t0

    def close(self) -> None:
        os.write(self.master, b"\x04")  # EOF for cat, through the remote terminal
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)


def latency(server: Server, keys: int) -> dict[str, float]:
    sessions = {
        how: Session(argv, server.env()) for how, argv in commands("echo READY; exec cat").items()
    }
    try:
        for s in sessions.values():
            s.read_until(b"READY")
        samples: dict[str, list[float]] = {how: [] for how in sessions}
        for i in range(keys + 10):
            key = bytes([ord("a") + i % 26])
            for how, s in sessions.items():
                t = s.keystroke(key)
                if i >= 10:  # warm-up keys are not counted
                    samples[how].append(t)
            time.sleep(0.005)  # typing, not a flood
    finally:
        for s in sessions.values():
            s.close()
    return {how: statistics.median(v) * 1e3 for how, v in samples.items()}


def output(server: Server, size: int, prefix: str) -> dict[str, float]:
    out = {}
    remote = f"{prefix}yes | head -c {size}"
    with open(os.devnull, "wb") as null:
        for how, argv in commands(remote).items():
            s = Session(argv, server.env(), stdout=null.fileno())
            t0 = time.perf_counter()
            s.proc.wait()
            out[how] = size / (time.perf_counter() - t0) / 1e6
            os.close(s.master)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=200)
    ap.add_argument("--size", type=parse_size, default=parse_size("200M"))
    ap.add_argument("--only", default="latency,output")
    args = ap.parse_args()
    if shutil.which("systemd-run") is None:
        print("systemd-run is needed", file=sys.stderr)
        return 1
    d = Path(tempfile.mkdtemp(prefix="sdx-pty-", dir="/tmp"))
    server = Server(d)
    try:
        only = set(args.only.split(","))
        if "latency" in only:
            lat = latency(server, args.keys)
            a, b = lat["sdexec --pty"], lat["systemd-run --pty"]
            print(f"keystroke to echo, median of {args.keys} (local)")
            print(f"  sdexec --pty        {a:7.3f} ms")
            print(f"  systemd-run --pty   {b:7.3f} ms")
            print(f"  difference {a - b:+.3f} ms, ratio {a / b:.2f}x  (target: within +2 ms)")
        if "output" in only:
            mib = args.size / (1 << 20)
            for title, prefix in (("as is", ""), ("after stty -opost", "stty -opost; ")):
                rate = output(server, args.size, prefix)
                a, b = rate["sdexec --pty"], rate["systemd-run --pty"]
                print(f"output, yes | head -c {mib:g}M, {title}")
                print(f"  sdexec --pty        {a:8.1f} MB/s")
                print(f"  systemd-run --pty   {b:8.1f} MB/s")
                print(f"  ratio {a / b:.2f}x  (target: >= 100 MB/s)")
    finally:
        server.stop()
        shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
