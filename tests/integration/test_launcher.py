"""bin/sdexec run as ``python -S`` (scripts/install, scripts/bootstrap, the .deb).

Each layout is a real one (a virtual environment made without pip, or a
prefix like Debian's whose ``python3`` is Debian's) holding this tree's
``sdexec`` as an installation would: the package in site-packages or
dist-packages, or an editable install's ``.pth`` path.  ``PYTHONVERBOSE`` shows whether the
``site`` module was imported.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, Server

SITE_IMPORTED = b"import 'site'"


def _venv(root: Path) -> tuple[Path, Path]:
    """A virtual environment without pip at ``root``: (its site-packages, its bin/sdexec)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    v = sys.version_info
    site_packages = root / "lib" / f"python{v.major}.{v.minor}" / "site-packages"
    assert site_packages.is_dir()
    launcher = root / "bin" / "sdexec"
    text = (REPO / "bin" / "sdexec").read_text().split("\n", 1)[1]
    launcher.write_text(f"#!{root}/bin/python -S\n{text}")
    launcher.chmod(0o755)
    return site_packages, launcher


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package in site-packages, as ``pip install`` (scripts/install) puts it."""
    site_packages, launcher = _venv(tmp_path_factory.mktemp("installed"))
    (site_packages / "sdexec").symlink_to(REPO / "sdexec")
    return launcher


@pytest.fixture(scope="module")
def editable(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An editable install (scripts/bootstrap): this tree's path in a .pth file."""
    site_packages, launcher = _venv(tmp_path_factory.mktemp("editable"))
    (site_packages / "__editable__.sdexec-0.1.0.pth").write_text(f"{REPO}\n")
    return launcher


@pytest.fixture(scope="module")
def debian(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Debian package's layout: /usr/bin/python3 -S, the package in
    PREFIX/lib/python3/dist-packages (PREFIX/bin/python3 links to Debian's)."""
    prefix = tmp_path_factory.mktemp("debian") / "usr"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "bin" / "python3").symlink_to("/usr/bin/python3")
    dist_packages = prefix / "lib" / "python3" / "dist-packages"
    dist_packages.mkdir(parents=True)
    (dist_packages / "sdexec").symlink_to(REPO / "sdexec")
    launcher = prefix / "bin" / "sdexec"
    text = (REPO / "bin" / "sdexec").read_text().split("\n", 1)[1]
    launcher.write_text(f"#!{prefix}/bin/python3 -S\n{text}")
    launcher.chmod(0o755)
    return launcher


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An environment without sdexec: only $PYTHONPATH can find it."""
    return _venv(tmp_path_factory.mktemp("elsewhere"))[1]


def _run(
    server: Server, launcher: Path, *args: str, **env: str
) -> subprocess.CompletedProcess[bytes]:
    environ = server.env(PYTHONVERBOSE="1", **env)
    if "PYTHONPATH" not in env:
        del environ["PYTHONPATH"]  # the launcher alone must find the package
    return subprocess.run(
        [str(launcher), *args],
        capture_output=True,
        timeout=60,
        env=environ,
        stdin=subprocess.DEVNULL,
    )


def test_exec_runs_without_site_from_an_installed_package(server: Server, installed: Path) -> None:
    r = _run(server, installed, "exec", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert r.returncode == 3
    assert r.stdout == b"out\n"
    assert b"err\n" in r.stderr
    assert SITE_IMPORTED not in r.stderr


def test_exec_runs_without_site_from_an_editable_install(server: Server, editable: Path) -> None:
    r = _run(server, editable, "exec", "--", "echo", "hi")
    assert (r.returncode, r.stdout) == (0, b"hi\n")
    assert SITE_IMPORTED not in r.stderr


def test_exec_runs_without_site_in_the_debian_layout(server: Server, debian: Path) -> None:
    r = _run(server, debian, "exec", "--", "echo", "hi")
    assert (r.returncode, r.stdout) == (0, b"hi\n"), r.stderr[-2000:]
    assert SITE_IMPORTED not in r.stderr
    assert b"/lib/python3/dist-packages/sdexec/" in r.stderr  # PYTHONVERBOSE: found there


def test_other_commands_run_site_first(server: Server, installed: Path) -> None:
    r = _run(server, installed, "ps")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith(b"PID")
    assert SITE_IMPORTED in r.stderr


def test_exec_falls_back_to_site_when_the_package_is_elsewhere(
    server: Server, elsewhere: Path
) -> None:
    r = _run(server, elsewhere, "exec", "--", "echo", "hi", PYTHONPATH=str(REPO))
    assert (r.returncode, r.stdout) == (0, b"hi\n")
    assert SITE_IMPORTED in r.stderr


def test_without_the_package_anywhere_the_import_fails_as_usual(
    server: Server, elsewhere: Path
) -> None:
    r = _run(server, elsewhere, "exec", "--", "true")
    assert r.returncode == 1
    assert b"ModuleNotFoundError: No module named 'sdexec'" in r.stderr
