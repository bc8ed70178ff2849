"""How the Flux module file finds sdexec and its dependencies (sdexec.flux.module)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sdexec.cli.flux_module_path import COPY, module_path, packaged_module
from sdexec.flux.module import search_path

VERSION = f"python{sys.version_info.major}.{sys.version_info.minor}"


def module_in(root: Path) -> Path:
    f = root / "sdexec" / "flux" / "module.py"
    f.parent.mkdir(parents=True)
    f.touch()
    (root / "sdexec" / "__init__.py").touch()
    return f


def venv(path: Path) -> Path:
    site = path / "lib" / VERSION / "site-packages"
    site.mkdir(parents=True)
    (path / "pyvenv.cfg").write_text("home = /usr/bin\n")
    return site


def test_a_venv_install_adds_its_site_packages_as_a_site_dir(tmp_path: Path) -> None:
    site = venv(tmp_path / "venv")
    assert search_path(module_in(site), {}) == ([site.resolve()], [site])


def test_a_source_tree_adds_its_dot_venv(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    venv_site = venv(repo / ".venv")
    assert search_path(module_in(repo), {}) == ([repo.resolve()], [venv_site])


def test_a_system_install_adds_only_its_own_directory(tmp_path: Path) -> None:
    dist = tmp_path / "usr" / "lib" / "python3" / "dist-packages"
    assert search_path(module_in(dist), {}) == ([dist.resolve()], [])


def test_a_copy_in_an_environment_prefix_adds_that_environment(tmp_path: Path) -> None:
    site = venv(tmp_path / "venv")
    copy = tmp_path / "venv" / COPY
    copy.parent.mkdir(parents=True)
    copy.touch()
    assert search_path(copy, {}) == ([], [site])


def test_a_copy_in_a_user_base_adds_the_user_site(tmp_path: Path) -> None:
    base = tmp_path / "home" / ".local"
    site = base / "lib" / VERSION / "site-packages"
    site.mkdir(parents=True)
    copy = base / COPY
    copy.parent.mkdir(parents=True)
    copy.touch()
    assert search_path(copy, {}) == ([], [site])


def test_sdexec_pythonpath_comes_first(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    entries, _ = search_path(module_in(dist), {"SDEXEC_PYTHONPATH": "/opt/a:/opt/b"})
    assert entries[:2] == [Path("/opt/a"), Path("/opt/b")]


def test_flux_module_path_from_a_source_tree_prints_the_packaged_file() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "sdexec.cli.main", "flux-module-path"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    ).stdout
    assert out == f"{module_path()}\n"
    assert module_path() == packaged_module()
    assert "def mod_main" in module_path().read_text()
