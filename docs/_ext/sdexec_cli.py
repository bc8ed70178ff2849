"""The command reference, made from the ``sdexec`` command's own argparse tree.

``.. sdexec-command:: exec`` (in ``docs/reference/commands/sdexec-exec.rst``)
becomes the page's sections: synopsis, description, options, then each
``name:`` section of the parser's epilog (exit status, examples...), and
links to the other commands.  ``.. sdexec-command::`` with no argument is
the ``sdexec`` command itself, with its list of commands.  The same pages,
built by Sphinx's ``man`` builder, are the man pages (:func:`man_pages`
lists them for ``conf.py``), so the reference, the man pages and ``--help``
say the same thing: all three are :func:`sdexec.cli.parser.build_parser`.

``.. sdexec-properties::`` lists the unit properties sdexec converts, from
its converter table.

Nothing is parsed as markup: help text becomes paragraphs, and its indented
lines literal blocks, as they are, so no character in it needs escaping.
Each option is registered as a Sphinx program option (``:option:`sdexec
exec --bg```), so other pages can link to it and nitpicky builds check
those links.
"""

from __future__ import annotations

import argparse
import os
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from docutils import nodes
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

REPO = Path(__file__).resolve().parents[2]
# The width of the usage line and of argparse's own wrapping: a man page's.
WIDTH = 80
_SECTION = re.compile(r"^([a-z][a-z /-]*[a-z]):\s*$")
# The modules whose text the pages show: a change to one rebuilds them.
SOURCES = ("sdexec/cli/parser.py", "sdexec/cli/perilog.py", "sdexec/cli/top.py")


@dataclass(frozen=True)
class Command:
    """One page: ``sdexec`` itself or one of its commands."""

    name: str  # "exec"; "" for sdexec itself
    summary: str
    parser: argparse.ArgumentParser

    @property
    def page(self) -> str:
        return f"sdexec-{self.name}" if self.name else "sdexec"

    @property
    def program(self) -> str:
        """The program options are registered under: ``sdexec-perilog-run`` (Sphinx
        joins the words of ``:option:`sdexec perilog run --phase``` so)."""
        return "-".join(self.parser.prog.split())


def commands() -> list[Command]:
    """``sdexec`` and each of its commands (``perilog`` documents ``perilog run``)."""
    os.environ["COLUMNS"] = str(WIDTH)
    from sdexec.cli.parser import build_parser

    parser, subs = build_parser()
    sub_action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: str(c.help or "") for c in sub_action._choices_actions}
    out = [Command("", "run commands as systemd transient units through an sdexec server", parser)]
    for name in subs:
        if " " not in name:
            out.append(Command(name, helps.get(name, name), subs.get(f"{name} run", subs[name])))
    return out


def man_pages() -> list[tuple[str, str, str, list[str], int]]:
    """``conf.py``'s ``man_pages``: one section-1 page per command."""
    return [(f"reference/commands/{c.page}", c.page, c.summary, [], 1) for c in commands()]


def _paragraphs(text: str) -> list[nodes.Element]:
    """Help text as nodes: flowing paragraphs, and indented lines as literal blocks."""
    out: list[nodes.Element] = []
    para: list[str] = []
    literal: list[str] = []

    def flush() -> None:
        if para:
            out.append(nodes.paragraph("", " ".join(para)))
            para.clear()
        if literal:
            block = textwrap.dedent("\n".join(literal))
            out.append(nodes.literal_block(block, block))
            literal.clear()

    for line in text.rstrip().split("\n"):
        if not line.strip():
            flush()
        elif line.startswith(" "):
            if para:
                flush()
            literal.append(line)
        else:
            if literal:
                flush()
            para.append(line.strip())
    flush()
    return out


def _epilog_sections(epilog: str) -> list[tuple[str, str]]:
    """``(title, body)`` for each ``name:`` heading of an epilog; text before has no title."""
    sections: list[tuple[str, list[str]]] = [("", [])]
    for line in epilog.split("\n"):
        m = _SECTION.match(line)
        if m:
            sections.append((m.group(1), []))
        else:
            sections[-1][1].append(line)
    return [(title, "\n".join(body)) for title, body in sections if "\n".join(body).strip()]


def _usage(parser: argparse.ArgumentParser) -> str:
    usage = re.sub(r"^usage: ", "", parser.format_usage().strip())
    return textwrap.fill(
        " ".join(usage.split()), WIDTH, subsequent_indent="    ", break_on_hyphens=False
    )


def _option_text(action: argparse.Action, parser: argparse.ArgumentParser) -> str:
    text = (action.help or "") % {"default": action.default, "prog": parser.prog}
    if action.choices and "{" not in text and action.option_strings:
        text += f" (one of: {', '.join(map(str, action.choices))})"
    return text


