"""A Debian 12 root filesystem made from Debian's packages, built once per machine.

The system-instance harness (``sitectl.py``) boots its nodes from it, and a
qemu guest can be made from the same tree.  It holds Debian's packages only:
systemd as PID 1, D-Bus, munge, Python with sdexec's Debian dependencies,
and the shared libraries that flux-core and flux-security link against (they
themselves are bind-mounted from the host at run time, never put in here).

The tree is cached as ``<cache>/rootfs-<key>`` where the key is a digest of
what went into it (suite, variant, package list, and :data:`RECIPE`, bumped
when the steps below change), so a changed package list makes a new tree
and an unchanged one costs nothing.  It is built in a temporary directory
beside the cache entry and renamed into place only when complete; a
``flock`` on ``<cache>/lock`` keeps two builders from racing.  Older entries
are removed once a new one is in place.

By hand::

    python3 tests/site/rootfs.py            # prints the tree's path, building it if needed
    python3 tests/site/rootfs.py --key      # prints only the key
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
VARIANT = "minbase"
#: Bumped whenever the build steps change what ends up in the tree.
RECIPE = 1
DEFAULT_CACHE = Path(os.environ.get("SDEXEC_SITE_CACHE", "/var/cache/sdexec-site"))

#: What every node needs: systemd as PID 1 with logind (linger) and a user bus.
SYSTEM = [
    "systemd",
    "systemd-sysv",
    "dbus",
    "dbus-user-session",
    "libpam-systemd",
    "libnss-systemd",
    "iproute2",
    "procps",
    "passwd",
    "munge",
]
#: sdexec's own dependencies, as its .deb declares them, so installing the
#: .deb needs no network.
SDEXEC = ["python3", "python3-dbus-fast", "python3-structlog", "python3-zmq"]
#: The libraries an installed flux-core and flux-security use (they are
#: bind-mounted, their dependencies are not): lua for the job shell, Python
#: with cffi and yaml for flux's commands and Python modules.
FLUX_RUNTIME = [
    "libzmq5",
    "libjansson4",
    "libhwloc15",
    "libsodium23",
    "libuuid1",
    "libarchive13",
    "libsqlite3-0",
    "liblz4-1",
    "libncursesw6",
    "libsystemd0",
    "libmunge2",
    "libpam0g",
    "libpython3.11",
    "liblua5.3-0",
    "lua5.3",
    "lua-posix",
    "python3-cffi-backend",
    "python3-yaml",
    "python3-ply",
]
#: What flux-core's own system-instance tests (its t/t9000-system.t) use on a node.
FLUX_TESTSUITE = ["jq", "sudo"]
PACKAGES = sorted({*SYSTEM, *SDEXEC, *FLUX_RUNTIME, *FLUX_TESTSUITE})


def key(packages: Sequence[str] = PACKAGES) -> str:
    """The cache key of a tree made of ``packages``."""
    text = "\n".join([SUITE, VARIANT, str(RECIPE), *sorted(packages)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@contextlib.contextmanager
def _locked(cache: Path) -> Iterator[None]:
    cache.mkdir(parents=True, exist_ok=True)
    fd = os.open(cache / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _configure(root: Path) -> None:
    """What makes the tree a node rather than a chroot: no host identity baked in."""
    # systemd makes a machine id at each boot when the file is empty, and
    # nspawn sets the hostname; neither must come from the build.
    (root / "etc/machine-id").write_text("")
    with contextlib.suppress(FileNotFoundError):
        (root / "var/lib/dbus/machine-id").unlink()
    with contextlib.suppress(FileNotFoundError):
        (root / "etc/hostname").unlink()
    # Nothing to do on a container's console; apt's caches are not needed.
    for unit in ("getty@tty1.service", "console-getty.service"):
        (root / "etc/systemd/system" / unit).unlink(missing_ok=True)
        os.symlink("/dev/null", root / "etc/systemd/system" / unit)
    shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
    (root / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
    for lists in (root / "var/lib/apt/lists").glob("*_Packages"):
        lists.unlink()


def build(dest: Path, packages: Sequence[str] = PACKAGES, log: Path | None = None) -> None:
    """Run debootstrap into ``dest`` (which must not exist)."""
    cmd = [
        "debootstrap",
        f"--variant={VARIANT}",
        "--include=" + ",".join(packages),
        SUITE,
        str(dest),
        MIRROR,
    ]
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115
    try:
        result = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False)
    finally:
        if log:
            out.close()  # type: ignore[union-attr]
    if result.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:] if log else ""
        raise RuntimeError(f"debootstrap failed ({result.returncode}):\n{tail}")
    _configure(dest)


def cached(
    cache: Path, name: str, ready: Callable[[Path], bool], make: Callable[[Path], None]
) -> Path:
    """``cache/name``, made by ``make(work)`` unless ``ready`` finds it there.

    ``work`` is a temporary directory beside it, renamed into place when
    ``make`` is done, under the cache's lock; then the older trees of the same
    kind (``name`` up to its first ``-``) are removed.
    """
    tree = cache / name
    if ready(tree):
        return tree
    with _locked(cache):
        if ready(tree):
            return tree
        work = cache / f".build-{name}-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        started = time.monotonic()
        try:
            make(work)
            work.rename(tree)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(f"built {tree} in {time.monotonic() - started:.0f} s", file=sys.stderr)
        kind = name.split("-", 1)[0]
        for old in cache.glob(f"{kind}-*"):
            if old != tree:
                shutil.rmtree(old, ignore_errors=True)
    return tree


def ensure(cache: Path = DEFAULT_CACHE, packages: Sequence[str] = PACKAGES) -> Path:
    """The cached tree for ``packages``, built first if there is none."""
    if shutil.which("debootstrap") is None:
        raise RuntimeError("debootstrap not found (Debian package debootstrap; scripts/bootstrap)")
    log = cache / f"build-{key(packages)}.log"
    return cached(
        cache,
        f"rootfs-{key(packages)}",
        lambda tree: (tree / "etc/os-release").is_file(),
        lambda work: build(work, packages, log=log),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--key", action="store_true", help="print the cache key only")
    args = parser.parse_args(argv)
    if args.key:
        print(key())
        return 0
    print(ensure(args.cache))
    return 0


if __name__ == "__main__":
    sys.exit(main())
