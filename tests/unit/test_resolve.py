"""Executable lookup like execvp(3) (sdexec.server.launch.resolve_executable)."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest

from sdexec.base.errors import SdexecError
from sdexec.server.launch import resolve_executable


def make_exe(path: Path, mode: int = 0o755) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(mode)
    return path


def resolve_error(argv0: str, env: dict[str, str], cwd: str | None = None) -> SdexecError:
    with pytest.raises(SdexecError) as info:
        resolve_executable(argv0, env, cwd)
    return info.value


# --- names with a slash ------------------------------------------------------------------------


def test_absolute_path_is_returned_as_is(tmp_path: Path) -> None:
    exe = make_exe(tmp_path / "prog")
    assert resolve_executable(str(exe), {}, None) == str(exe)


def test_absolute_path_is_normalized(tmp_path: Path) -> None:
    exe = make_exe(tmp_path / "prog")
    assert resolve_executable(f"{tmp_path}/./prog", {}, None) == str(exe)


def test_absolute_path_ignores_path(tmp_path: Path) -> None:
    exe = make_exe(tmp_path / "prog")
    assert resolve_executable(str(exe), {"PATH": "/nonexistent"}, None) == str(exe)


def test_relative_name_with_slash_is_relative_to_the_command_cwd(tmp_path: Path) -> None:
    exe = make_exe(tmp_path / "sub" / "prog")
    assert resolve_executable("sub/prog", {}, str(tmp_path)) == str(exe)


def test_dot_slash_name_is_relative_to_the_command_cwd(tmp_path: Path) -> None:
    exe = make_exe(tmp_path / "prog")
    assert resolve_executable("./prog", {"PATH": "/bin"}, str(tmp_path)) == str(exe)


def test_relative_name_with_slash_is_not_searched_in_path(tmp_path: Path) -> None:
    make_exe(tmp_path / "bin" / "sub" / "prog")
    err = resolve_error("sub/prog", {"PATH": str(tmp_path / "bin")}, str(tmp_path))
    assert err.errno == errno.ENOENT


def test_relative_name_without_cwd_uses_the_server_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exe = make_exe(tmp_path / "prog")
    monkeypatch.chdir(tmp_path)
    assert resolve_executable("./prog", {}, None) == str(exe)


def test_missing_absolute_path_is_enoent_with_execvp_text(tmp_path: Path) -> None:
    name = str(tmp_path / "nope")
    err = resolve_error(name, {})
    assert err.errno == errno.ENOENT
    assert err.message == f"{name}: No such file or directory"


def test_non_executable_file_is_eacces_with_execvp_text(tmp_path: Path) -> None:
    exe = make_exe(tmp_path / "data", mode=0o644)
    err = resolve_error(str(exe), {})
    assert err.errno == errno.EACCES
    assert err.message == f"{exe}: Permission denied"


def test_directory_is_eacces(tmp_path: Path) -> None:
    err = resolve_error(str(tmp_path), {})
    assert err.errno == errno.EACCES
    assert err.message == f"{tmp_path}: Permission denied"


def test_path_through_a_regular_file_is_enotdir(tmp_path: Path) -> None:
    make_exe(tmp_path / "file")
    err = resolve_error(str(tmp_path / "file" / "prog"), {})
    assert err.errno == errno.ENOTDIR


# --- PATH search ---------------------------------------------------------------------------------


def test_bare_name_is_found_in_path(tmp_path: Path) -> None:
    exe = make_exe(tmp_path / "bin" / "prog")
    assert resolve_executable("prog", {"PATH": str(tmp_path / "bin")}, None) == str(exe)


def test_path_is_searched_in_order(tmp_path: Path) -> None:
    make_exe(tmp_path / "a" / "prog")
    make_exe(tmp_path / "b" / "prog")
    path = f"{tmp_path / 'b'}:{tmp_path / 'a'}"
    assert resolve_executable("prog", {"PATH": path}, None) == str(tmp_path / "b" / "prog")


def test_path_search_skips_missing_directories(tmp_path: Path) -> None:
    exe = make_exe(tmp_path / "bin" / "prog")
    path = f"{tmp_path / 'missing'}:{tmp_path / 'bin'}"
    assert resolve_executable("prog", {"PATH": path}, None) == str(exe)


def test_path_search_skips_a_non_executable_match(tmp_path: Path) -> None:
    make_exe(tmp_path / "a" / "prog", mode=0o644)
    exe = make_exe(tmp_path / "b" / "prog")
    path = f"{tmp_path / 'a'}:{tmp_path / 'b'}"
    assert resolve_executable("prog", {"PATH": path}, None) == str(exe)


def test_path_search_skips_a_directory_match(tmp_path: Path) -> None:
    (tmp_path / "a" / "prog").mkdir(parents=True)
    exe = make_exe(tmp_path / "b" / "prog")
    path = f"{tmp_path / 'a'}:{tmp_path / 'b'}"
    assert resolve_executable("prog", {"PATH": path}, None) == str(exe)


def test_path_search_skips_an_entry_that_is_a_file(tmp_path: Path) -> None:
    make_exe(tmp_path / "notadir")
    exe = make_exe(tmp_path / "bin" / "prog")
    path = f"{tmp_path / 'notadir'}:{tmp_path / 'bin'}"
    assert resolve_executable("prog", {"PATH": path}, None) == str(exe)


def test_only_non_executable_matches_in_path_is_eacces(tmp_path: Path) -> None:
    make_exe(tmp_path / "a" / "prog", mode=0o644)
    err = resolve_error("prog", {"PATH": f"{tmp_path / 'a'}:{tmp_path / 'b'}"})
    assert err.errno == errno.EACCES
    assert err.message == "prog: Permission denied"


def test_name_not_in_path_is_enoent_with_execvp_text(tmp_path: Path) -> None:
    err = resolve_error("prog", {"PATH": str(tmp_path)})
    assert err.errno == errno.ENOENT
    assert err.message == "prog: No such file or directory"


def test_empty_path_entry_means_the_command_cwd(tmp_path: Path) -> None:
    exe = make_exe(tmp_path / "prog")
    found = resolve_executable("prog", {"PATH": "/nonexistent:"}, str(tmp_path))
    assert os.path.isabs(found)
    assert os.path.samefile(found, exe)


def test_path_comes_from_the_command_env_not_the_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_exe(tmp_path / "server-bin" / "prog")
    monkeypatch.setenv("PATH", str(tmp_path / "server-bin"))
    err = resolve_error("prog", {"PATH": str(tmp_path / "client-bin")})
    assert err.errno == errno.ENOENT


def test_command_env_path_finds_what_the_server_path_does_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exe = make_exe(tmp_path / "client-bin" / "prog")
    monkeypatch.setenv("PATH", str(tmp_path / "server-bin"))
    assert resolve_executable("prog", {"PATH": str(exe.parent)}, None) == str(exe)


def test_command_env_without_path_uses_the_default_not_the_server_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_exe(tmp_path / "server-bin" / "sdexec-test-prog")
    monkeypatch.setenv("PATH", str(tmp_path / "server-bin"))
    assert resolve_error("sdexec-test-prog", {}).errno == errno.ENOENT


def test_command_env_without_path_finds_sh_in_the_default_path() -> None:
    found = resolve_executable("sh", {}, None)
    assert os.path.basename(found) == "sh"
    assert found == shutil.which("sh", path="/usr/local/bin:/usr/bin:/bin")


def test_empty_command_name_is_enoent_like_execvp() -> None:
    err = resolve_error("", {"PATH": "/usr/bin:/bin"})
    assert err.errno == errno.ENOENT
