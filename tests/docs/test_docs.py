"""The documentation builds without a warning, its links resolve, and its
command reference and man pages are the argparse tree's.

Sphinx builds ``docs/`` twice, once per session: HTML and man pages, each with
``-W --keep-going -n`` (every warning an error, every cross-reference checked;
MyST reports a link to a missing page or heading).  Then every relative
``href`` of the built HTML is followed to its file and anchor, and the man
pages are rendered by man(1) with its warnings on.  About 10 s.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zlib
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from sdexec.cli.parser import build_parser

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
# Every subcommand the parser has (a page and a man page each), and at least these.
PARSER, SUBS = build_parser()
COMMANDS = tuple(name for name in SUBS if " " not in name)
assert {"exec", "kill", "wait", "ps", "serve", "perilog"} <= set(COMMANDS)


def sphinx(builder: str, out: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SOURCE_DATE_EPOCH": "0", "LC_ALL": "C.UTF-8"}
    return subprocess.run(
        [sys.executable, "-m", "sphinx", "-q", "-W", "--keep-going", "-n", "-b", builder,
         "-d", str(out / ".doctrees"), str(DOCS), str(out)],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip


def built(builder: str, factory: pytest.TempPathFactory) -> Path:
    """The docs built by ``builder``, which must say nothing (warnings are errors)."""
    out = factory.mktemp(builder)
    r = sphinx(builder, out)
    assert r.returncode == 0 and "WARNING" not in r.stderr, r.stderr
    return out


@pytest.fixture(scope="module")
def html(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return built("html", tmp_path_factory)


@pytest.fixture(scope="module")
def man(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return built("man", tmp_path_factory)


# --- the HTML ------------------------------------------------------------------------


class _Links(HTMLParser):
    """The ids a page defines and the hrefs it has."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value is None:
                continue
            if name in ("id", "name"):
                self.ids.add(value)
            elif name == "href" and tag in ("a", "link"):
                self.hrefs.append(value)


def test_the_html_has_every_page(html: Path) -> None:
    pages = {p.relative_to(html).as_posix() for p in html.rglob("*.html")}
    expected = {
        "index.html", "getting-started.html", "system-instance.html", "development.html",
        "admin/index.html", "admin/standalone.html", "admin/flux.html", "admin/perilog.html",
        "admin/security.html", "admin/operations.html",
        "user/index.html", "user/exec.html", "user/background.html", "user/terminals.html",
        "user/top.html", "user/proxy.html", "user/many-ranks.html",
        "reference/index.html", "reference/exit-status.html", "reference/uris.html",
        "reference/unit-options.html", "reference/server-files.html",
        "reference/flux-module.html", "reference/rfc42-extensions.html",
        "internals/index.html", "internals/how-it-works.html", "internals/layout.html",
        "records/performance.html", "records/reliability.html",
        "reference/commands/index.html", "reference/commands/sdexec.html",
        *(f"reference/commands/sdexec-{c}.html" for c in COMMANDS),
    }  # fmt: skip
    assert expected <= pages, sorted(expected - pages)


def test_every_relative_link_and_anchor_resolves(html: Path) -> None:
    parsed: dict[Path, _Links] = {}

    def page(path: Path) -> _Links:
        if path not in parsed:
            p = _Links()
            p.feed(path.read_text(errors="replace"))
            parsed[path] = p
        return parsed[path]

    broken: list[str] = []
    checked = 0
    for source in sorted(html.rglob("*.html")):
        for href in page(source).hrefs:
            parts = urlsplit(href)
            if parts.scheme or parts.netloc or href.startswith("mailto:"):
                continue
            target = (source.parent / unquote(parts.path)).resolve() if parts.path else source
            if target.is_dir():
                target = target / "index.html"
            checked += 1
            where = f"{source.relative_to(html)}: {href}"
            if not target.exists():
                broken.append(f"{where} (no such file)")
            elif (
                parts.fragment
                and target.suffix == ".html"
                and unquote(parts.fragment) not in page(target).ids
            ):
                broken.append(f"{where} (no such anchor)")
    assert checked > 500  # the pages link to each other
    assert broken == []


def test_the_getting_started_try_it_block_is_on_the_page(html: Path) -> None:
    page = (html / "getting-started.html").read_text()
    assert 'id="try-it"' in page
    text = re.sub(r"<[^>]+>", "", page)  # without the highlighting's spans
    assert "sdexec serve &amp;" in text and "sdexec logs job1" in text


