"""A qemu guest with every cgroup controller: the place resource limits are enforced.

The test machines' memory and cpuset controllers belong to their cgroup v1
hierarchies, so a limit set there is never enforced.  A guest kernel has them
all on the unified hierarchy.  This boots one, runs the batch of checks in
``checks.py`` inside it, and brings the results back:

1. **The guest tree**, cached beside the site harness's root filesystem
   (``tests/site/rootfs.py``): that tree plus Debian's cloud kernel and its
   initramfs, keyed on the site tree's key and :data:`RECIPE`.
2. **The image**, per run: the guest tree with our ``.deb`` installed, a
   :class:`Batch` (``checks.py`` by default; ``fluxbatch.py`` makes the one
   of flux-core's limit tests) and a oneshot unit that runs it at boot and
   then powers off, made into an ext4 image with ``mkfs.ext4 -d``.  The tree is changed on
   an overlay in a mount namespace of its own, so nothing of it outlives
   the step, whatever happens.
3. **The boot**: ``qemu-system-x86_64`` without KVM (software emulation),
   the kernel and initramfs given directly, ``systemd.unified_cgroup_hierarchy=1``,
   the serial console in a file; bounded by the batch's limit
   (:data:`BOOT_LIMIT` for the checks), after which qemu is killed and the
   run reported as hung; qemu also dies with the process that started it.
4. **The results**, read from the powered-off image with ``debugfs`` (no
   mount): ``checks.py``'s JSON and the server's log.

Only qemu runs on the host, as a child of this process; the guest's systemd
is the guest's PID 1.  By hand::

    python3 tests/guest/guestctl.py DEB     # boots, prints the results JSON
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "site"))

import rootfs  # noqa: E402

#: Bumped whenever the guest tree's steps change.
RECIPE = 1
KERNEL_PACKAGE = "linux-image-cloud-amd64"
IMAGE_SIZE = "3G"
BOOT_LIMIT = 600.0  # seconds for boot, checks and power-off under emulation
GUEST_DIR = "/opt/sdexec-guest"
RESULTS = "/var/lib/sdexec-guest/results.json"
SERVE_LOG = "/var/lib/sdexec-guest/serve.log"
CPUS = 4  # flux-core's cpuset tests want more than 2
#: A user whose own manager gets the controllers, as a site delegates them to
#: the flux user (lingering: the manager runs from boot on).
USER, USER_UID = "sdxuser", 1100
DELEGATE = "cpu cpuset io memory pids"

#: The oneshot unit that runs a batch at boot; {script} is a file of GUEST_DIR.
UNIT = """[Unit]
Description=sdexec checks where limits are enforced
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/usr/bin/python3 {guest_dir}/{script}
TimeoutStartSec={timeout:.0f}
# The batch powers off itself once its results are on disk; a crash or a
# timeout powers off too, with whatever it wrote.
StandardOutput=journal+console
FailureAction=poweroff-immediate

[Install]
WantedBy=multi-user.target
"""


@dataclass(frozen=True)
class Batch:
    """What a guest runs at boot, and what its image holds for it besides our ``.deb``."""

    #: The program the boot unit runs, one of ``files``.
    script: str
    #: Files and directories copied into GUEST_DIR.
    files: tuple[Path, ...]
    #: Host files and directories copied into the image at the same paths
    #: (an installed flux-core); their parents in the guest are made
    #: traversable, since the batch may read them as an unprivileged user.
    host_paths: tuple[Path, ...] = ()
    #: Files written into the image: path in the guest -> text.
    written: tuple[tuple[str, str], ...] = ()
    #: Debian packages installed into this image only (apt, from the network).
    packages: tuple[str, ...] = ()
    #: Seconds for boot, batch and power-off, after which qemu is killed.
    limit: float = BOOT_LIMIT


#: The default batch: ``checks.py``.
CHECKS = Batch("checks.py", (HERE / "checks.py",))


def missing() -> str | None:
    """Why no guest can run here, or None."""
    if os.geteuid() != 0:
        return "the guest tests need root"
    for tool in ("qemu-system-x86_64", "debootstrap", "mkfs.ext4", "debugfs", "unshare"):
        if shutil.which(tool) is None:
            return f"the guest tests need {tool} (scripts/bootstrap installs it)"
    return None


def run(cmd: list[str], timeout: float = 900, **kw: Any) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if r.returncode != 0:
        raise RuntimeError(
            f"{cmd[:4]}... exit {r.returncode}: {r.stderr[-2000:]}{r.stdout[-1000:]}"
        )
    return r


def in_mount_namespace(script: str, timeout: float = 900) -> None:
    """Run a shell ``script`` in a private mount namespace: its mounts die with it."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    run(["unshare", "--mount", "--propagation", "private", "sh", "-euc", script], timeout, env=env)


