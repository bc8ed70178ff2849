"""The common ``sdexec exec`` command lines, parsed without argparse.

Theory of operation
-------------------
Importing ``argparse`` (with ``re``, ``enum`` and ``gettext``) and building
the tree of every command costs more than a whole ``/bin/true`` on the
server.  :func:`parse_exec` reads the options of a plain, single-server
``sdexec exec`` and returns the namespace argparse would have made, or
None for anything else: an unknown or abbreviated option, ``-h``, ``-r``/``-x``,
a value that argparse would check or might read differently (one starting
with ``-``, a label that is not one, a bad ``NAME=VALUE``), joined short options, or
no COMMAND.  The caller then parses the whole command line with
:mod:`sdexec.cli.parser`, which also gives the error message.  So this
module needs to be right only about what it accepts, and the unit tests
check exactly that against the real parser.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

# Options of "sdexec exec" by kind, with the attribute argparse stores them in.
_FLAGS = {
    "--bg": "bg",
    "--waitable": "waitable",
    "-n": "no_stdin",
    "--no-stdin": "no_stdin",
    "-l": "label_io",
    "--label-io": "label_io",
    "-L": "label_host",
    "--label-host": "label_host",
    "--sign": "sign",
    "--no-sign": "no_sign",
    "--strict-properties": "strict_properties",
}
_VALUES = {
    "--uri": "uri",
    "--label": "label",
    "-d": "cwd",
    "--cwd": "cwd",
    "--hosts": "hosts",
    "--sign-mechanism": "sign_mechanism",
    "--munge-socket": "munge_socket",
}
_NAME_VALUES = {"--env": "env", "--setopt": "setopt", "-p": "property", "--property": "property"}
_CHOICES = {"sign_mechanism": ("none", "munge")}


class Args:
    """An argparse-like namespace: attributes only."""

    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)


def _defaults() -> dict[str, Any]:
    fields: dict[str, Any] = dict.fromkeys(_FLAGS.values(), False)
    fields.update(dict.fromkeys(_VALUES.values()))
    fields.update({dest: [] for dest in _NAME_VALUES.values()})
    fields.update(command="exec", ranks=None, exclude=None, pty=0)  # -t: argparse
    return fields


def parse_exec(argv: Sequence[str]) -> Args | None:
    """The namespace for ``sdexec exec ARGV...``, or None to let argparse decide."""
    fields = _defaults()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":  # "-" is a COMMAND to argparse too
            break
        name, eq, attached = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if name in _FLAGS and not eq:
            fields[_FLAGS[name]] = True
            i += 1
            continue
        if name not in _VALUES and name not in _NAME_VALUES:
            return None
        if eq:
            value, i = attached, i + 1
        elif i + 1 < len(argv):
            value, i = argv[i + 1], i + 2
        else:
            return None
        if value.startswith("-"):
            return None
        if name in _VALUES:
            dest = _VALUES[name]
            if dest == "label":
                from sdexec.proto.labels import label_problem

                if label_problem(value) is not None:
                    return None
            if value not in _CHOICES.get(dest, (value,)):
                return None
            fields[dest] = value
        else:
            key, sep, val = value.partition("=")
            if not sep or not key:
                return None
            fields[_NAME_VALUES[name]].append((key, val))
    cmdline = list(argv[i:])
    if not cmdline or (fields["waitable"] and not fields["bg"]):
        return None  # argparse says what is wrong
    return Args(cmdline=cmdline, **fields)
