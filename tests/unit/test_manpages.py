"""packaging/manpages.py: one roff page per command, from the argparse help."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

from sdexec.cli.parser import build_parser

REPO = Path(__file__).resolve().parents[2]
# Every subcommand the parser has (a man page each), and at least these.
COMMANDS = tuple(name for name in build_parser()[1] if " " not in name)
assert {"exec", "kill", "wait", "ps", "serve", "perilog"} <= set(COMMANDS)


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("manpages", REPO / "packaging" / "manpages.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("man")
    paths = load().render(out)
    return {p.name: p.read_text() for p in paths}


def test_a_page_for_sdexec_and_each_command(pages: dict[str, str]) -> None:
    assert sorted(pages) == sorted(["sdexec.1", *(f"sdexec-{c}.1" for c in COMMANDS)])


def test_page_has_name_synopsis_and_options(pages: dict[str, str]) -> None:
    text = pages["sdexec-exec.1"]
    for section in (".SH NAME", ".SH SYNOPSIS", ".SH DESCRIPTION", ".SH OPTIONS"):
        assert section in text
    assert "\\fB\\-\\-label\\-io\\fR" in text


def test_epilog_headings_become_sections(pages: dict[str, str]) -> None:
    assert ".SH EXIT STATUS" in pages["sdexec-exec.1"]
    assert ".SH EXAMPLES" in pages["sdexec-perilog.1"]


def test_perilog_page_documents_perilog_run(pages: dict[str, str]) -> None:
    assert "\\-\\-kill\\-timeout" in pages["sdexec-perilog.1"]


def test_top_page_lists_every_command(pages: dict[str, str]) -> None:
    for command in COMMANDS:
        roff = command.replace("-", "\\-")
        assert f"\\fB{roff}\\fR" in pages["sdexec.1"]


def test_date_comes_from_source_date_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    (path, *_) = load().render(tmp_path)
    assert '"1970-01-01"' in path.read_text().splitlines()[0]


def test_man_renders_every_page_without_warnings(tmp_path: Path) -> None:
    for path in load().render(tmp_path):
        r = subprocess.run(
            ["man", "--warnings", "-l", "-Tutf8", str(path)],
            capture_output=True,
            text=True,
            env={"MANWIDTH": "80", "LC_ALL": "C.UTF-8", "PATH": "/usr/bin:/bin"},
        )
        assert r.returncode == 0, r.stderr
        assert r.stderr == "", f"{path.name}: {r.stderr}"


def test_flux_module_page_documents_the_module(pages: dict[str, str]) -> None:
    text = pages["sdexec-flux-module-path.1"]
    for section in (".SH MODULE ARGUMENTS", ".SH CONFIGURATION", ".SH BEHAVIOUR", ".SH EXAMPLES"):
        assert section in text
    assert "modules.sdexec" in text and "state\\-dir=DIR" in text
