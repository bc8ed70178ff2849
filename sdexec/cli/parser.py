"""The ``sdexec`` command line's argparse tree: every command, option and help text.

:mod:`sdexec.cli.main` imports this module for every command line except
the plain ``sdexec exec`` ones that :mod:`sdexec.cli.quick` understands:
``argparse`` alone (with ``re``, ``enum`` and ``gettext``) costs more start-up
time than a whole remote ``/bin/true``.  The man pages are rendered from
:func:`build_parser` too (the docs' command reference, docs/_ext/sdexec_cli.py).
"""

from __future__ import annotations

import argparse
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import NoReturn

PROG = "sdexec"

_DESCRIPTION = """\
Run commands as systemd transient units through an sdexec server, a Flux
RFC 42 subprocess server. Each command becomes its own unit (with its own
cgroup, resource limits and journal), its output and exit status come back
to the caller, and background commands survive the caller and can be
signalled, listed and waited for by pid or by label.
"""

_EPILOG = """\
server:
  The server is named by a URI: --uri, else $SDEXEC_URI (the server sets it
  in the environment of every process it runs), else
  local:///run/sdexec/local for root, local://$XDG_RUNTIME_DIR/sdexec/local
  for anyone else (/tmp/sdexec-UID/local without XDG_RUNTIME_DIR). A URI is local://PATH, an
  absolute PATH, ssh://[USER@]HOST[:PORT]/PATH (OpenSSH, then "sdexec relay
  PATH" on HOST), tcp://HOST:PORT (ZeroMQ with CURVE keys, see "sdexec
  keygen"), or pid:PID for the server of process PID. "sdexec uri TARGET"
  prints the URI a target resolves to.

examples:
  sdexec serve &                          start a server on the default socket
  sdexec exec -- hostname                 run a command, as flux exec does
  sdexec exec --bg --waitable --label nightly -- ./backup.sh
  sdexec ps                               list the server's processes
  sdexec top                              a live view: CPU, memory, elapsed time
  sdexec kill -s INT nightly              signal a process by label or pid
  sdexec wait nightly                     its exit status becomes sdexec's
  sdexec proxy ssh://node12/run/sdexec/local
                                          a shell whose sdexec commands reach node12
  sdexec exec -r all -l hostname          on every rank of $SDEXEC_HOSTS
  sdexec perilog run --phase prolog --timeout 30 -- /etc/sdexec/prolog

Run "sdexec COMMAND --help" for the options and exit status of a command.
"""

_EXEC_DESCRIPTION = """\
Run COMMAND as a systemd transient unit on the server, with the caller's
environment (plus --env) in the caller's working directory (or --cwd).

By default sdexec stays attached: COMMAND's stdout and stderr are copied to
sdexec's own, byte for byte, sdexec's stdin is forwarded to COMMAND (with
RFC 42 flow control) until end of file, and SIGINT and SIGTERM received by
sdexec are forwarded to COMMAND. Pressing Ctrl-C twice within a second makes
sdexec give up; the server then stops COMMAND. If sdexec's stdout is a
closed pipe, COMMAND gets SIGPIPE, as in a local pipeline.

With --bg the command runs in the background: sdexec prints its pid and
exits, and the process keeps running under the server. Manage it with
"sdexec ps", "sdexec kill" and (if --waitable) "sdexec wait", by pid or by
its --label.

With --pty (-t) COMMAND gets a terminal of its own on the server, and
sdexec's terminal is raw until it exits. With --bg too, the terminal keeps
running with nobody attached: "sdexec attach" shows its screen and lets you
type, and ^] detaches again. With -r, --pty needs a single rank.
"""

