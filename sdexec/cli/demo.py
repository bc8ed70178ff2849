"""A guided tour of sdexec: start a server, drive it with the real CLI, clean up.

Theory of operation
-------------------
``python -m sdexec.cli.demo`` starts ``sdexec serve`` as a child process on a
socket in a fresh temporary directory, with the calling user's systemd
manager when a user bus exists and otherwise with the server's private,
confined manager (``--systemd private``, for machines booted without
systemd).  The server runs in its own session, so a Ctrl-C at the terminal
reaches the demo and the command it is running, not the server; the demo
then stops the server itself.

Each step prints the command, runs the real ``sdexec`` CLI in a child
process (``SDEXEC_URI`` names the demo's server), shows its output and
checks its exit code and output against what sdexec promises.  Whatever
happens (a failed step, an exception, Ctrl-C) the ``finally`` blocks kill
the demo's background process if it is still there, stop the server with
SIGTERM and wait for it (the server stops its private manager), and remove
the temporary directory.  The exit status is 0 only if every step behaved
as expected.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

SERVER_START_TIMEOUT = 90.0
SERVER_STOP_TIMEOUT = 60.0
STEP_TIMEOUT = 60.0
LABEL = "demo-sleep"

Check = Callable[[subprocess.CompletedProcess[bytes]], str | None]


def has_user_bus() -> bool:
    """True if the calling user has a systemd user manager's session bus."""
    if os.environ.get("DBUS_SESSION_BUS_ADDRESS"):
        return True
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if not runtime:
        return False
    return Path(runtime, "bus").is_socket()


def say(text: str) -> None:
    print(text, flush=True)


class DemoFailed(Exception):
    """A step did not behave as expected."""


