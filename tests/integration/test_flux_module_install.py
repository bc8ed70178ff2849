"""The Flux module loads from every way sdexec is installed, or says in one line why not.

Each layout is made as a user makes it (a virtual environment outside the
source tree, editable or not; ``pip --user``; the Debian package with
Debian's own packages of its dependencies; the source tree's ``.venv``),
its own ``sdexec flux-module-path`` says which file to load, and that file
is loaded into a real ``flux start`` whose environment has no sdexec on
its path: flux-core's Python (``/usr/bin/python3`` here, which has none of
sdexec's dependencies) must find everything from where the file lies.  The
module must then answer ``sdexec.list`` (``flux sproc ps``) and run a
command.  Installs come from one wheelhouse per session (sdexec's wheel and
its dependencies' from PyPI), so each layout costs seconds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fluxinstance import REPO, FluxInstance, flux_or_skip

from sdexec.systemd.private import PrivateManager

#: Debian 12's packages of sdexec's dependencies, as the .deb depends on them.
DEBIAN_DEPENDENCIES = ("python3-dbus-fast", "python3-structlog", "python3-zmq")


def run(*argv: str | Path, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    r = subprocess.run(
        [str(a) for a in argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 0, f"{argv}: rc={r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def user_python() -> str:
    """The python3 a user would make a venv with (the first on PATH)."""
    python = shutil.which("python3")
    assert python is not None
    return python


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a user's shell: no PYTHONPATH, no active venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sdexec's wheel, its dependencies' and its build backend's, for installs offline."""
    house = tmp_path_factory.mktemp("wheels")
    run(
        sys.executable, "-m", "pip", "wheel", "-q", "-w", house, REPO, "setuptools", "wheel",
        env=clean_env(),
    )  # fmt: skip
    return house


def pip_install(python: str | Path, house: Path, *args: str | Path, **env: str) -> None:
    run(
        python, "-m", "pip", "install", "-q", "--no-index", "--find-links", house,
        *args, env=clean_env(**env),
    )  # fmt: skip


@pytest.fixture(scope="module")
def inst(
    manager: PrivateManager, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FluxInstance]:
    instance = FluxInstance(
        flux_or_skip(),
        manager,
        tmp_path_factory.mktemp("flux-install"),
        size=1,
        source_on_path=False,
    )
    instance.start()
    try:
        yield instance
    finally:
        assert instance.stop() == 0, instance.tail()


def loads_and_serves(inst: FluxInstance, module: Path) -> None:
    """Load ``module`` as sdexec, check it answers list and exec, remove it."""
    assert module.is_file(), module
    inst.must("flux", "module", "load", "--name=sdexec", str(module))
    try:
        ps = inst.run("flux", "sproc", "ps", "--service=sdexec")
        assert ps.returncode == 0, ps.stderr
        out = inst.must("flux", "exec", "-r", "0", "--service=sdexec", "echo", "served")
        assert out == "served\n"
    finally:
        inst.must("flux", "module", "remove", "sdexec")
    log = inst.log_path.read_text(errors="replace")
    assert "Traceback" not in log, inst.tail(60)


def module_path_of(sdexec: Path, **env: str) -> Path:
    out = run(sdexec, "flux-module-path", env=clean_env(**env)).strip()
    assert os.path.isabs(out), out
    return Path(out)


def test_a_venv_outside_the_tree_editable(
    inst: FluxInstance, wheelhouse: Path, tmp_path: Path
) -> None:
    venv = tmp_path / "sdx"
    run(user_python(), "-m", "venv", venv)
    pip_install(venv / "bin" / "python", wheelhouse, "-e", REPO)
    module = module_path_of(venv / "bin" / "sdexec")
    # The source tree cannot know this venv: the command writes its copy there.
    assert module == venv / "share" / "sdexec" / "flux-module.py"
    loads_and_serves(inst, module)


def test_a_venv_outside_the_tree(inst: FluxInstance, wheelhouse: Path, tmp_path: Path) -> None:
    venv = tmp_path / "sdx"
    run(user_python(), "-m", "venv", venv)
    pip_install(venv / "bin" / "python", wheelhouse, REPO)
    module = module_path_of(venv / "bin" / "sdexec")
    assert module.is_relative_to(venv / "lib") and module.name == "module.py"
    loads_and_serves(inst, module)


def test_pip_user(inst: FluxInstance, wheelhouse: Path, tmp_path: Path) -> None:
    base = tmp_path / "home" / ".local"
    pip_install(user_python(), wheelhouse, "--user", REPO, PYTHONUSERBASE=str(base))
    module = module_path_of(base / "bin" / "sdexec", PYTHONUSERBASE=str(base))
    assert module.is_relative_to(base / "lib")
    loads_and_serves(inst, module)


def test_the_source_trees_dot_venv(inst: FluxInstance) -> None:
    module = module_path_of(REPO / ".venv" / "bin" / "sdexec")
    assert module == REPO / "sdexec" / "flux" / "module.py"
    loads_and_serves(inst, module)


def test_the_debian_package(inst: FluxInstance, debian_package: Path, tmp_path: Path) -> None:
    """The .deb and Debian's packages of its dependencies, unpacked into one root."""
    debs = tmp_path / "debs"
    debs.mkdir()
    download = ["apt-get", "download", *DEBIAN_DEPENDENCIES]
    r = subprocess.run(download, cwd=debs, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:  # no package lists yet on a new machine
        run("apt-get", "update", "-q")
        subprocess.run(download, cwd=debs, check=True, capture_output=True, timeout=300)
    root = tmp_path / "root"
    for deb in [debian_package, *debs.glob("*.deb")]:
        run("dpkg-deb", "-x", deb, root)
    dist = root / "usr" / "lib" / "python3" / "dist-packages"
    # The packaged command, run by Debian's python3 with that root's dist-packages.
    module = Path(
        run(
            "/usr/bin/python3", root / "usr" / "bin" / "sdexec", "flux-module-path",
            env=clean_env(PYTHONPATH=str(dist)),
        ).strip()
    )  # fmt: skip
    assert module == dist / "sdexec" / "flux" / "module.py"
    loads_and_serves(inst, module)


def test_missing_dependencies_fail_the_load_with_one_line(
    inst: FluxInstance, wheelhouse: Path, tmp_path: Path
) -> None:
    venv = tmp_path / "bare"
    run(user_python(), "-m", "venv", venv)
    pip_install(venv / "bin" / "python", wheelhouse, "--no-deps", REPO)
    module = module_path_of(venv / "bin" / "sdexec")
    err_before = (inst.workdir / "start.err").read_text(errors="replace")
    r = inst.run("flux", "module", "load", "--name=sdexec", str(module))
    assert r.returncode != 0
    assert "Package not installed" in r.stderr, r.stderr
    assert "sdexec" not in inst.must("flux", "module", "list")
    said = [line for line in inst.dmesg().splitlines() if "cannot load the Flux module" in line]
    assert len(said) == 1, inst.dmesg()
    line = said[0]
    for what in ("structlog", str(venv / "lib"), "SDEXEC_PYTHONPATH"):
        assert what in line, line
    stderr = (inst.workdir / "start.err").read_text(errors="replace")[len(err_before) :]
    assert [x for x in stderr.splitlines() if "cannot load the Flux module" in x], stderr
    assert "Traceback" not in stderr + inst.log_path.read_text(errors="replace")
    # The instance is unharmed: the module loads from a working layout.
    loads_and_serves(inst, module_path_of(REPO / ".venv" / "bin" / "sdexec"))