_EXEC_EPILOG = """\
unit properties:
  -p NAME=VALUE sets a systemd unit property, as systemd-run -p does, for
  example -p MemoryMax=1G -p CPUQuota=50% -p Nice=5. It travels as the RFC 42
  command option SDEXEC_PROP_NAME; --setopt sets any other command option.

exit status:
  N        COMMAND exited with status N
  128+N    COMMAND was killed by signal N (143 for SIGTERM, 137 for SIGKILL)
  126      COMMAND could not be executed (permission denied, exec format error)
  127      COMMAND was not found
  125      sdexec failed: no server, lost connection, a working directory
           that does not exist, or another error from the server (the message
           says which)
  130      sdexec was interrupted before COMMAND started, or gave up after a
           double Ctrl-C
  With --bg: 0 once the process has started, 1 if it could not be started
  (for example, a label already in use).

many ranks:
  With -r IDSET (RFC 22: 0-3,7; or all) and/or -x IDSET, COMMAND runs at once
  on those ranks of a hosts file (--hosts FILE, else $SDEXEC_HOSTS: one server
  URI per line with an optional hostname; a rank is a line's position among
  the servers, from 0). -l prefixes each output line with "RANK: "; stdin goes
  to every rank, SIGINT and SIGTERM too; each command gets SDEXEC_RANK. The
  exit status is the highest of the ranks' (68 for an unreachable rank, when
  nothing is worse). If some rank did not succeed, a summary on stderr groups
  the ranks by outcome: "sdexec: [3,7]: exit 1", "sdexec: 5: unreachable: ...".
  With --bg, each rank's pid is printed as "RANK: PID".

examples:
  sdexec exec -- uname -a
  sdexec exec -r all -l -- hostname
  tar cf - src | sdexec exec -d /scratch -- tar xf -
  sdexec exec -n -p MemoryMax=2G -- ./simulate --steps 100
  sdexec exec --bg --waitable --label epilog -- /etc/sdexec/epilog.sh
  sdexec exec -t -- top
  sdexec exec --bg --pty --label dbg -- bash   then: sdexec attach dbg
"""

_KILL_EPILOG = """\
SIGNAL is a number or a name, with or without the SIG prefix (TERM, SIGTERM,
15). An argument of digits only is a pid; anything else is a label.

exit status:
  0 if the signal was delivered, 1 otherwise (the message says why); with -r,
  68 if a rank was unreachable (the highest of the ranks' statuses).

examples:
  sdexec kill 12345
  sdexec kill -s KILL nightly
"""

_WAIT_EPILOG = """\
Waits for a background process started with "exec --bg --waitable" and exits
with its status. An argument of digits only is a pid; anything else a label.
A process can be waited for once.

exit status:
  N or 128+N as for "sdexec exec" (the process's exit status, or 128 plus the
  signal that killed it); 125 if the wait failed (no such waitable process,
  no server); with -r the highest of the ranks', 68 for an unreachable rank.

example:
  sdexec exec --bg --waitable --label job -- sleep 10 && sdexec wait job
"""

_PS_EPILOG = """\
fields for -o: {pid} {label} {state} {cmd} {rank} {start} {elapsed}
{waitable} {unit} {cpu} {mem}, with Python format specs, e.g. -o '{pid:>8}
{state} {cmd}'. STATE is the server's one-letter process state, as in "flux
sproc ps": R running, T stopped, Z finished (a waitable process not yet
waited for). A process without a label shows "-". START is when it started
(the time today, else the date), ELAPSED how long it ran or has been running
([[DD-]HH:]MM:SS), WAITABLE whether "sdexec wait" may collect its status,
UNIT its systemd unit. cpu and mem (--stats) come from each unit's cgroup;
mem is the cgroup's memory.current, or the resident set of the unit's
processes where the memory controller is not enabled.

exit status:
  0 on success, 1 on error; with -r, 68 if a rank was unreachable.
"""

_ATTACH_DESCRIPTION = """\
Attach to a background process: print what it wrote so far (replayed from
the journal), follow its output live, and exit with its exit status when it
ends.
"""

_ATTACH_EPILOG = """\
Any number of clients may attach to a process at once; each gets the whole
output. Ctrl-C detaches and leaves the process running.

A background terminal ("exec --bg --pty") shows its screen as it is now
instead, then follows it. From a terminal, attach takes it over: your keys
go to it and your window size is its size, and an attach that had it
before is detached; --read-only (or stdin not a terminal) only watches. The
detach key, ^] unless --detach-key says otherwise, leaves it running.

Attaching does not reap: a finished waitable process stays (state Z in
"sdexec ps") until "sdexec wait" collects its status, and "sdexec logs"
prints its output as long as the journal keeps it, also after it was reaped.
(sdexec attach is a follower, an sdexec extension of RFC 42's attach: an
RFC 42 client's attach, one at a time, reaps; followers never do.)

The process is PID|LABEL (digits are a pid), or --label NAME, or --pid PID;
kill, wait and logs take these too.

exit status:
  N or 128+N as for "sdexec exec" (the process's exit status, or 128 plus the
  signal that killed it); 125 if sdexec failed (no such background process,
  no server); 130 after Ctrl-C. A terminal: 0 when detached (by the key, or
  taken over), 128+N after signal N.

examples:
  sdexec exec --bg --waitable --label job -- ./long-task
  sdexec attach job                  # Ctrl-C to leave it running
  sdexec wait job                    # its status, once
  sdexec exec --bg --pty --label dbg -- bash
  sdexec attach dbg                  # ^] to leave it running
"""

