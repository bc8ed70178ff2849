"""Real Flux instances for the tests: ``flux start --test-size=N`` on a confined systemd.

Which flux-core: an installed one, found as :mod:`fluxcore` says.  Without
one the Flux tests skip with one line saying how to enable them, unless
``SDEXEC_REQUIRE_FLUX=1`` (a developer's opt-in) makes that a failure.

An instance runs ``flux start`` in a session of its own with an initial
program that waits for its standard input to close; :meth:`FluxInstance.stop`
closes it, so the instance shuts down the normal way (rc3 unloads the
modules), and only if that does not end it in time is the session (the
processes this test started, by their process group) killed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import fluxcore
import pytest
import sharness_run

from sdexec.systemd.private import PrivateManager

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "sdexec" / "flux" / "module.py"


def units(manager: PrivateManager, pattern: str = "sdexec-*") -> list[str]:
    """The manager's loaded units matching ``pattern``, in any state."""
    out = subprocess.run(
        ["systemctl", "--user", "list-units", "--all", "--plain", "--no-legend", pattern],
        env=manager.env(),
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def release_units(manager: PrivateManager, names: set[str]) -> None:
    """Stop and reset units a test left (a failed one stays loaded until reset)."""
    for unit in sorted(names):
        for verb in ("stop", "reset-failed"):
            subprocess.run(
                ["systemctl", "--user", verb, unit],
                env=manager.env(),
                capture_output=True,
                timeout=60,
            )


def required() -> bool:
    return os.environ.get("SDEXEC_REQUIRE_FLUX") == "1"


def flux_or_skip() -> str:
    """The ``flux`` command to test against; skips (or fails, if required) without one."""
    core, line = fluxcore.find()
    if core is None:
        if required():
            pytest.fail(f"SDEXEC_REQUIRE_FLUX=1, but {line}")
        pytest.skip(line)
    return core.flux


def flux_core_source() -> Path:
    """flux-core's build tree, for its own tests; skips (or fails) without one."""
    flux_or_skip()
    core, line = fluxcore.find()
    assert core is not None
    if core.build_tree is None:
        if required():
            pytest.fail(f"SDEXEC_REQUIRE_FLUX=1, but {line}")
        pytest.skip(f"{line}; {fluxcore.HOW}")
    return core.build_tree


def sharness_env(flux_core: Path, manager: PrivateManager) -> dict[str, str]:
    """The environment flux-core's sharness tests run in, from its build tree, on ``manager``."""
    env = sharness_run.environment(manager.env(), flux_core)
    env["SDEXEC_JOURNAL_DIR"] = str(manager.journal_dir)
    return env


@dataclass
class FluxInstance:
    """One ``flux start --test-size=N`` with sdexec's environment."""

    flux: str
    manager: PrivateManager
    workdir: Path
    size: int = 4
    config: str = ""
    proc: subprocess.Popen[bytes] | None = None
    uri: str = ""
    extra_env: dict[str, str] = field(default_factory=dict)
    #: The source tree on the instance's PYTHONPATH (off to test an install's own layout).
    source_on_path: bool = True
    broker_args: list[str] = field(default_factory=list)

    @property
    def log_path(self) -> Path:
        return self.workdir / "broker.log"

    def env(self, **extra: str) -> dict[str, str]:
        env = self.manager.env()
        for name in ("NOTIFY_SOCKET", "INVOCATION_ID", "FLUX_URI", "FLUX_CONFIG"):
            env.pop(name, None)
        env["SDEXEC_JOURNAL_DIR"] = str(self.manager.journal_dir)
        if self.source_on_path:
            env["PYTHONPATH"] = str(REPO)
        else:
            env.pop("PYTHONPATH", None)
        env["PATH"] = os.pathsep.join([str(Path(self.flux).parent), env.get("PATH", os.defpath)])
        env.update(self.extra_env)
        if self.uri:
            env["FLUX_URI"] = self.uri
        env.update(extra)
        return env

    def start(self, timeout: float = 120.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "conf"
        conf.mkdir(exist_ok=True)
        (conf / "sdexec.toml").write_text(self.config)
        uri_file = self.workdir / "uri"
        uri_file.unlink(missing_ok=True)
        wait_for_stdin = 'echo "$FLUX_URI" > "$0.tmp" && mv "$0.tmp" "$0" && exec cat >/dev/null'
        self.proc = subprocess.Popen(
            [
                self.flux,
                "start",
                f"--test-size={self.size}",
                f"--config-path={conf}",
                f"-Slog-filename={self.log_path}",
                "-Slog-forward-level=7",
                *self.broker_args,
                "sh",
                "-c",
                wait_for_stdin,
                str(uri_file),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=open(self.workdir / "start.err", "ab"),  # noqa: SIM115 - the child owns it
            env=self.env(),
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while not uri_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"flux start exited with {self.proc.returncode}: {self.tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"flux start did not come up in {timeout}s: {self.tail()}")
            time.sleep(0.05)
        self.uri = uri_file.read_text().strip()

    def stop(self, timeout: float = 60.0) -> int:
        """Shut the instance down (rc3 runs); kill what is left of it after ``timeout``."""
        proc = self.proc
        if proc is None:
            return 0
        with contextlib.suppress(OSError):
            assert proc.stdin is not None
            proc.stdin.close()
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            rc = -signal.SIGKILL
        # Brokers of a test instance are children of flux start: in its
        # session; whatever survived is killed there (only what we started).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        self.proc = None
        self.uri = ""
        return rc

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            text = ""
        with contextlib.suppress(FileNotFoundError):
            text += (self.workdir / "start.err").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def run(
        self, *args: str, timeout: float = 120, input: bytes | None = None, **env: str
    ) -> subprocess.CompletedProcess[str]:
        """A command inside the instance (``flux ...``, ``sdexec ...`` or anything)."""
        argv = list(args)
        if argv[0] == "flux":
            argv[0] = self.flux
        elif argv[0] == "sdexec":
            argv[:1] = [sys.executable, "-m", "sdexec.cli.main"]
        return subprocess.run(
            argv,
            env=self.env(**env),
            input=input.decode() if input is not None else None,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=None if input is not None else subprocess.DEVNULL,
        )

    def must(self, *args: str, timeout: float = 120, **env: str) -> str:
        """:meth:`run`, asserting success; its standard output."""
        r = self.run(*args, timeout=timeout, **env)
        assert r.returncode == 0, f"{args}: rc={r.returncode}\n{r.stdout}\n{r.stderr}"
        return r.stdout

    def load_sdexec(self, ranks: str = "all", *args: str) -> None:
        self.must(
            "flux",
            "exec",
            "-r",
            ranks,
            "flux",
            "module",
            "load",
            "--name=sdexec",
            str(MODULE),
            *args,
        )

    def remove_sdexec(self, ranks: str = "all") -> None:
        self.must("flux", "exec", "-r", ranks, "flux", "module", "remove", "sdexec")

    def dmesg(self) -> str:
        return self.run("flux", "dmesg").stdout
