"""How the Flux module file finds sdexec and its dependencies (sdexec.flux.module)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sdexec.cli.flux_module_path import module_path
from sdexec.flux.module import search_path

VERSION = f"python{sys.version_info.major}.{sys.version_info.minor}"


def module_in(root: Path) -> Path:
    f = root / "sdexec" / "flux" / "module.py"
    f.parent.mkdir(parents=True)
    f.touch()
    return f


def test_a_venv_install_adds_its_site_packages(tmp_path: Path) -> None:
    site = tmp_path / "venv" / "lib" / VERSION / "site-packages"
    (tmp_path / "venv" / "pyvenv.cfg").parent.mkdir(parents=True)
    (tmp_path / "venv" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    paths = search_path(module_in(site), {})
    assert paths == [site.resolve(), site]


def test_a_source_tree_adds_its_dot_venv(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    venv_site = repo / ".venv" / "lib" / VERSION / "site-packages"
    venv_site.mkdir(parents=True)
    (repo / ".venv" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    assert search_path(module_in(repo), {}) == [repo.resolve(), venv_site]


def test_a_system_install_adds_only_its_own_directory(tmp_path: Path) -> None:
    dist = tmp_path / "usr" / "lib" / "python3" / "dist-packages"
    assert search_path(module_in(dist), {}) == [dist.resolve()]


def test_sdexec_pythonpath_comes_first(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    paths = search_path(module_in(dist), {"SDEXEC_PYTHONPATH": "/opt/a:/opt/b"})
    assert paths[:2] == [Path("/opt/a"), Path("/opt/b")]


def test_flux_module_path_prints_the_module_file() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "sdexec.cli.main", "flux-module-path"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    ).stdout
    assert out == module_path() + "\n"
    assert os.path.isabs(module_path()) and os.path.isfile(module_path())
    assert "def mod_main" in Path(module_path()).read_text()
