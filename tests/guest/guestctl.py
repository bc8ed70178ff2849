"""A qemu guest with every cgroup controller: the place resource limits are enforced.

The test machines' memory and cpuset controllers belong to their cgroup v1
hierarchies, so a limit set there is never enforced.  A guest kernel has them
all on the unified hierarchy.  This boots one, runs the batch of checks in
``checks.py`` inside it, and brings the results back:

1. **The guest tree**, cached beside the site harness's root filesystem
   (``tests/site/rootfs.py``): that tree plus Debian's cloud kernel and its
   initramfs, keyed on the site tree's key and :data:`RECIPE`.
2. **The image**, per run: the guest tree with our ``.deb`` installed, the
   checks and a oneshot unit that runs them at boot and then powers off,
   made into an ext4 image with ``mkfs.ext4 -d``.  The tree is changed on
   an overlay in a mount namespace of its own, so nothing of it outlives
   the step, whatever happens.
3. **The boot**: ``qemu-system-x86_64`` without KVM (software emulation),
   the kernel and initramfs given directly, ``systemd.unified_cgroup_hierarchy=1``,
   the serial console in a file; bounded by :data:`BOOT_LIMIT`, after which
   qemu is killed and the run reported as hung.
4. **The results**, read from the powered-off image with ``debugfs`` (no
   mount): ``checks.py``'s JSON and the server's log.

Only qemu runs on the host, as a child of this process; the guest's systemd
is the guest's PID 1.  By hand::

    python3 tests/guest/guestctl.py DEB     # boots, prints the results JSON
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
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

UNIT = f"""[Unit]
Description=sdexec checks where limits are enforced
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/usr/bin/python3 {GUEST_DIR}/checks.py
TimeoutStartSec=480
# checks.py powers off itself once its results are on disk; a crash or a
# timeout powers off too, with whatever it wrote.
StandardOutput=journal+console
FailureAction=poweroff-immediate

[Install]
WantedBy=multi-user.target
"""


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


def make_image(tree: Path, deb: Path, work: Path) -> Image:
    """An ext4 image of ``tree`` with the .deb, the checks and their unit installed."""
    upper, ovl, merged = work / "upper", work / "ovl", work / "merged"
    for d in (upper, ovl, merged):
        d.mkdir(parents=True)
    stage = work / "stage"
    stage.mkdir()
    shutil.copy(deb, stage / "sdexec.deb")
    shutil.copy(HERE / "checks.py", stage / "checks.py")
    (stage / "sdexec-guest-checks.service").write_text(UNIT)
    image = work / "guest.img"
    in_mount_namespace(
        f"""
        mount -t overlay overlay -o lowerdir={tree},upperdir={upper},workdir={ovl} {merged}
        mount --bind /proc {merged}/proc
        cp {stage}/sdexec.deb {merged}/root/sdexec.deb
        chroot {merged} env DEBIAN_FRONTEND=noninteractive dpkg -i /root/sdexec.deb
        rm {merged}/root/sdexec.deb
        umount {merged}/proc
        mkdir -p {merged}{GUEST_DIR} {merged}/var/lib/sdexec-guest
        cp {stage}/checks.py {merged}{GUEST_DIR}/checks.py
        cp {stage}/sdexec-guest-checks.service {merged}/etc/systemd/system/
        ln -sf /etc/systemd/system/sdexec-guest-checks.service \\
            {merged}/etc/systemd/system/multi-user.target.wants/sdexec-guest-checks.service
        ln -sf /dev/null {merged}/etc/systemd/system/serial-getty@ttyS0.service
        echo guest > {merged}/etc/hostname
        chroot {merged} useradd --uid {USER_UID} --create-home --shell /bin/bash {USER}
        mkdir -p {merged}/etc/systemd/system/user@.service.d {merged}/var/lib/systemd/linger
        printf '[Service]\nDelegate={DELEGATE}\n' \
            > {merged}/etc/systemd/system/user@.service.d/delegate.conf
        touch {merged}/var/lib/systemd/linger/{USER}
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


def debugfs_cat(image: Path, path: str) -> str:
    r = subprocess.run(
        ["debugfs", "-R", f"cat {path}", str(image)], capture_output=True, timeout=60
    )
    return r.stdout.decode(errors="replace")


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
                            stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
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
