"""``packaging/``: the Debian package builds, passes lintian, and holds what it must.

The package is the real ``packaging/build-deb``'s (``dpkg-buildpackage -us
-uc -b`` on a copy of this tree), built once per session (conftest), about
10-20 s.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from sdexec.cli.parser import build_parser

# Every subcommand the parser has (a man page each), and at least these.
COMMANDS = tuple(name for name in build_parser()[1] if " " not in name)
assert {"exec", "kill", "wait", "ps", "serve", "perilog"} <= set(COMMANDS)


@pytest.fixture(scope="module")
def built(debian_package: Path) -> Path:
    return debian_package.parent


def deb(out: Path) -> Path:
    (path,) = out.glob("sdexec_*_all.deb")
    return path


def file_list(out: Path) -> set[str]:
    r = subprocess.run(
        ["dpkg-deb", "--fsys-tarfile", str(deb(out))], capture_output=True, check=True
    )
    names = subprocess.run(["tar", "-t"], input=r.stdout, capture_output=True, check=True)
    return {line.removeprefix(".") for line in names.stdout.decode().splitlines()}


def test_lintian_reports_no_errors(built: Path) -> None:
    (changes,) = built.glob("sdexec_*.changes")
    r = subprocess.run(
        ["lintian", "--fail-on", "error", str(deb(built)), str(changes)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert not [line for line in r.stdout.splitlines() if line.startswith("E:")]


def test_deb_holds_the_sdexec_command(built: Path) -> None:
    files = file_list(built)
    assert "/usr/bin/sdexec" in files
    assert "/usr/lib/python3/dist-packages/sdexec/cli/main.py" in files
    assert "/usr/lib/python3/dist-packages/sdexec/cluster/perilog.py" in files
    # The Flux broker module, at the path `sdexec flux-module-path` prints there.
    assert "/usr/lib/python3/dist-packages/sdexec/flux/module.py" in files


def test_packaged_command_is_our_lean_script_run_by_python3_without_site(built: Path) -> None:
    r = subprocess.run(
        ["dpkg-deb", "--fsys-tarfile", str(deb(built))], capture_output=True, check=True
    )
    with tarfile.open(fileobj=io.BytesIO(r.stdout)) as tar:
        member = tar.getmember("./usr/bin/sdexec")
        script = tar.extractfile(member)
        assert script is not None
        text = script.read().decode()
    assert member.mode & 0o111
    assert text.splitlines()[0] == "#!/usr/bin/python3 -S"  # no site module: see bin/sdexec
    assert "from sdexec.cli.main import run" in text
    assert "import re" not in text  # not a generated wrapper: see bin/sdexec


def test_deb_holds_system_and_user_units(built: Path) -> None:
    files = file_list(built)
    for variant in ("system", "user"):
        for unit in ("sdexec.service", "sdexec.socket"):
            assert f"/usr/lib/systemd/{variant}/{unit}" in files


def test_deb_holds_a_man_page_per_command(built: Path) -> None:
    files = file_list(built)
    assert "/usr/share/man/man1/sdexec.1.gz" in files
    for command in COMMANDS:
        assert f"/usr/share/man/man1/sdexec-{command}.1.gz" in files


def test_deb_depends_on_systemd_and_python(built: Path) -> None:
    r = subprocess.run(
        ["dpkg-deb", "-f", str(deb(built)), "Depends"], capture_output=True, text=True, check=True
    )
    depends = [d.strip().split()[0] for d in r.stdout.split(",")]
    assert "python3:any" in depends or "python3" in depends
    assert "systemd" in depends


def maintainer_scripts(out: Path) -> dict[str, str]:
    """The .deb's maintainer scripts (postinst, prerm, ...) by name."""
    r = subprocess.run(
        ["dpkg-deb", "--ctrl-tarfile", str(deb(out))], capture_output=True, check=True
    )
    scripts = {}
    with tarfile.open(fileobj=io.BytesIO(r.stdout)) as tar:
        for member in tar.getmembers():
            name = member.name.removeprefix("./")
            if name in ("preinst", "postinst", "prerm", "postrm"):
                f = tar.extractfile(member)
                assert f is not None
                scripts[name] = f.read().decode()
    return scripts


def test_a_fresh_install_enables_and_starts_no_unit(built: Path, tmp_path: Path) -> None:
    """The docs say the units are installed, not enabled: the administrator picks one.

    The real postinst runs with stand-ins for the helpers it calls, which
    answer as on a machine that never had the package (deb-systemd-helper's
    ``was-enabled`` is true then, ``debian-installed`` false) and record
    what they were asked to do.
    """
    postinst = tmp_path / "postinst"
    postinst.write_text(maintainer_scripts(built)["postinst"])
    calls = tmp_path / "calls"
    shims = tmp_path / "bin"
    shims.mkdir()
    for tool, answer in (
        ("deb-systemd-helper", 'case " $* " in *" debian-installed "*) exit 1;; esac; exit 0'),
        ("deb-systemd-invoke", "exit 0"),
        ("systemctl", "exit 0"),
        ("py3compile", "exit 0"),  # the package's files are not installed here
        ("pypy3compile", "exit 0"),
    ):
        shim = shims / tool
        shim.write_text(f'#!/bin/sh\necho "{tool} $*" >> "{calls}"\n{answer}\n')
        shim.chmod(0o755)
    r = subprocess.run(
        ["sh", str(postinst), "configure", ""],
        env={"PATH": f"{shims}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    done = calls.read_text().splitlines() if calls.exists() else []
    enabled = [c for c in done if " enable " in f"{c} " or " start " in f"{c} "]
    assert enabled == [], done
