"""The getting-started page's "Try it" block runs as written, top to bottom;
so does the README's Usage block, the same commands.

Each block is read from its page (``docs/getting-started.md``, ``README.md``).
Its first line starts the server (``sdexec serve &``: the default manager,
which here, as root without a user manager, is the embedded private one);
each other line is run by bash, in order, and must succeed.  The only thing
given is what the page says a reader does first: ``sdexec`` on ``PATH``
(``.venv/bin``).
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

from sdexec.systemd.private import PrivateManager

# (page, the heading of the section whose first sh block is run)
BLOCKS = {
    "getting-started": ("docs/getting-started.md", "## Try it"),
    "readme": ("README.md", "## Usage"),
}


def try_it_block(name: str) -> list[str]:
    """The command lines of the first ``sh`` block under the page's heading."""
    page, heading = BLOCKS[name]
    text = (REPO / page).read_text()
    section = text.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None
    return [line for line in block.group(1).splitlines() if line.strip() and line[0] != " "]


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_the_block_is_the_one_this_test_knows(name: str) -> None:
    lines = try_it_block(name)
    assert lines[0].startswith("sdexec serve &")
    assert all(line.startswith("sdexec ") for line in lines)
    words = [line.split()[1] for line in lines]
    assert words == [
        "serve", "exec", "exec", "exec", "ps", "ps", "top", "kill", "attach", "wait", "logs"
    ]  # fmt: skip


def test_the_readme_shows_the_getting_started_commands() -> None:
    """The README's Usage block is the getting-started block (comments may differ)."""

    def commands(name: str) -> list[str]:
        return [line.split("  #")[0].rstrip() for line in try_it_block(name)]

    assert commands("readme") == commands("getting-started")


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_the_block_runs_as_written(workdir: Path, name: str) -> None:
    """Run in a mount namespace of its own with an empty ``/run/sdexec``, so that
    ``sdexec serve`` and the commands meet on the default socket, as written."""
    here = workdir / f"try-it-{name}"
    here.mkdir()
    bindir = Path(sys.executable).parent
    assert (bindir / "sdexec").exists(), "getting started puts .venv/bin on PATH"
    serve, *rest = try_it_block(name)
    probe = "import socket; socket.socket(socket.AF_UNIX).connect('/run/sdexec/local')"
    script = [
        "mount -t tmpfs -o mode=0755 sdexec-try-it /run/sdexec",
        f"cd {here}",
        f"{{ {serve}\n}} >serve.log 2>&1",
        "server=$!",
        "echo $server >serve.pid",
        f"until {sys.executable} -c {shlex.quote(probe)} 2>/dev/null; do",
        "  kill -0 $server || exit 99; sleep 0.05",
        "done",
    ]
    for n, line in enumerate(rest):
        script.append(f"( {line}\n) >out.{n} 2>err.{n} </dev/null; echo $? >rc.{n}")
    script += [
        "XDG_RUNTIME_DIR=/run/sdexec/local.state/systemd systemctl --user list-units"
        " --all --no-legend 'sdexec-*' >units.out 2>&1; echo $? >units.rc",
        "kill -TERM $server; wait $server; echo $? >serve.rc",
        f"{sys.executable} -c {shlex.quote(LEFT)} >manager.left",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SDEXEC_", "XDG_", "DBUS_"))}
    env["PATH"] = f"{bindir}:{env.get('PATH', '/usr/bin:/bin')}"
    env["PYTHONPATH"] = str(REPO)
    made = not os.path.isdir("/run/sdexec")
    os.makedirs("/run/sdexec", exist_ok=True)
    try:
        r = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "bash", "-c", "\n".join(script)],
            env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    finally:
        _stop_what_is_left(here)
        if made:
            with contextlib.suppress(OSError):
                os.rmdir("/run/sdexec")
    assert r.returncode == 0, (r.stdout, r.stderr, (here / "serve.log").read_text())
    for n, line in enumerate(rest):
        rc = (here / f"rc.{n}").read_text().strip()
        assert rc == "0", (line, (here / f"out.{n}").read_text(), (here / f"err.{n}").read_text())
    out = [(here / f"out.{n}").read_text() for n in range(len(rest))]
    hostname, env_and_dir, pid, ps, stats, top, _kill, attach, _wait, logs = out
    assert hostname == os.uname().nodename + "\n"
    assert env_and_dir == "A=1 in /tmp\n"
    assert pid.strip().isdigit()
    assert all(pid.strip() in table and "job1" in table for table in (ps, stats, top))
    assert attach == "working\nstopping\n"
    assert logs == "working\nstopping\n"
    assert (here / "units.rc").read_text().strip() == "0", (here / "units.out").read_text()
    assert (here / "serve.rc").read_text().strip() == "0"
    assert (here / "manager.left").read_text().strip() == "no manager left"
    assert "Traceback" not in (here / "serve.log").read_text(errors="replace")


def _stop_what_is_left(here: Path) -> None:
    """A run cut short: stop its server (by the pid it wrote) and its manager."""
    with contextlib.suppress(OSError, ValueError):
        pid = int((here / "serve.pid").read_text())
        if (here / "serve.rc").exists():
            return
        os.kill(pid, signal.SIGTERM)
        for _ in range(600):
            os.kill(pid, 0)
            time.sleep(0.05)
    manager = PrivateManager(Path("/run/sdexec/local.state"))
    if manager.slice.exists():
        manager.stop()


LEFT = """
from pathlib import Path
from sdexec.systemd.private import PrivateManager
m = PrivateManager(Path("/run/sdexec/local.state"))
if m.pid() is None and not m.slice.exists():
    print("no manager left")
else:
    m.stop()
    print("manager left running")
"""