class Demo:
    """The demo's server and the steps run against it."""

    def __init__(
        self, workdir: Path, systemd: str, server_command: Sequence[str] | None = None
    ) -> None:
        self.workdir = workdir
        self.systemd = systemd
        self.socket_path = workdir / "local"
        self.state_dir = workdir / "state"
        self.log_path = workdir / "server.log"
        self.uri = f"local://{self.socket_path}"
        self.server_command = server_command or [sys.executable, "-m", "sdexec.cli.main"]
        self.server: subprocess.Popen[bytes] | None = None
        self.env = dict(os.environ, SDEXEC_URI=self.uri)
        self.failures: list[str] = []
        self.background_running = False  # the labelled sleep may still be there

    # --- the server ---------------------------------------------------------------------

    def start_server(self) -> None:
        argv = [
            *self.server_command,
            "serve",
            "--uri",
            self.uri,
            "--state-dir",
            str(self.state_dir),
            "--systemd",
            self.systemd,
        ]
        manager = "a private, confined" if self.systemd == "private" else f"the {self.systemd}"
        say(f"# Starting a server on {self.uri} with {manager} systemd manager")
        say(f"$ sdexec serve --uri {self.uri} --systemd {self.systemd} &")
        with open(self.log_path, "ab") as log:
            self.server = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # Ctrl-C at the terminal is the demo's to handle
            )
        self._wait_until_accepting()
        say(f"$ export SDEXEC_URI={self.uri}\n")

    def _wait_until_accepting(self) -> None:
        assert self.server is not None
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                raise DemoFailed(f"the server exited with status {self.server.returncode}")
            if self._accepts():
                return
            time.sleep(0.05)
        raise DemoFailed(f"the server did not accept connections in {SERVER_START_TIMEOUT:.0f}s")

    def _accepts(self) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            try:
                s.connect(str(self.socket_path))
                return s.recv(1) == b"\0"
            except OSError:
                return False

    def stop_server(self) -> None:
        """SIGTERM, then wait; SIGKILL (and stop a private manager) as a last resort."""
        proc, self.server = self.server, None
        if proc is None:
            return
        if proc.poll() is None:
            say("# Stopping the server with SIGTERM")
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(SERVER_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.failures.append("the server did not stop on SIGTERM")
            proc.kill()
            proc.wait()
            if self.systemd == "private":
                from sdexec.systemd.private import PrivateManager

                PrivateManager(self.state_dir).stop()
        if proc.returncode not in (0, -signal.SIGTERM):
            self.failures.append(f"the server exited with status {proc.returncode}")

    def server_log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # --- steps ------------------------------------------------------------------------------

    def step(
        self,
        comment: str,
        args: Sequence[str],
        *,
        code: int,
        check: Check | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``sdexec ARGS``, show its output, and record whether it behaved."""
        say(f"# {comment}")
        say("$ " + shlex.join(["sdexec", *args]))
        result = subprocess.run(
            [sys.executable, "-m", "sdexec.cli.main", *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=self.env,
            timeout=STEP_TIMEOUT,
        )
        sys.stdout.buffer.write(result.stdout)
        sys.stdout.flush()
        sys.stderr.buffer.write(result.stderr)
        sys.stderr.flush()
        problem = None
        if result.returncode != code:
            problem = f"exit status {result.returncode}, expected {code}"
        elif check is not None:
            problem = check(result)
        if problem is None:
            say(f"  [exit {result.returncode}, as expected]\n")
        else:
            say(f"  [UNEXPECTED: {problem}]\n")
            self.failures.append(f"{shlex.join(['sdexec', *args])}: {problem}")
        return result

    def run_steps(self) -> None:
        self.step(
            "Run a command as a transient systemd unit; its stdout and stderr come back",
            ["exec", "--", "sh", "-c", "echo hello from $(hostname); echo to stderr >&2"],
            code=0,
            check=expect_output(b"hello from ", b"to stderr\n"),
        )
        self.step(
            "The command's exit status becomes sdexec's",
            ["exec", "--", "sh", "-c", "exit 3"],
            code=3,
        )
        self.background_running = True
        self.step(
            "Start a background process with a label; sdexec prints its pid",
            ["exec", "--bg", "--waitable", "--label", LABEL, "--", "sleep", "30"],
            code=0,
            check=expect_pid,
        )
        self.step("List the server's processes", ["ps"], code=0, check=expect_listed(True))
        self.step("Signal it by its label", ["kill", "-s", "TERM", LABEL], code=0)
        result = self.step(
            "Collect its status: killed by SIGTERM is 128+15",
            ["wait", LABEL],
            code=128 + signal.SIGTERM,
        )
        self.background_running = result.returncode != 128 + signal.SIGTERM
        self.step("Once waited for, it is gone", ["ps"], code=0, check=expect_listed(False))

    def cleanup(self) -> None:
        """Kill what the demo left running, stop the server, report its log on failure."""
        if self.server is not None and self.server.poll() is None and self.background_running:
            self.kill_leftover()
        self.stop_server()
        if self.failures:
            tail = self.server_log_tail()
            if tail:
                say("# The server's log ends with:\n" + tail)

    def kill_leftover(self) -> None:
        """Best effort: do not leave the background sleep in a user's manager
        (the server keeps background units when it stops)."""
        self.background_running = False
        for args in (["kill", "-s", "KILL", LABEL], ["wait", LABEL]):
            subprocess.run(
                [sys.executable, "-m", "sdexec.cli.main", *args],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                env=self.env,
                timeout=STEP_TIMEOUT,
                check=False,
            )


# --- checks -----------------------------------------------------------------------------------


def expect_output(stdout_prefix: bytes, stderr: bytes) -> Check:
    def check(result: subprocess.CompletedProcess[bytes]) -> str | None:
        if not result.stdout.startswith(stdout_prefix):
            return f"stdout {result.stdout!r} does not start with {stdout_prefix!r}"
        if result.stderr != stderr:
            return f"stderr {result.stderr!r}, expected {stderr!r}"
        return None

    return check


def expect_pid(result: subprocess.CompletedProcess[bytes]) -> str | None:
    if not result.stdout.strip().isdigit():
        return f"expected a pid, got {result.stdout!r}"
    return None


def expect_listed(listed: bool) -> Check:
    def check(result: subprocess.CompletedProcess[bytes]) -> str | None:
        rows = [line.split() for line in result.stdout.splitlines()[1:]]  # PID LABEL STATE CMD
        labels = [row[1] for row in rows if len(row) >= 2]
        if (LABEL.encode() in labels) != listed:
            return f"{LABEL} is {'missing from' if listed else 'still in'} the list"
        return None

    return check


# --- main --------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None, *, server_command: Sequence[str] | None = None) -> int:
    """Run the demo; returns 0 if every step behaved as expected.

    ``server_command`` replaces ``python -m sdexec.cli.main`` for the server
    (``serve ...`` is appended); tests use it to run a fake server.
    """
    parser = argparse.ArgumentParser(
        prog="python -m sdexec.cli.demo",
        description="Start an sdexec server, run a few commands through it, and clean up.",
    )
    parser.add_argument(
        "--systemd",
        choices=("user", "system", "private"),
        help="the manager for the server (default: user if a user bus exists, else private)",
    )
    args = parser.parse_args(argv)
    systemd = args.systemd or ("user" if has_user_bus() else "private")
    workdir = Path(tempfile.mkdtemp(prefix="sdexec-demo-", dir="/tmp"))  # short: sun_path
    demo = Demo(workdir, systemd, server_command)
    interrupted = False
    try:
        demo.start_server()
        demo.run_steps()
    except KeyboardInterrupt:
        interrupted = True
    except (DemoFailed, OSError, subprocess.SubprocessError) as exc:
        demo.failures.append(str(exc))
    finally:
        # A second Ctrl-C must not cut the clean-up short.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            demo.cleanup()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
            signal.signal(signal.SIGINT, previous)
    if interrupted:
        say("sdexec demo: interrupted; the server was stopped and its files removed")
        return 130
    if demo.failures:
        for failure in demo.failures:
            print(f"sdexec demo: {failure}", file=sys.stderr)
        return 1
    say("sdexec demo: every step behaved as expected")
    return 0


if __name__ == "__main__":
    sys.exit(main())
