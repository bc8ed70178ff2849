"""flux-core's limit tests inside the qemu guest (the guest's side; ``fluxbatch.py``: the host's).

It runs once at boot, as root, from the oneshot unit ``guestctl.py``
installs, and runs each program of ``flux-tests/plan.json`` as
:data:`checks.USER`, the lingering user whose manager has the controllers
delegated, as flux-core's CI runs them: from a directory of the user's own
(the sharness trash directory goes there), with the user's manager's bus,
the installed ``flux`` (``FLUX_TEST_INSTALLED_PATH``) and flux-core's build
tree for the sharness setup (:mod:`sharness_run`).  Each program is bounded
by the plan's timeout (then killed, as its whole session).  One record per
program, ``MODULE:NAME``, with its counts, exit status, seconds, the lines
of its failed tests and the log's tail; the logs stay in the image under
:data:`WORK`.  Then :func:`checks.finish` writes the records and powers off.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import checks  # noqa: E402
import sharness_run  # noqa: E402

PLAN = HERE / "flux-tests" / "plan.json"
WORK = Path("/var/lib/sdexec-guest/flux-tests")


def run_program(plan: dict[str, object], module: str, name: str, env: dict[str, str]) -> None:
    """Run one test program as the user; append its record."""
    cwd = WORK / module / name.removesuffix(".t")
    cwd.mkdir(parents=True)
    shutil.copy(HERE / "flux-tests" / module / name, cwd / name)
    tree = Path(str(plan["build_tree"]))
    (cwd / "sharness.sh").symlink_to(tree / "t" / "sharness.sh")
    shutil.chown(cwd, checks.USER, checks.USER)
    argv = ["/usr/sbin/runuser", "-u", checks.USER, "--", "/bin/sh", str(cwd / name), "-v"]
    t0 = time.monotonic()
    rc, text = sharness_run.run_logged(argv, cwd, env, float(str(plan["timeout"])))
    got = sharness_run.counts(text)
    failed = [line for line in text.splitlines() if line.startswith("not ok")]
    ok = rc == 0 and got["fail"] == 0 and got["skip"] == 0 and got["ok"] == got["plan"] > 0
    journal = ""
    if not ok:  # what the guest's kernel and systemd said meanwhile (an OOM kill, a unit)
        since = f"-{int(time.monotonic() - t0) + 5}s"
        journal = subprocess.run(
            ["journalctl", "-q", "-b", "--no-pager", f"--since={since}", "-n", "300"],
            capture_output=True, text=True, timeout=60,
        ).stdout  # fmt: skip
    checks.results.append(
        {
            "name": f"{module}:{name}",
            "ok": ok,
            "detail": f"{got['ok']}/{got['plan']} passed, {got['skip']} skipped, "
            f"{got['fail']} failed, exit {rc}" + (" (killed: timeout)" if rc == -1 else ""),
            "counts": got,
            "rc": rc,
            "failed": failed,
            "seconds": round(time.monotonic() - t0, 1),
            "tail": "\n".join(text.splitlines()[-60:]),
            "journal": journal,
        }
    )


def main() -> None:
    plan = json.loads(PLAN.read_text())
    base = checks.user_env()
    if not checks.wait_for_user_bus(base["XDG_RUNTIME_DIR"]):
        raise RuntimeError(f"{checks.USER}'s manager and its bus did not come up")
    env = sharness_run.environment(base, Path(plan["build_tree"]))
    env["PATH"] = "/usr/bin:/bin:/usr/sbin:/sbin"
    env["FLUX_TEST_INSTALLED_PATH"] = plan["bin"]
    for program in plan["programs"]:
        try:
            run_program(plan, program["module"], program["name"], env)
        except Exception:
            checks.results.append(
                {
                    "name": f"{program['module']}:{program['name']}",
                    "ok": False,
                    "detail": traceback.format_exc(limit=3),
                }
            )


if __name__ == "__main__":
    os.umask(0o022)
    try:
        main()
    except Exception:
        checks.results.append(
            {"name": "batch", "ok": False, "detail": traceback.format_exc(limit=5)}
        )
    checks.finish()
    sys.exit(0)