def _has_kernel(tree: Path) -> bool:
    return (tree / "boot").is_dir() and any((tree / "boot").glob("vmlinuz-*"))


def guest_tree(cache: Path = rootfs.DEFAULT_CACHE) -> Path:
    """The site tree with Debian's cloud kernel, cached (built the first time, ~1 min)."""
    name = f"guest-{rootfs.key()}-{RECIPE}"
    if _has_kernel(cache / name):  # the site tree is not needed then (nor rebuilt if gone)
        return cache / name
    base = rootfs.ensure(cache)

    def make(work: Path) -> None:
        run(["cp", "-a", "--reflink=auto", str(base), str(work)])
        in_mount_namespace(
            f"""
            for d in proc dev sys; do mount --bind /$d {work}/$d; done
            cp /etc/resolv.conf {work}/etc/resolv.conf
            chroot {work} env DEBIAN_FRONTEND=noninteractive apt-get -q update
            chroot {work} env DEBIAN_FRONTEND=noninteractive \\
                apt-get -q -y --no-install-recommends install {KERNEL_PACKAGE} initramfs-tools
            rm -f {work}/etc/resolv.conf
            """
        )
        shutil.rmtree(work / "var/cache/apt/archives", ignore_errors=True)
        (work / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)

    return rootfs.cached(cache, name, _has_kernel, make)


@dataclass
class Image:
    path: Path
    kernel: Path
    initrd: Path


def _copy_host_paths(paths: tuple[Path, ...], merged: Path) -> str:
    """Shell lines putting ``paths`` into ``merged`` at the same paths: directories bound
    read-only (mkfs copies through the binding), files copied."""
    lines = []
    for path in paths:
        dst = shlex.quote(f"{merged}{path}")
        if path.is_dir() and not path.is_symlink():
            lines.append(f"mkdir -p {dst} && mount --bind -o ro {shlex.quote(str(path))} {dst}")
        else:
            lines.append(f"mkdir -p {shlex.quote(f'{merged}{path.parent}')}")
            lines.append(f"cp -a {shlex.quote(str(path))} {dst}")
        for parent in path.parents:
            if parent != Path("/"):
                lines.append(f"chmod a+x {shlex.quote(f'{merged}{parent}')}")
    return "\n".join(lines)