_LOGS_DESCRIPTION = """\
Print the output a background process has written, stdout to stdout and
stderr to stderr, each in order. The output is kept in the journal
(SyslogIdentifier is the label), or in files in the server's state
directory when there is no journald, so it can be printed for as long as
the journal keeps it: while the process runs, after it ended, and after
"sdexec wait" or its end reaped it (the server remembers its last 4096
background processes). An error only when neither has it.
"""

_LOGS_EPILOG = """\
exit status:
  0 when the output was printed (even if there was none), 1 if there is no
  such process (running or remembered), or the request failed; 130 after
  Ctrl-C.

examples:
  sdexec logs job1
  sdexec logs -t --since '-10min' job1
  sdexec logs -f --tail 20 job1
"""

_SERVE_EPILOG = """\
The server listens on the URI's socket (default as for the other commands),
runs every command as a transient unit of the chosen systemd manager, and
stops on SIGTERM or SIGINT. Background processes outlive it and are found
again, by label, when it restarts with the same --state-dir.

--systemd:
  user     the calling user's manager (systemctl --user)
  system   the system manager (root)
  private  a private, confined user manager started by the server; for
           machines without a user session bus

If the manager dies, requests fail at once with "the systemd manager died"
(EHOSTDOWN), and the processes it ran are reported lost (their wait says
so); a private manager is started again, and for the others the server
waits for the manager to come back. A lost bus (its dbus-daemon died) is
reconnected and nothing is lost. After --manager-timeout seconds without
a manager, the server exits.
"""


_PROXY_DESCRIPTION = """\
Connect to the server identified by TARGET, then spawn a shell ($SHELL) or
COMMAND with SDEXEC_URI (and FLUX_URI) pointing to a local:// socket in a
private directory managed by the proxy. As long as the child runs, the
proxy routes messages (requests, responses, events, service requests)
between the server and that socket; then it removes the socket and exits
with the child's status. TARGET is anything "sdexec uri" resolves.

If the connection to the server is lost, the proxy prints an error, sends
SIGHUP and SIGCONT to the child and waits for it before exiting. With
--reconnect it tries again every 2 seconds instead: the requests that were
in flight fail with ECONNRESET, and those made while it is down are held
(for --hold seconds at most) and sent once it is back.
"""

_PROXY_EPILOG = """\
exit status:
  the child's exit status, or 128+N if a signal N killed it; 127 if COMMAND
  was not found, 126 if it could not be run; 125 if the proxy could not
  connect (or the server's version differs, without --force).

examples:
  sdexec proxy local:///run/sdexec/local
  sdexec proxy ssh://node12/run/sdexec/local sdexec ps
  sdexec proxy --reconnect tcp://node12:5555
"""

_FLUX_MODULE_EPILOG = """\
The module is the sdexec server as the sdexec service of one Flux broker
rank: the same RFC 42 service as sdexec serve, reached through Flux's
overlay, with the credentials the broker stamps on each request (owner
only; on rank 0, only the broker's own clients). It runs under flux-core's
Python and finds sdexec and its dependencies where sdexec is installed: a
virtual environment, pip --user, the Debian package or a source tree's
.venv. For an editable install the printed file is a copy the command
writes into the environment (PREFIX/share/sdexec/flux-module.py), since
the source tree cannot know which environment it was installed into.
$SDEXEC_PYTHONPATH, in the broker's environment, serves other layouts.

module arguments:
  state-dir=DIR     background processes' records (default
                    STATEDIR/sdexec.RANK, else RUNDIR/sdexec.RANK)
  systemd=MANAGER   user (default) or system
  journal=DIR       a journal directory to read ($SDEXEC_JOURNAL_DIR)
  log-level=LEVEL   debug, info (default), warning, error

configuration:
  [systemd] enable = true and [modules.sdexec] module = "PATH" make rc1
  load it on every rank instead of flux-core's C module; [exec] service =
  "sdexec" sends job shells to it (method = "bgexec": as background units
  that outlive a module reload). [systemd] sdexec-debug (a boolean) is
  read at load and on every config reload.

behaviour:
  It serves exec, write, kill, wait, list, stats-get, disconnect and
  config-reload as flux-core's module does, with SDEXEC_NAME, SDEXEC_PROP_*,
  SDEXEC_STOP_TIMER_SEC/_SIGNAL (EDEADLK), SDEXEC_R_LOCAL through
  sdexec-mapper, and one output response per line by default; and attach,
  logs, write credit, channels and stopped besides. Background units keep
  running when the module is removed and are adopted again when it is
  loaded. Its events are in flux dmesg; unit output is in the journal.

examples:
  flux exec -r all flux module load --name=sdexec $(sdexec flux-module-path)
  flux exec -r all flux module remove sdexec
  sdexec exec -r all -l hostname          (inside the instance)
"""