def test_each_command_page_has_every_option_of_its_parser(html: Path) -> None:
    for name in ("", *COMMANDS):
        parser = SUBS.get(f"{name} run", SUBS.get(name, PARSER)) if name else PARSER
        page = f"sdexec-{name}" if name else "sdexec"
        text = (html / "reference" / "commands" / f"{page}.html").read_text()
        for action in parser._actions:
            for option in action.option_strings:
                assert f">{option}" in text, (page, option)


def test_options_can_be_linked_from_other_pages(html: Path) -> None:
    """Each option is a Sphinx program option, so :option:`sdexec exec --bg` resolves."""
    objects = (html / "objects.inv").read_bytes()
    body = zlib.decompress(objects.split(b"\n", 4)[4]).decode()
    assert "sdexec-exec.--bg std:cmdoption" in body
    assert "sdexec-perilog-run.--phase std:cmdoption" in body


# --- the man pages -------------------------------------------------------------------


def test_a_man_page_for_sdexec_and_each_command(man: Path) -> None:
    pages = sorted(p.name for p in man.glob("*.1"))
    assert pages == sorted(["sdexec.1", *(f"sdexec-{c}.1" for c in COMMANDS)])


def test_a_reference_page_for_each_command() -> None:
    pages = sorted(p.stem for p in (DOCS / "reference" / "commands").glob("sdexec*.rst"))
    assert pages == sorted(["sdexec", *(f"sdexec-{c}" for c in COMMANDS)])


def test_a_man_page_has_name_synopsis_description_and_options(man: Path) -> None:
    text = (man / "sdexec-exec.1").read_text()
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "EXIT STATUS", "EXAMPLES"):
        assert re.search(rf"^\.SH {section}$", text, re.M), section
    assert "sdexec-exec \\- run a command on the server" in text
    assert "\\-\\-label\\-io" in text


def test_the_perilog_page_documents_perilog_run(man: Path) -> None:
    text = (man / "sdexec-perilog.1").read_text()
    assert "\\-\\-kill\\-timeout" in text
    assert re.search(r"^\.SH EXAMPLES$", text, re.M)


def test_the_sdexec_page_lists_every_command(man: Path) -> None:
    text = (man / "sdexec.1").read_text()
    section = text.split(".SH COMMANDS", 1)[1].split(".SH ", 1)[0]
    for command in COMMANDS:
        assert command.replace("-", "\\-") in section, command


def test_the_flux_module_page_documents_the_module(man: Path) -> None:
    text = (man / "sdexec-flux-module-path.1").read_text()
    for section in ("MODULE ARGUMENTS", "CONFIGURATION", "BEHAVIOUR", "EXAMPLES"):
        assert re.search(rf"^\.SH {section}$", text, re.M), section
    assert "modules.sdexec" in text and "state\\-dir=DIR" in text


def test_the_date_comes_from_source_date_epoch(man: Path) -> None:
    """Reproducible builds: dpkg sets SOURCE_DATE_EPOCH from debian/changelog."""
    first = next(line for line in (man / "sdexec.1").read_text().splitlines() if line[:3] == ".TH")
    assert "1970" in first, first


def test_man_renders_every_page_without_warnings(man: Path) -> None:
    pages = sorted(man.glob("*.1"))
    assert len(pages) == len(COMMANDS) + 1
    for path in pages:
        r = subprocess.run(
            ["man", "--warnings", "-l", "-Tutf8", str(path)],
            capture_output=True,
            text=True,
            env={"MANWIDTH": "80", "LC_ALL": "C.UTF-8", "PATH": "/usr/bin:/bin"},
        )
        assert r.returncode == 0, r.stderr
        assert r.stderr == "", f"{path.name}: {r.stderr}"
        assert "OPTIONS" in re.sub(".\x08", "", r.stdout)  # without man's overstrike


# --- the README ----------------------------------------------------------------------


def test_the_readme_links_into_the_docs_resolve() -> None:
    text = (REPO / "README.md").read_text()
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if "://" not in link]
    assert len(local) > 20
    missing = [link for link in local if not (REPO / link).exists()]
    assert missing == []


def test_the_readme_anchors_into_the_docs_resolve(html: Path) -> None:
    """A README link to ``docs/PAGE.md#anchor`` names a heading the built page has."""
    text = (REPO / "README.md").read_text()
    anchored = re.findall(r"\]\(docs/([^)#]+)\.(?:md|rst)#([^)]+)\)", text)
    assert anchored
    for page, anchor in anchored:
        ids = _Links()
        ids.feed((html / f"{page}.html").read_text())
        assert anchor in ids.ids, (page, anchor)


def test_the_readme_is_short() -> None:
    """What sdexec is, set-up, usage, Flux, links: the rest is in docs/."""
    assert len((REPO / "README.md").read_text().splitlines()) <= 200