class CommandDirective(SphinxDirective):
    """``.. sdexec-command:: [NAME]``: the reference of ``sdexec NAME``."""

    optional_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        for source in SOURCES:
            self.env.note_dependency(str(REPO / source))
        every = commands()
        name = self.arguments[0] if self.arguments else ""
        found = [c for c in every if c.name == name]
        if not found:
            raise self.error(f"sdexec has no command {name!r}")
        cmd = found[0]
        parser = cmd.parser
        sections = _epilog_sections(parser.epilog or "")
        out: list[nodes.Node] = []

        synopsis = self._section(cmd, "Synopsis")
        usage = _usage(parser)
        synopsis += nodes.literal_block(usage, usage)
        out.append(synopsis)

        description = self._section(cmd, "Description")
        description += _paragraphs(parser.description or cmd.summary)
        for title, body in sections:
            if not title:
                description += _paragraphs(body)
        out.append(description)

        if not cmd.name:
            listing = self._section(cmd, "Commands")
            dl = nodes.definition_list()
            for c in every[1:]:
                term = nodes.term()
                term += self._page_link(c, nodes.literal("", c.name))
                dl += nodes.definition_list_item(
                    "", term, nodes.definition("", nodes.paragraph("", c.summary))
                )
            listing += dl
            out.append(listing)

        options = self._section(cmd, "Options")
        options += self._options(cmd)
        out.append(options)

        for title, body in sections:
            if title:
                section = self._section(cmd, title[0].upper() + title[1:])
                section += _paragraphs(body)
                out.append(section)

        see = self._section(cmd, "See also")
        para = nodes.paragraph()
        others = [c for c in every if c.name != cmd.name]
        for i, other in enumerate(others):
            if i:
                para += nodes.Text(", ")
            para += self._page_link(other, nodes.strong("", f"{other.page}(1)"))
        for page in ("systemd-run", "systemctl", "journalctl"):
            para += nodes.Text(", ")
            para += nodes.strong("", f"{page}(1)")
        see += para
        out.append(see)
        return out

    def _section(self, cmd: Command, title: str) -> nodes.section:
        section = nodes.section()
        section["ids"].append(nodes.make_id(f"{cmd.page}-{title}"))
        section["names"].append(nodes.fully_normalize_name(f"{cmd.page} {title}"))
        section += nodes.title(title, title)
        self.state.document.note_implicit_target(section, section)
        return section

    def _page_link(self, cmd: Command, child: nodes.Node) -> addnodes.pending_xref:
        ref = addnodes.pending_xref(
            "",
            refdomain="std",
            reftype="doc",
            reftarget=f"/reference/commands/{cmd.page}",
            refexplicit=True,
            refwarn=True,
        )
        ref += child
        return ref

    def _options(self, cmd: Command) -> nodes.definition_list:
        std: Any = self.env.get_domain("std")
        dl = nodes.definition_list()
        for action in cmd.parser._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
                continue
            term = nodes.term()
            if action.option_strings:
                metavar = ""
                if action.nargs != 0:
                    metavar = " " + str(action.metavar or action.dest.upper())
                ident = nodes.make_id(f"{cmd.program}-{action.option_strings[-1]}")
                for i, option in enumerate(action.option_strings):
                    if i:
                        term += nodes.Text(", ")
                    term += nodes.literal("", option + metavar)
                    std.add_program_option(cmd.program, option, self.env.docname, ident)
            else:
                label = str(action.metavar or action.dest)
                ident = nodes.make_id(f"{cmd.program}-arg-{label}")
                term += nodes.emphasis("", label)
            term["ids"].append(ident)
            definition = nodes.definition()
            definition += _paragraphs(_option_text(action, cmd.parser)) or [nodes.paragraph("", "")]
            dl += nodes.definition_list_item("", term, definition)
        return dl


class PropertiesDirective(SphinxDirective):
    """``.. sdexec-properties::``: the unit properties ``-p`` converts, from the
    converter table itself (:data:`sdexec.systemd.properties.SUPPORTED_PROPERTIES`)."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        self.env.note_dependency(str(REPO / "sdexec/systemd/properties.py"))
        from sdexec.systemd.properties import SUPPORTED_PROPERTIES

        para = nodes.paragraph()
        for i, name in enumerate(sorted(SUPPORTED_PROPERTIES, key=str.lower)):
            if i:
                para += nodes.Text(", ")
            para += nodes.literal("", name)
        return [para]


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("sdexec-command", CommandDirective)
    app.add_directive("sdexec-properties", PropertiesDirective)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