_KEYGEN_EPILOG = """\
Writes NAME.key (the public key, to give to the server's administrator) and
NAME.key_secret (keep it private) in DIR, in ZeroMQ's certificate format.
A server authorizes a client by having its NAME.key in its
--curve-authorized directory; "uid" metadata (--uid) says which user the
key stands for (default: the server's owner). A client finds its keys in
$SDEXEC_CURVE_CERT and $SDEXEC_CURVE_SERVER, by default client.key_secret
and server.key in $SDEXEC_CURVE_DIR (~/.config/sdexec/curve).
"""

_width: int | None = None


def _terminal_width() -> int:
    """What shutil.get_terminal_size() gives, less 2, without importing shutil."""
    global _width
    if _width is None:
        try:
            columns = int(os.environ.get("COLUMNS", "0"))
        except ValueError:
            columns = 0
        if columns <= 0:
            try:
                columns = os.get_terminal_size(1).columns
            except OSError:
                columns = 80
        _width = max(columns, 40) - 2
    return _width


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose "expected one argument" says how to pass ``-x`` as a value."""

    def error(self, message: str) -> NoReturn:
        head, sep, rest = message.partition(": expected one argument")
        if sep and not rest and head.startswith("argument "):
            option = head.removeprefix("argument ").split("/")[-1]
            message += f" (a value that starts with '-' is written {option}=VALUE)"
        super().error(message)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """argparse's formatter, but it does not import shutil (and bz2, lzma...).

    argparse makes a formatter for every ``add_argument``, so its lazy
    ``import shutil`` would run on every start-up, not only for ``--help``.
    """

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        super().__init__(prog, indent_increment, max_help_position, width or _terminal_width())


def _name_value(text: str) -> tuple[str, str]:
    """argparse type for NAME=VALUE arguments."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def _label(text: str) -> str:
    from sdexec.proto.labels import label_problem

    problem = label_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


