"""flux-core's limit tests in the qemu guest: what goes into its image (the host's side).

flux-core's ``t2410-sdexec-memlimit.t`` and ``t2416-sdexec-constrain-resources.t``
skip on the test machines (their memory and cpuset controllers are not on the
unified hierarchy); in the guest they run for real.  This makes the
:class:`guestctl.Batch` for one boot that runs them, for each module asked
for, with ``fluxtests.py`` (the guest's side):

- the installed flux-core and flux-security (the one :mod:`fluxcore` finds)
  and its build tree (its ``t/`` and the ``flux`` there, which the sharness
  setup runs), copied into the image at the same paths, with
  ``/etc/flux/shell`` and ``/etc/flux/modprobe``; nothing of it is kept
  after the run;
- a signing configuration of flux-security for a single-user instance;
- Debian's ``stress``, which t2410's out-of-memory cases run, and
  ``hwloc-nox``, whose ``hwloc-ls`` one case of t2416 wants;
- the test programs, copied from the build tree: for our module (``sdexec``)
  with one added line that writes ``config/sdexec-module.toml`` beside their
  ``config.toml``, ``[modules.sdexec] module = <our .deb's module>`` (they
  load sdexec from ``[systemd] enable``, and rewrite ``config.toml`` on each
  reconfiguration, while a broker reads every file of its config
  directory); for flux-core's own module (``c``) unchanged.

By hand (as root; prints the records and the times)::

    python3 tests/guest/fluxbatch.py DEB [--module sdexec] [--module c]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent), str(HERE.parent / "integration")]

import fluxcore  # noqa: E402
import guestctl  # noqa: E402
import sitectl  # noqa: E402  (guestctl puts tests/site on the path)

#: test program -> how many tests it has (flux-core 0.88).
TESTS = {"t2410-sdexec-memlimit.t": 18, "t2416-sdexec-constrain-resources.t": 26}
MODULES = ("sdexec", "c")
#: Seconds each program may run in the guest (about 4 minutes each measured).
PROGRAM_TIMEOUT = 1200.0
#: The guest's own boot and power-off, beside the programs.
BOOT_ROOM = 300.0
#: flux-core installed under its prefix: what a test instance of it uses.
PREFIX_PARTS = (
    "bin/flux",
    "lib/libflux-*",
    "lib/flux",
    "lib/lua",
    "lib/python3*/site-packages",
    "libexec/flux",
    "share/flux",
    "share/lua",
)
#: Jobs of the instance owner are signed "none"; flux-security wants its
#: [sign] table all the same.
SIGN = """[sign]
max-ttl = 1209600
default-type = "none"
allowed-types = [ "none" ]
"""
MKDIR_CONFIG = re.compile(r"^mkdir -p config$")
MODULE_CONFIG = f"""cat >config/sdexec-module.toml <<'SDEXEC_EOT'
[modules.sdexec]
module = "{sitectl.OUR_MODULE}"
SDEXEC_EOT
"""


def missing() -> str | None:
    """Why these tests cannot run here, or None."""
    reason = guestctl.missing()
    if reason:
        return reason
    core, line = fluxcore.find()
    if core is None or core.build_tree is None:
        return f"flux-core's limit tests in the guest: {line}"
    for name in TESTS:
        if not (core.build_tree / "t" / name).is_file():
            return f"flux-core's limit tests in the guest: no t/{name} in {core.build_tree}"
    return None


def with_our_module(src: Path, dst: Path) -> None:
    """``src`` with the line that makes its instances load our module."""
    lines = src.read_text().splitlines(keepends=True)
    hits = [i for i, line in enumerate(lines) if MKDIR_CONFIG.match(line.rstrip("\n"))]
    if len(hits) != 1:
        raise RuntimeError(f"{src.name}: expected one 'mkdir -p config', found {len(hits)}")
    lines.insert(hits[0] + 1, MODULE_CONFIG)
    dst.write_text("".join(lines))
    dst.chmod(0o755)


def installed_paths(core: fluxcore.FluxCore) -> tuple[Path, ...]:
    """flux-core's files under its prefix, its build tree, and its shared /etc/flux entries."""
    prefix = Path(core.flux).resolve().parents[1]
    found = [p for part in PREFIX_PARTS for p in sorted(prefix.glob(part))]
    etc = [sitectl.FLUX_SYSCONF / e for e in sitectl.FLUX_ETC_SHARED]
    assert core.build_tree is not None
    return (*found, *(p for p in etc if p.exists()), core.build_tree.resolve())


def batch(core: fluxcore.FluxCore, modules: tuple[str, ...], stage: Path) -> guestctl.Batch:
    """The guest's batch: ``fluxtests.py`` running TESTS for each of ``modules``."""
    assert core.build_tree is not None
    tree = core.build_tree.resolve()
    programs = stage / "flux-tests"
    for module in modules:
        (programs / module).mkdir(parents=True)
        for name in TESTS:
            src, dst = tree / "t" / name, programs / module / name
            if module == "sdexec":
                with_our_module(src, dst)
            else:
                shutil.copy(src, dst)
    runs = [{"module": m, "name": n} for m in modules for n in TESTS]
    plan = {
        "build_tree": str(tree),
        "bin": str(Path(core.flux).resolve().parent),
        "timeout": PROGRAM_TIMEOUT,
        "programs": runs,
    }
    (programs / "plan.json").write_text(json.dumps(plan, indent=1) + "\n")
    return guestctl.Batch(
        script="fluxtests.py",
        files=(
            HERE / "fluxtests.py",
            HERE / "checks.py",
            HERE.parent / "integration" / "sharness_run.py",
            programs,
        ),
        host_paths=installed_paths(core),
        written=(("/etc/flux/security/conf.d/sign.toml", SIGN),),
        packages=("stress", "hwloc-nox"),
        limit=BOOT_ROOM + PROGRAM_TIMEOUT * len(runs),
    )


def run(deb: Path, modules: tuple[str, ...], work: Path) -> tuple[guestctl.Boot, dict[str, float]]:
    """Make the image in ``work``, boot it; the boot's records and the steps' seconds."""
    core, _ = fluxcore.find()
    assert core is not None
    t0 = time.monotonic()
    tree = guestctl.guest_tree()
    t1 = time.monotonic()
    b = batch(core, modules, work / "batch")
    img = guestctl.make_image(tree, deb, work, b)
    t2 = time.monotonic()
    booted = guestctl.boot(img, work, b.limit)
    return booted, {"tree": t1 - t0, "image": t2 - t1, "boot": booted.seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("deb", type=Path)
    parser.add_argument("--module", action="append", choices=MODULES)
    args = parser.parse_args(argv)
    reason = missing()
    if reason:
        print(reason, file=sys.stderr)
        return 1
    work = Path(f"/var/tmp/sdexec-guest-{os.getpid()}")
    work.mkdir()
    try:
        booted, times = run(args.deb, tuple(args.module or ["sdexec"]), work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for r in booted.results:
        print(json.dumps({k: v for k, v in r.items() if k != "tail"}))
        if not r["ok"] and r.get("tail"):
            print(r["tail"] + "\n--- the guest's journal meanwhile:\n" + r.get("journal", ""))
    print(
        ", ".join(f"{k} {v:.0f} s" for k, v in times.items())
        + (" (hung: killed)" if booted.hung else ""),
        file=sys.stderr,
    )
    return 0 if booted.results and all(r["ok"] for r in booted.results) else 1


if __name__ == "__main__":
    sys.exit(main())
