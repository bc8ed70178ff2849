#!/usr/bin/env python3
"""Render the sdexec command's argparse help as roff man pages, at build time.

    python3 packaging/manpages.py OUTDIR      (with the source tree on sys.path)

Writes ``sdexec.1`` and one ``sdexec-COMMAND.1`` per subcommand
(``sdexec-perilog.1`` documents ``sdexec perilog run``).  Everything comes
from :func:`sdexec.cli.parser.build_parser`, so the pages say exactly what
``--help`` says: the description, every option with its help, and the
epilog's sections (``exit status:``, ``examples:``...) as sections of the
page.  The date is ``$SOURCE_DATE_EPOCH`` (set by dpkg from
debian/changelog) so that builds are reproducible.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sdexec import __version__
from sdexec.cli.parser import build_parser

WIDTH = 80
_SECTION = re.compile(r"^([a-z][a-z /-]*[a-z]):\s*$")


def escape(text: str) -> str:
    """Text made safe for roff: backslashes, hyphens, and control characters."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(
        ("\\&" + line if line[:1] in (".", "'") else line) for line in text.split("\n")
    )


def paragraphs(text: str) -> list[str]:
    """Roff for a block of help text: flowing paragraphs, indented lines kept as is."""
    out: list[str] = []
    para: list[str] = []
    literal: list[str] = []

    def flush() -> None:
        if para:
            out.append(".PP\n" + escape(" ".join(para)))
            para.clear()
        if literal:
            block = textwrap.dedent("\n".join(literal))
            out.append(".PP\n.nf\n.RS 4\n" + escape(block) + "\n.RE\n.fi")
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


def epilog_sections(epilog: str) -> list[tuple[str, str]]:
    """``(TITLE, body)`` for each ``name:`` heading of an epilog; text before is DESCRIPTION."""
    sections: list[tuple[str, list[str]]] = [("", [])]
    for line in epilog.split("\n"):
        m = _SECTION.match(line)
        if m:
            sections.append((m.group(1).upper(), []))
        else:
            sections[-1][1].append(line)
    return [(title, "\n".join(body)) for title, body in sections if "\n".join(body).strip()]


def option_entries(parser: argparse.ArgumentParser) -> list[str]:
    """``.TP`` entries for the options and positionals of ``parser``."""
    out = []
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
            continue
        if action.option_strings:
            metavar = ""
            if action.nargs != 0:
                metavar = " " + str(action.metavar or action.dest.upper())
            names = ", ".join(
                f"\\fB{escape(o)}\\fR{escape(metavar)}" for o in action.option_strings
            )
        else:
            names = f"\\fI{escape(str(action.metavar or action.dest))}\\fR"
        text = (action.help or "") % {"default": action.default, "prog": parser.prog}
        if action.choices and "{" not in text and action.option_strings:
            text += f" (one of: {', '.join(map(str, action.choices))})"
        out.append(f".TP\n{names}\n{escape(text)}")
    return out


def page(
    name: str,
    summary: str,
    parser: argparse.ArgumentParser,
    see_also: list[str],
    commands: list[tuple[str, str]] | None = None,
) -> str:
    """One man page."""
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", time.time()))
    date = time.strftime("%Y-%m-%d", time.gmtime(epoch))
    usage = parser.format_usage().strip()
    usage = re.sub(r"^usage: ", "", usage)
    usage = " ".join(usage.split())
    lines = [
        f'.TH "{name.upper()}" "1" "{date}" "sdexec {__version__}" "User Commands"',
        ".SH NAME",
        f"{escape(name)} \\- {escape(summary)}",
        ".SH SYNOPSIS",
        f".B {escape(usage)}" if " " not in usage else escape(usage),
        ".SH DESCRIPTION",
        *paragraphs(parser.description or summary),
    ]
    sections = epilog_sections(parser.epilog or "")
    for title, body in sections:
        if not title:
            lines += paragraphs(body)
    if commands:
        lines.append(".SH COMMANDS")
        for cmd, text in commands:
            lines.append(f".TP\n\\fB{escape(cmd)}\\fR\n{escape(text)}")
    lines.append(".SH OPTIONS")
    lines += option_entries(parser)
    for title, body in sections:
        if title:
            lines.append(f".SH {escape(title)}")
            lines += paragraphs(body)
    lines.append(".SH SEE ALSO")
    lines.append(",\n".join(f"\\fB{escape(s)}\\fR(1)" for s in see_also))
    return "\n".join(lines) + "\n"


def render(outdir: Path) -> list[Path]:
    """Write every page into ``outdir``; returns their paths."""
    os.environ["COLUMNS"] = str(WIDTH)
    parser, subs = build_parser()
    outdir.mkdir(parents=True, exist_ok=True)
    sub_action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: str(c.help or "") for c in sub_action._choices_actions}
    names = [n for n in subs if " " not in n]
    written = []
    top = page(
        "sdexec",
        "run commands as systemd transient units through an sdexec server",
        parser,
        [f"sdexec-{n}" for n in names] + ["systemd-run", "systemctl", "journalctl"],
        commands=[(n, helps.get(n, "")) for n in names],
    )
    written.append(outdir / "sdexec.1")
    written[-1].write_text(top)
    for n in names:
        sub = subs.get(f"{n} run", subs[n])  # perilog: document "perilog run"
        see = ["sdexec"] + [f"sdexec-{o}" for o in names if o != n]
        path = outdir / f"sdexec-{n}.1"
        path.write_text(page(f"sdexec-{n}", helps.get(n, n), sub, see))
        written.append(path)
    return written


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: manpages.py OUTDIR", file=sys.stderr)
        return 2
    for path in render(Path(argv[1])):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