def signal_number(text: str) -> int:
    """argparse type for a signal given by number or name (TERM, SIGTERM, 15)."""
    if text.isascii() and text.isdigit():
        num = int(text)
        if 0 < num < 65:
            return num
        raise argparse.ArgumentTypeError(f"invalid signal number: {text}")
    import signal  # only when a name is given

    name = text.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    value = getattr(signal.Signals, name, None) if name.isidentifier() else None
    if not isinstance(value, signal.Signals):
        raise argparse.ArgumentTypeError(f"unknown signal: {text}")
    return int(value)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser and the subparsers by name."""
    fmt = _Formatter
    uri_help = "the server's URI (default: $SDEXEC_URI, else the default socket)"
    uri_parent = _Parser(add_help=False, formatter_class=fmt)
    uri_parent.add_argument("--uri", metavar="URI", default=argparse.SUPPRESS, help=uri_help)
    ranks_parent = _ranks_parent(fmt)
    sign_parent = _sign_parent(fmt)

    parser = _Parser(prog=PROG, description=_DESCRIPTION, epilog=_EPILOG, formatter_class=fmt)
    parser.add_argument("--uri", metavar="URI", default=None, help=uri_help)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_Parser
    )
    subs: dict[str, argparse.ArgumentParser] = {}

    p = sub.add_parser(
        "exec",
        parents=[uri_parent, ranks_parent, sign_parent],
        help="run a command on the server, forwarding its I/O and signals",
        description=_EXEC_DESCRIPTION,
        epilog=_EXEC_EPILOG,
        formatter_class=fmt,
        usage="%(prog)s [options] [--] COMMAND [ARG...]",
    )
    p.add_argument("--bg", action="store_true", help="run in the background; print the pid")
    p.add_argument(
        "--waitable",
        action="store_true",
        help="let 'sdexec wait' collect the exit status (with --bg)",
    )
    p.add_argument("--label", metavar="NAME", type=_label, help="name the process (unique)")
    p.add_argument(
        "-d", "--cwd", metavar="DIR", help="working directory (default: the current one)"
    )
    p.add_argument(
        "--env",
        metavar="NAME=VALUE",
        type=_name_value,
        action="append",
        default=[],
        help="set an environment variable (repeatable; default: the whole environment)",
    )
    p.add_argument(
        "--setopt",
        metavar="NAME=VALUE",
        type=_name_value,
        action="append",
        default=[],
        help="set an RFC 42 command option (repeatable)",
    )
    p.add_argument(
        "-p",
        "--property",
        metavar="NAME=VALUE",
        type=_name_value,
        action="append",
        default=[],
        help="set a systemd unit property, e.g. MemoryMax=1G (repeatable)",
    )
    p.add_argument(
        "-n", "--no-stdin", action="store_true", help="do not forward stdin (send EOF at once)"
    )
    p.add_argument(
        "--strict-properties",
        action="store_true",
        help="fail if a -p resource limit cannot be enforced (default: a warning)",
    )
    p.add_argument(
        "-t",
        "--pty",
        action="count",
        default=0,
        help="give COMMAND a terminal (stdin must be one; -tt: even if it is not); "
        "with --bg, one to attach to later",
    )
    p.add_argument(
        "-l",
        "--label-io",
        action="store_true",
        help="with -r: prefix each output line with its rank",
    )
    p.add_argument(
        "-L",
        "--label-host",
        action="store_true",
        help="with -r: prefix each output line with its rank's host name (as pdsh does; "
        "inside Flux, from the instance's hostlist)",
    )
    p.add_argument("cmdline", nargs=argparse.REMAINDER, metavar="COMMAND [ARG...]")
    subs["exec"] = p

    p = sub.add_parser(
        "kill",
        parents=[uri_parent, ranks_parent, sign_parent],
        help="send a signal to a process",
        description="Send a signal to a process of the server, by pid or label.",
        epilog=_KILL_EPILOG,
        formatter_class=fmt,
    )
    p.add_argument(
        "-s",
        "--signal",
        metavar="SIGNAL",
        type=signal_number,
        default=15,
        help="the signal (default: SIGTERM)",
    )
    _process_target(p)
    subs["kill"] = p

    p = sub.add_parser(
        "wait",
        parents=[uri_parent, ranks_parent, sign_parent],
        help="wait for a waitable background process and return its status",
        description="Wait for a background process to finish and exit with its status.",
        epilog=_WAIT_EPILOG,
        formatter_class=fmt,
    )
    _process_target(p)
    subs["wait"] = p

    p = sub.add_parser(
        "ps",
        parents=[uri_parent, ranks_parent, sign_parent],
        help="list the server's processes",
        description="List the processes of the server: PID LABEL STATE CMD.",
        epilog=_PS_EPILOG,
        formatter_class=fmt,
    )
    p.add_argument("--json", action="store_true", help="print the server's raw JSON response")
    p.add_argument("-o", "--format", metavar="FORMAT", help="a format for each line")
    p.add_argument("-n", "--no-header", action="store_true", help="omit the header line")
    p.add_argument("-l", "--long", action="store_true", help="also the WAITABLE and UNIT columns")
    p.add_argument(
        "-s",
        "--stats",
        action="store_true",
        help="add CPU (%% of one CPU, over the unit's life), MEM and ELAPSED from each "
        "unit's cgroup",
    )
    subs["ps"] = p

    p = sub.add_parser(
        "attach",
        parents=[uri_parent, sign_parent],
        help="follow a background process and wait for its end",
        description=_ATTACH_DESCRIPTION,
        epilog=_ATTACH_EPILOG,
        formatter_class=fmt,
    )
    p.add_argument(
        "--read-only",
        action="store_true",
        help="a background terminal: watch it, without taking it over",
    )
    p.add_argument(
        "--detach-key",
        metavar="KEY",
        default="^]",
        help="a background terminal: the key that detaches, ^X style, or none (default: ^])",
    )
    _one_rank(p)
    _process_target(p)
    subs["attach"] = p

    p = sub.add_parser(
        "logs",
        parents=[uri_parent, sign_parent],
        help="print a background process's output",
        description=_LOGS_DESCRIPTION,
        epilog=_LOGS_EPILOG,
        formatter_class=fmt,
    )
    p.add_argument("-f", "--follow", action="store_true", help="keep following until it ends")
    p.add_argument("--tail", type=int, metavar="N", help="only the last N lines")
    p.add_argument(
        "--since",
        metavar="TIME",
        help="only what was written since TIME, as journalctl takes it "
        "('2026-11-23 10:00', '-1h', '10 min ago', 'today')",
    )
    p.add_argument(
        "-t",
        "--timestamps",
        action="store_true",
        help="start each line with when it was written (as journalctl -o short-precise)",
    )
    p.add_argument("--json", action="store_true", help="one RFC 24 io object per line")
    _one_rank(p)
    _process_target(p)
    subs["logs"] = p

    p = sub.add_parser(
        "serve",
        help="run an sdexec server",
        description="Run an sdexec server in the foreground.",
        epilog=_SERVE_EPILOG,
        formatter_class=fmt,
    )
    p.add_argument(
        "--uri",
        metavar="URI",
        default=argparse.SUPPRESS,
        help="where to listen (default: the default socket, never $SDEXEC_URI: that"
        " names the server of the processes a server runs)",
    )
    p.add_argument(
        "--systemd",
        choices=("user", "system", "private"),
        default=None,
        help="which systemd manager runs the units (default: chosen by the server)",
    )
    p.add_argument("--rank", type=int, default=0, help="this server's rank (default: 0)")
    p.add_argument("--state-dir", metavar="DIR", default=None, help="where state is kept")
    p.add_argument(
        "--strict-properties",
        action="store_true",
        help="refuse an exec whose resource property (MemoryMax, CPUQuota, TasksMax...) "
        "cannot be enforced for want of a cgroup controller, instead of a warning",
    )
    p.add_argument(
        "--on-shutdown",
        choices=("keep", "stop"),
        default="keep",
        help="what happens to background processes when the server stops (default: keep)",
    )
    p.add_argument(
        "--manager-timeout",
        metavar="SECONDS",
        type=float,
        default=None,
        help="how long to keep trying to reach a lost systemd manager again before the "
        "server exits (default: 30)",
    )
    p.add_argument(
        "--log-level",
        metavar="LEVEL",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="debug, info, warning or error (default: info)",
    )
    _add_security_options(p)
    p.add_argument(
        "--listen",
        metavar="tcp://HOST:PORT",
        default=None,
        help="also listen on a ZeroMQ tcp:// endpoint, with CURVE",
    )
    p.add_argument(
        "--curve-key", metavar="FILE", help="the server's secret key file (NAME.key_secret)"
    )
    p.add_argument(
        "--curve-authorized", metavar="DIR", help="directory of authorized client *.key files"
    )
    p.add_argument(
        "--curve-uid",
        metavar="UID",
        type=int,
        default=None,
        help="uid of client keys without uid metadata (default: the server's owner)",
    )
    subs["serve"] = p

    p = sub.add_parser(
        "proxy",
        help="share one connection to a server with a shell or command",
        description=_PROXY_DESCRIPTION,
        epilog=_PROXY_EPILOG,
        formatter_class=fmt,
        usage="%(prog)s [-f] [-n] [--reconnect [--hold SECONDS]] TARGET [COMMAND [ARG...]]",
    )
    p.add_argument(
        "-f", "--force", action="store_true", help="connect to another version, with a warning"
    )
    p.add_argument(
        "-n", "--nohup", action="store_true", help="do not signal the child on connection loss"
    )
    p.add_argument(
        "--reconnect", action="store_true", help="on connection loss, reconnect every 2 s"
    )
    p.add_argument(
        "--hold",
        type=_nonnegative_float,
        default=60.0,
        metavar="SECONDS",
        help="with --reconnect: how long a request made while the connection is down waits"
        " for it to come back, then fails with ECONNRESET (default: 60; 0: at once)",
    )
    p.add_argument("target", metavar="TARGET")
    p.add_argument("cmdline", nargs=argparse.REMAINDER, metavar="COMMAND [ARG...]")
    subs["proxy"] = p

    p = sub.add_parser(
        "relay",
        help="bridge stdin/stdout to a local server socket (run by ssh://)",
        description="Copy bytes between stdin/stdout and the server socket PATH.",
        formatter_class=fmt,
    )
    p.add_argument("path", metavar="PATH")
    subs["relay"] = p

    p = sub.add_parser(
        "keygen",
        help="make a CURVE key pair for tcp://",
        description="Make a CURVE key pair for tcp:// servers and clients.",
        epilog=_KEYGEN_EPILOG,
        formatter_class=fmt,
    )
    p.add_argument("-d", "--dir", metavar="DIR", default=None, help="where to write the keys")
    p.add_argument("--name", default="client", help="file name stem (default: client)")
    p.add_argument("--uid", type=int, default=None, help="uid metadata for the public key")
    subs["keygen"] = p

    p = sub.add_parser(
        "uri",
        help="print the URI a target resolves to",
        description="Resolve TARGET (a URI, a path, pid:PID, or a plugin scheme) and print it.",
        formatter_class=fmt,
    )
    p.add_argument("target", metavar="TARGET")
    subs["uri"] = p

    p = sub.add_parser(
        "flux-module-path",
        help="print the path of the Flux broker module file",
        description=(
            "Print the absolute path of sdexec's Flux broker module, for "
            "'flux module load --name=sdexec PATH' on one rank, or "
            "'flux exec -r all flux module load --name=sdexec PATH' on all of them, "
            "or [modules.sdexec] module = PATH in the instance's configuration."
        ),
        formatter_class=fmt,
    )
    p.epilog = _FLUX_MODULE_EPILOG
    p.set_defaults(command="flux_module_path")
    subs["flux-module-path"] = p
    from sdexec.cli.perilog import add_parser as add_perilog_parser

    subs.update(add_perilog_parser(sub, [ranks_parent], fmt))
    from sdexec.cli.top import add_parser as add_top_parser

    subs["top"] = add_top_parser(sub, [uri_parent, ranks_parent, sign_parent], fmt)
    return parser, subs


def _process_target(p: argparse.ArgumentParser) -> None:
    """The process a command names: PID|LABEL, or --label NAME, or --pid PID."""
    p.add_argument(
        "target",
        metavar="PID|LABEL",
        nargs="?",
        help="the process: digits are a pid, anything else a label",
    )
    group = p.add_mutually_exclusive_group()
    group.add_argument("--label", metavar="NAME", dest="target_label", help="the process's label")
    group.add_argument(
        "--pid", metavar="PID", dest="target_pid", type=_positive_int, help="the process's pid"
    )


def _resolve_target(args: argparse.Namespace, p: argparse.ArgumentParser) -> None:
    """``args.target_ref``: the RFC 42 reference of the process named; ``args.target``:
    how to name it again on a command line (``--label 123`` for a label of digits)."""
    given = [x for x in (args.target, args.target_label, args.target_pid) if x is not None]
    if len(given) != 1:
        p.error("name the process once: PID|LABEL, --label NAME or --pid PID")
    if args.target_label is not None:
        if not args.target_label:
            p.error("--label: a label must not be empty")
        args.target_ref = {"pid": -1, "label": args.target_label}
        digits = args.target_label.isascii() and args.target_label.isdigit()
        args.target = f"--label {args.target_label}" if digits else args.target_label
    elif args.target_pid is not None:
        args.target_ref = {"pid": args.target_pid}
        args.target = str(args.target_pid)
    else:
        from sdexec.cli.common import target_payload

        args.target_ref = target_payload(args.target)


def _one_rank(p: argparse.ArgumentParser) -> None:
    """-r RANK and --hosts: the one rank a command reaches (attach, logs)."""
    group = p.add_argument_group("another rank")
    group.add_argument(
        "-r",
        "--rank",
        dest="rank",
        type=int,
        metavar="RANK",
        default=None,
        help="the rank's server: through Flux inside a Flux instance ($FLUX_URI), "
        "else from the hosts file",
    )
    group.add_argument(
        "--hosts",
        metavar="FILE",
        default=None,
        help="the hosts file for -r (default: $SDEXEC_HOSTS)",
    )


def _ranks_parent(fmt: type[argparse.HelpFormatter]) -> _Parser:
    """--hosts, -r and -x: address many servers (ranks) of a hosts file at once."""
    parent = _Parser(add_help=False, formatter_class=fmt)
    group = parent.add_argument_group("many ranks")
    group.add_argument(
        "--hosts",
        metavar="FILE",
        default=None,
        help="the hosts file, one server URI per line (default: $SDEXEC_HOSTS)",
    )
    group.add_argument(
        "-r",
        "--ranks",
        metavar="IDSET",
        default=None,
        help="run on these ranks of the hosts file: an RFC 22 idset (0-3,7) or 'all'",
    )
    group.add_argument(
        "-x",
        "--exclude",
        metavar="IDSET",
        default=None,
        help="leave out these ranks (implies -r all when -r is not given)",
    )
    return parent


def _sign_parent(fmt: type[argparse.HelpFormatter]) -> _Parser:
    """Client options for RFC 42 signed requests (see sdexec.cli.signing)."""
    parent = _Parser(add_help=False, formatter_class=fmt)
    group = parent.add_argument_group(
        "signing", "RFC 42 signed requests; by default signed when the server's owner is not you"
    )
    group.add_argument("--sign", action="store_true", help="always sign requests")
    group.add_argument("--no-sign", action="store_true", help="never sign requests")
    group.add_argument(
        "--sign-mechanism",
        choices=("none", "munge"),
        default=None,
        help="RFC 39 mechanism (default: $SDEXEC_SIGN_MECHANISM, else munge)",
    )
    group.add_argument(
        "--munge-socket",
        metavar="PATH",
        default=None,
        help="munged's socket (default: $SDEXEC_MUNGE_SOCKET, else libmunge's)",
    )
    return parent


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text}")
    return value


def _nonnegative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds, 0 or more: {text}")
    return value


def _add_security_options(p: argparse.ArgumentParser) -> None:
    """``sdexec serve`` options for access, signatures and limits (sdexec.security)."""
    g = p.add_argument_group("security", "who may connect, signed requests, limits")
    g.add_argument(
        "--owner",
        metavar="UID|USER",
        default=None,
        help="the instance owner (default: the server's uid); if it differs from the "
        "server's uid, or cannot be resolved, every request must be signed",
    )
    g.add_argument(
        "--allow-guests",
        action="store_true",
        help="let other users connect; they see only their own processes, which run as them",
    )
    g.add_argument(
        "--sign-ttl",
        metavar="SECONDS",
        type=_positive_float,
        default=None,
        help="how long a signature is valid, and remembered against replay (default: 60)",
    )
    g.add_argument(
        "--sign-mechanisms",
        metavar="LIST",
        default=None,
        help="accepted RFC 39 mechanisms, comma-separated (default: none,munge)",
    )
    g.add_argument(
        "--munge-socket",
        metavar="PATH",
        default=None,
        help="munged's socket (default: $SDEXEC_MUNGE_SOCKET, else libmunge's)",
    )
    g.add_argument(
        "--max-message",
        metavar="BYTES",
        type=_positive_int,
        default=None,
        help="largest message accepted; a larger one closes the connection (default: 4 MiB)",
    )
    g.add_argument(
        "--max-connections",
        metavar="N",
        type=_positive_int,
        default=None,
        help="connections at once; more are refused with EAGAIN (default: 1024)",
    )
    g.add_argument(
        "--max-connections-per-uid",
        metavar="N",
        type=_positive_int,
        default=None,
        help="connections at once from one uid (default: 128)",
    )
    g.add_argument(
        "--max-output-buffer",
        metavar="BYTES",
        type=_positive_int,
        default=None,
        help="unread responses queued for a client before it is disconnected (default: 8 MiB)",
    )


def _version() -> str:
    from sdexec import __version__

    return __version__


def many_ranks(args: argparse.Namespace, subs: dict[str, argparse.ArgumentParser]) -> bool:
    """True when -r/-x address the ranks of a hosts file (-x alone means -r all)."""
    if getattr(args, "ranks", None) is None and getattr(args, "exclude", None) is None:
        return False
    if args.ranks is None:
        args.ranks = "all"
    if getattr(args, "uri", None) is not None:
        subs[args.command].error("--uri and -r/-x exclude each other")
    return True


def parse(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, bool]:
    """The namespace for a whole command line, and whether it addresses many ranks.

    Exits with argparse's usage message (status 2) on a bad command line.
    """
    parser, subs = build_parser()
    words = list(argv) if argv is not None else None
    args, extra = parser.parse_known_args(words)
    command = subs.get(args.command, parser)
    if extra:  # the subcommand's usage, not the top level's
        command.error(f"unrecognized arguments: {' '.join(extra)}")
    many = many_ranks(args, subs)
    if args.command in ("kill", "wait", "attach", "logs"):
        _resolve_target(args, subs[args.command])
    if args.command == "exec":
        if args.cmdline[:1] == ["--"]:
            del args.cmdline[0]
        if not args.cmdline:
            subs["exec"].error("a COMMAND is required")
        if args.waitable and not args.bg:
            subs["exec"].error("--waitable needs --bg (a foreground command's status is sdexec's)")
    return args, many