def make_image(tree: Path, deb: Path, work: Path, batch: Batch = CHECKS) -> Image:
    """An ext4 image of ``tree`` with the .deb, the ``batch`` and its boot unit installed."""
    upper, ovl, merged = work / "upper", work / "ovl", work / "merged"
    for d in (upper, ovl, merged):
        d.mkdir(parents=True)
    stage = work / "stage"
    (stage / "guest").mkdir(parents=True)
    (stage / "root").mkdir()
    shutil.copy(deb, stage / "sdexec.deb")
    for f in batch.files:
        if f.is_dir():
            shutil.copytree(f, stage / "guest" / f.name, symlinks=True)
        else:
            shutil.copy(f, stage / "guest" / f.name)
    unit = UNIT.format(guest_dir=GUEST_DIR, script=batch.script, timeout=batch.limit - 60)
    written = (("/etc/systemd/system/sdexec-guest-checks.service", unit), *batch.written)
    for path, text in written:
        (stage / "root" / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (stage / "root" / path.lstrip("/")).write_text(text)
    packages = (
        f"""
        cp /etc/resolv.conf {merged}/etc/resolv.conf
        chroot {merged} env DEBIAN_FRONTEND=noninteractive \\
            apt-get -q -y --no-install-recommends install {shlex.join(batch.packages)}
        rm -f {merged}/etc/resolv.conf
        rm -rf {merged}/var/cache/apt/archives/*.deb
        """
        if batch.packages
        else ""
    )
    image = work / "guest.img"
    in_mount_namespace(
        f"""
        mount -t overlay overlay -o lowerdir={tree},upperdir={upper},workdir={ovl} {merged}
        mount --bind /proc {merged}/proc
        mount --bind /dev {merged}/dev
        cp {stage}/sdexec.deb {merged}/root/sdexec.deb
        chroot {merged} env DEBIAN_FRONTEND=noninteractive dpkg -i /root/sdexec.deb
        rm {merged}/root/sdexec.deb
        {packages}
        umount {merged}/dev
        umount {merged}/proc
        mkdir -p {merged}{GUEST_DIR} {merged}/var/lib/sdexec-guest
        cp -a {stage}/guest/. {merged}{GUEST_DIR}/
        cp -a {stage}/root/. {merged}/
        ln -sf /etc/systemd/system/sdexec-guest-checks.service \\
            {merged}/etc/systemd/system/multi-user.target.wants/sdexec-guest-checks.service
        ln -sf /dev/null {merged}/etc/systemd/system/serial-getty@ttyS0.service
        echo guest > {merged}/etc/hostname
        # The tree has no /etc/hosts; a Flux instance of more than one
        # broker resolves the host's name.
        printf '127.0.0.1 localhost\\n127.0.1.1 guest\\n' > {merged}/etc/hosts
        chroot {merged} useradd --uid {USER_UID} --create-home --shell /bin/bash {USER}
        mkdir -p {merged}/etc/systemd/system/user@.service.d {merged}/var/lib/systemd/linger
        printf '[Service]\\nDelegate={DELEGATE}\\n' \\
            > {merged}/etc/systemd/system/user@.service.d/delegate.conf
        touch {merged}/var/lib/systemd/linger/{USER}
        {_copy_host_paths(batch.host_paths, merged)}
        chroot {merged} ldconfig -X
        mkfs.ext4 -q -F -L sdexec-guest -d {merged} {image} {IMAGE_SIZE}
        """
    )
    kernels = sorted((tree / "boot").glob("vmlinuz-*"))
    initrds = sorted((tree / "boot").glob("initrd.img-*"))
    if not kernels or not initrds:
        raise RuntimeError(f"no kernel or initramfs in {tree}/boot")
    return Image(image, kernels[-1], initrds[-1])


@dataclass
class Boot:
    """What one boot gave: the checks' records, timings, and the console for failures."""

    results: list[dict[str, Any]]
    seconds: float
    hung: bool
    console: str
    serve_log: str

    def record(self, name: str) -> dict[str, Any]:
        """The record ``name`` the guest wrote (a test fails with the console if there is none)."""
        assert not self.hung, "the guest hung and was killed:\n" + self.console[-3000:]
        found = [r for r in self.results if r["name"] == name]
        assert found, f"no record {name!r}: {self.results}\n{self.console[-3000:]}"
        return found[0]


def debugfs_cat(image: Path, path: str) -> str:
    r = subprocess.run(
        ["debugfs", "-R", f"cat {path}", str(image)], capture_output=True, timeout=60
    )
    return r.stdout.decode(errors="replace")


def _die_with_parent() -> None:
    """In qemu, before its exec: be killed if this process dies (no guest outlives a run)."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


def boot(img: Image, work: Path, limit: float = BOOT_LIMIT) -> Boot:
    """Boot the image until the guest powers off (or ``limit``: then it is killed)."""
    console = work / "console.log"
    argv = [
        "qemu-system-x86_64",
        "-accel", "tcg",
        "-cpu", "max",
        "-smp", str(CPUS),
        "-m", "2048",
        "-kernel", str(img.kernel),
        "-initrd", str(img.initrd),
        "-append", "root=/dev/vda rw console=ttyS0 systemd.unified_cgroup_hierarchy=1 panic=-1",
        "-drive", f"file={img.path},format=raw,if=virtio",
        "-display", "none",
        "-monitor", "none",
        "-serial", f"file:{console}",
        "-nic", "none",
        "-no-reboot",
    ]  # fmt: skip
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=_die_with_parent)  # fmt: skip
    hung = False
    try:
        proc.wait(limit)
    except subprocess.TimeoutExpired:
        hung = True
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # qemu, which this process started
            proc.wait(30)
    seconds = time.monotonic() - started
    text = debugfs_cat(img.path, RESULTS)
    try:
        results = json.loads(text) if text.strip() else []
    except ValueError:
        results = []
    return Boot(
        results,
        seconds,
        hung,
        console.read_text(errors="replace") if console.exists() else "",
        debugfs_cat(img.path, SERVE_LOG),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("deb", type=Path)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args(argv)
    reason = missing()
    if reason:
        print(reason, file=sys.stderr)
        return 1
    work = args.work or Path(f"/var/tmp/sdexec-guest-{os.getpid()}")
    work.mkdir(parents=True)
    try:
        t0 = time.monotonic()
        tree = guest_tree()
        t1 = time.monotonic()
        img = make_image(tree, args.deb, work)
        t2 = time.monotonic()
        result = boot(img, work)
        print(json.dumps(result.results, indent=1))
        print(
            f"tree {t1 - t0:.0f} s, image {t2 - t1:.0f} s, boot and checks {result.seconds:.0f} s"
            + (" (hung: killed)" if result.hung else ""),
            file=sys.stderr,
        )
        return 0 if result.results and all(r["ok"] for r in result.results) else 1
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
