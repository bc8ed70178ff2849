"""StartTransientUnit properties: unit settings as systemd's typed D-Bus values.

Theory of operation
-------------------
``org.freedesktop.systemd1.Manager.StartTransientUnit`` takes a unit's settings
as ``a(sv)``: ``(name, variant)`` pairs whose names and types are systemd's
D-Bus ones (org.freedesktop.systemd1(5)), which are not always the names people
write in unit files: ``RuntimeMaxSec=1min`` travels as ``RuntimeMaxUSec`` in
microseconds, ``MemoryMax=50%`` as ``MemoryMaxScale`` relative to 2^32-1,
``CPUQuota=150%`` as ``CPUQuotaPerSecUSec``.  ``systemd-run -p`` does that
translation on the client side; this module does the same for the RFC 42
``SDEXEC_PROP_<Name>`` options and for ``sdexec -p Name=Value``.

One table maps each supported setting to a converter.  A converter parses the
text the way systemd parses it (systemd.resource-control(5), systemd.time(7),
systemd.exec(5)) and returns the D-Bus properties it stands for: usually one,
two for ``LimitX=SOFT:HARD`` and ``TimeoutSec=``.  Parsers raise
``ValueError`` with a reason; :func:`convert_properties` turns that into one
``SdexecError(EINVAL)`` that names the property and the value, so an operator
sees what was wrong before anything reaches systemd.

:class:`UnitSpec` assembles the whole property list for one command: the
command itself as ``ExecStartEx`` with ``no-env-expand`` (systemd would
otherwise expand ``$VAR`` and ``$$`` in argv), the environment, the stdio file
descriptors as indices into the message's fd list, and then the user's
settings, the last assignment of a name winning.  Environment names systemd
refuses (it allows only ``[A-Za-z_][A-Za-z0-9_]*`` and fails the whole unit
otherwise) are left out rather than failing every command of a user whose
shell exports bash functions.

Pure: no I/O and no bus connection; ``Variant`` is only a value type here.
"""

from __future__ import annotations

import errno
import re
import shlex
import signal
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

from dbus_fast import Variant

from sdexec.base.errors import SdexecError
from sdexec.proto import idset

UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1
#: systemd's "no limit" on the bus: CGROUP_LIMIT_MAX, USEC_INFINITY, RLIM_INFINITY.
INFINITY = UINT64_MAX

#: RFC 42 ``opts`` keys with this prefix carry unit properties.
OPTS_PREFIX = "SDEXEC_PROP_"
#: Longest default Description (the joined argv) before it is cut.
DESCRIPTION_MAX = 200

UNIT_PATH_PREFIX = "/org/freedesktop/systemd1/unit/"

Property = tuple[str, Variant]
Converter = Callable[[str, str], list[Property]]

# --- text checks -------------------------------------------------------------


def _text_problem(text: str) -> str | None:
    """Why ``text`` cannot be a D-Bus string, or None if it can."""
    if "\0" in text:
        return "contains a NUL character"
    if text.isascii():  # a flag CPython keeps on the string: no encoding needed
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    return None


def _show(value: str, limit: int = 80) -> str:
    """A value quoted for an error message, cut if very long."""
    if len(value) > limit:
        value = value[:limit] + "..."
    return repr(value)


# --- number parsers ----------------------------------------------------------

_UINT = re.compile(r"[0-9]+")
_INT = re.compile(r"[+-]?[0-9]+")


def _parse_uint(text: str, maximum: int = UINT64_MAX) -> int:
    if not _UINT.fullmatch(text):
        raise ValueError("expected a non-negative integer")
    n = int(text)
    if n > maximum:
        raise ValueError(f"must be at most {maximum}")
    return n


def _int_in(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not _INT.fullmatch(text):
            raise ValueError("expected an integer")
        n = int(text)
        if not low <= n <= high:
            raise ValueError(f"must be between {low} and {high}")
        return n

    return parse


_PERCENT = re.compile(r"([0-9]+)(?:\.([0-9]{1,2}))?%")


def _parse_permyriad(text: str, maximum: int | None = 10000) -> int | None:
    """``N%`` / ``N.N%`` / ``N.NN%`` as hundredths of a percent; None if no ``%``."""
    if not text.endswith("%"):
        return None
    m = _PERCENT.fullmatch(text)
    if m is None:
        raise ValueError("expected a percentage such as 50% (at most two decimals)")
    whole, frac = m.groups()
    value = int(whole) * 100 + int((frac or "").ljust(2, "0"))
    if maximum is not None and value > maximum:
        raise ValueError(f"must be at most {maximum // 100}%")
    return value


def _scale_from_permyriad(permyriad: int) -> int:
    # systemd passes percentages relative to 2^32-1 == 100%, rounding to nearest
    # (UINT32_SCALE_FROM_PERMYRIAD in systemd's percent-util.h).
    return min((permyriad * UINT32_MAX + 5000) // 10000, UINT32_MAX)


_SIZE = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(?:([KMGTPE])(?:i?B)?|B)?")
_SIZE_FACTOR: dict[str | None, int] = {
    None: 1,
    "K": 1 << 10,
    "M": 1 << 20,
    "G": 1 << 30,
    "T": 1 << 40,
    "P": 1 << 50,
    "E": 1 << 60,
}


def _parse_size(text: str) -> int:
    """A byte count, base 1024 like systemd's parse_size: ``512``, ``1.5G``, ``4KiB``, ``2MB``.

    ``B``/``iB`` after the letter are accepted for readability and change
    nothing: every multiple is a power of 1024, as in systemd.
    """
    m = _SIZE.fullmatch(text)
    if m is None:
        raise ValueError("expected a size in bytes, optionally with a K/M/G/T/P/E suffix")
    number, suffix = m.groups()
    size = int(Fraction(number) * _SIZE_FACTOR[suffix])
    if size > UINT64_MAX:
        raise ValueError("size is too large")
    return size


USEC_PER_SEC = 1_000_000
_TIME_UNITS: dict[str, int] = {
    "usec": 1,
    "us": 1,
    "µs": 1,
    "μs": 1,
    "msec": 1000,
    "ms": 1000,
    "seconds": USEC_PER_SEC,
    "second": USEC_PER_SEC,
    "sec": USEC_PER_SEC,
    "s": USEC_PER_SEC,
    "minutes": 60 * USEC_PER_SEC,
    "minute": 60 * USEC_PER_SEC,
    "min": 60 * USEC_PER_SEC,
    "m": 60 * USEC_PER_SEC,
    "hours": 3600 * USEC_PER_SEC,
    "hour": 3600 * USEC_PER_SEC,
    "hr": 3600 * USEC_PER_SEC,
    "h": 3600 * USEC_PER_SEC,
    "days": 86400 * USEC_PER_SEC,
    "day": 86400 * USEC_PER_SEC,
    "d": 86400 * USEC_PER_SEC,
    "weeks": 7 * 86400 * USEC_PER_SEC,
    "week": 7 * 86400 * USEC_PER_SEC,
    "w": 7 * 86400 * USEC_PER_SEC,
    # systemd.time(7): a month is 30.44 days, a year 365.25 days.
    "months": 2_629_800 * USEC_PER_SEC,
    "month": 2_629_800 * USEC_PER_SEC,
    "M": 2_629_800 * USEC_PER_SEC,
    "years": 31_557_600 * USEC_PER_SEC,
    "year": 31_557_600 * USEC_PER_SEC,
    "y": 31_557_600 * USEC_PER_SEC,
}
# Longest unit first, so that "ms" is not read as "m" followed by junk.
_TIME_PART = re.compile(
    r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*("
    + "|".join(re.escape(u) for u in sorted(_TIME_UNITS, key=len, reverse=True))
    + r")?\s*"
)


def parse_timespan(text: str, default_unit: int = USEC_PER_SEC) -> int:
    """A systemd.time(7) time span in microseconds (``infinity`` -> INFINITY).

    ``90``, ``1.5s``, ``1min 30s``, ``2h5min`` and ``500ms`` are all accepted;
    a number without a unit counts in ``default_unit`` microseconds (seconds,
    as in ``RuntimeMaxSec=``).  Fractions are truncated to whole microseconds.
    """
    if text == "infinity":
        return INFINITY
    total = Fraction(0)
    pos = 0
    while pos < len(text):
        m = _TIME_PART.match(text, pos)
        if m is None:
            raise ValueError("expected a time span such as 30s, 1min 30s, 2h or infinity")
        number, unit = m.groups()
        total += Fraction(number) * (_TIME_UNITS[unit] if unit else default_unit)
        pos = m.end()
    if pos == 0:
        raise ValueError("expected a time span such as 30s, 1min 30s, 2h or infinity")
    usec = int(total)
    if usec >= INFINITY:
        raise ValueError("time span is too long (use infinity)")
    return usec


# --- other parsers -----------------------------------------------------------

_TRUE = frozenset({"1", "yes", "y", "true", "t", "on"})
_FALSE = frozenset({"0", "no", "n", "false", "f", "off"})


def _parse_bool(text: str) -> bool:
    word = text.lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError("expected a boolean (yes/no, true/false, on/off, 1/0)")


_RT_SIGNAL = re.compile(r"RTM(IN|AX)(?:([+-])([0-9]+))?")


def _parse_signal(text: str) -> int:
    """A signal by number (``15``) or name (``SIGTERM``, ``TERM``, ``RTMIN+2``)."""
    if _UINT.fullmatch(text):
        n = int(text)
        if 1 <= n < signal.NSIG:
            return n
        raise ValueError(f"signal number must be between 1 and {signal.NSIG - 1}")
    name = text.upper().removeprefix("SIG")
    rt = _RT_SIGNAL.fullmatch(name)
    if rt is not None:
        which, sign, offset = rt.groups()
        base = int(signal.SIGRTMIN if which == "IN" else signal.SIGRTMAX)
        if sign is None:
            return base
        if (which, sign) == ("IN", "+"):
            n = base + int(offset)
        elif (which, sign) == ("AX", "-"):
            n = base - int(offset)
        else:
            raise ValueError("real-time signals are RTMIN+n or RTMAX-n")
        if not int(signal.SIGRTMIN) <= n <= int(signal.SIGRTMAX):
            raise ValueError("real-time signal out of range")
        return n
    try:
        return int(signal.Signals["SIG" + name])
    except KeyError:
        raise ValueError("unknown signal") from None


def _one_of(*choices: str) -> Callable[[str], str]:
    allowed = frozenset(choices)

    def parse(text: str) -> str:
        if text not in allowed:
            raise ValueError("expected one of " + ", ".join(choices))
        return text

    return parse


def _nonempty(text: str) -> str:
    if not text:
        raise ValueError("must not be empty")
    return text


def _check_normalized_path(path: str) -> str:
    # systemd refuses paths that are relative or not normalized ("//", ".", "..").
    if not path.startswith("/"):
        raise ValueError("must be an absolute path")
    if "//" in path or any(part in (".", "..") for part in path.split("/")):
        raise ValueError("path must be normalized (no //, . or .. components)")
    return path


def _working_directory(text: str) -> str:
    # systemd.exec(5): an absolute path or "~", optionally after "-" (a missing
    # directory is then not an error).
    path = text.removeprefix("-")
    if path != "~":
        _check_normalized_path(path)
    return text


_UNIT_CHARS = re.compile(r"[A-Za-z0-9:_.\\-]+")


def _slice_name(text: str) -> str:
    if not text.endswith(".slice") or text == ".slice":
        raise ValueError("must be a slice unit name ending in .slice")
    if len(text) > 255 or not _UNIT_CHARS.fullmatch(text):
        raise ValueError("not a valid unit name")
    return text


def _user_or_group(text: str) -> str:
    # A name or a numeric id; roughly systemd's relaxed valid_user_group_name().
    if not text or text in (".", "..") or text.startswith("-"):
        raise ValueError("not a valid user or group name")
    if any(c.isspace() or not c.isprintable() or c in ":/" for c in text):
        raise ValueError("not a valid user or group name")
    return text


def _cpu_weight(text: str) -> int:
    if text == "idle":
        return 0  # CGROUP_WEIGHT_IDLE (systemd >= 251)
    return _weight(text)


def _weight(text: str) -> int:
    n = _parse_uint(text)
    if not 1 <= n <= 10000:
        raise ValueError("must be between 1 and 10000")
    return n


# --- converters --------------------------------------------------------------


def _as(signature: str, parse: Callable[[str], object], dbus_name: str | None = None) -> Converter:
    """A converter for a setting that maps to one property of one type."""

    def convert(name: str, value: str) -> list[Property]:
        return [(dbus_name or name, Variant(signature, parse(value)))]

    return convert


def _timespan(dbus_name: str | None = None, default_unit: int = USEC_PER_SEC) -> Converter:
    return _as("t", lambda text: parse_timespan(text, default_unit), dbus_name)


def _allowed_ids(name: str, value: str) -> list[Property]:
    """``AllowedCPUs``/``AllowedMemoryNodes``: an idset (``0,57-99``) as systemd's bitmap."""
    try:
        ids = idset.decode(value)
    except SdexecError as exc:
        raise ValueError(exc.message) from None
    bitmap = bytearray((max(ids) // 8 + 1) if ids else 0)
    for i in ids:
        bitmap[i // 8] |= 1 << (i % 8)
    return [(name, Variant("ay", bytes(bitmap)))]


def _device_allow(name: str, value: str) -> list[Property]:
    """``DeviceAllow``: comma-separated ``DEVICE PERMISSIONS`` entries, as flux-core writes them."""
    entries: list[list[str]] = []
    for item in value.split(","):
        device, _, perms = item.strip().partition(" ")
        if not device or not perms.strip():
            if item.strip():
                raise ValueError(f"expected DEVICE PERMISSIONS, not {_show(item.strip())}")
            continue
        entries.append([device, perms.strip()])
    if not entries:
        raise ValueError("expected one or more DEVICE PERMISSIONS entries")
    return [(name, Variant("a(ss)", entries))]


def _timeout(name: str, value: str) -> list[Property]:
    usec = parse_timespan(value)
    return [("TimeoutStartUSec", Variant("t", usec)), ("TimeoutStopUSec", Variant("t", usec))]


def _cgroup_limit(name: str, value: str) -> list[Property]:
    """MemoryMax and friends, TasksMax: a number, ``infinity``, or ``N%`` -> ``<Name>Scale``."""
    if value == "infinity":
        return [(name, Variant("t", INFINITY))]
    permyriad = _parse_permyriad(value)
    if permyriad is not None:
        return [(name + "Scale", Variant("u", _scale_from_permyriad(permyriad)))]
    if name == "TasksMax":
        return [(name, Variant("t", _parse_uint(value)))]
    return [(name, Variant("t", _parse_size(value)))]


def _cpu_quota(name: str, value: str) -> list[Property]:
    permyriad = _parse_permyriad(value, maximum=None)
    if permyriad is None:
        raise ValueError("expected a percentage of one CPU such as 150%")
    if permyriad == 0:
        raise ValueError("must be above 0%")
    usec = permyriad * USEC_PER_SEC // 10000
    if usec >= INFINITY:
        raise ValueError("quota is too large")
    return [("CPUQuotaPerSecUSec", Variant("t", usec))]


_OUTPUT_KINDS = ("inherit", "null", "tty", "journal", "kmsg", "journal+console", "kmsg+console")
_OUTPUT_FILE_SUFFIX = {"file": "File", "append": "FileToAppend", "truncate": "FileToTruncate"}


def _std_output(name: str, value: str) -> list[Property]:
    """StandardOutput/StandardError: a kind, or ``file:``/``append:``/``truncate:`` PATH."""
    kind, sep, path = value.partition(":")
    if sep and kind in _OUTPUT_FILE_SUFFIX:
        _check_normalized_path(path)
        return [(name + _OUTPUT_FILE_SUFFIX[kind], Variant("s", path))]
    if value in _OUTPUT_KINDS:
        return [(name, Variant("s", value))]
    raise ValueError(
        "expected one of " + ", ".join(_OUTPUT_KINDS) + ", file:PATH, append:PATH or truncate:PATH"
    )


# Resource limits (setrlimit(2), systemd.exec(5) "Process Properties").


def _rlimit_seconds(text: str) -> int:
    usec = parse_timespan(text)
    return -(-usec // USEC_PER_SEC)  # systemd rounds up to whole seconds


def _rlimit_usec(text: str) -> int:
    return parse_timespan(text, default_unit=1)


def _rlimit_nice(text: str) -> int:
    # "+5"/"-5" is a nice level (ceiling 20 - nice); a bare number is the raw limit.
    if text[:1] in ("+", "-"):
        return 20 - _int_in(-20, 19)(text)
    return _parse_uint(text, maximum=40)


_RLIMITS: dict[str, Callable[[str], int]] = {
    "AS": _parse_size,
    "CORE": _parse_size,
    "CPU": _rlimit_seconds,
    "DATA": _parse_size,
    "FSIZE": _parse_size,
    "LOCKS": _parse_uint,
    "MEMLOCK": _parse_size,
    "MSGQUEUE": _parse_size,
    "NICE": _rlimit_nice,
    "NOFILE": _parse_uint,
    "NPROC": _parse_uint,
    "RSS": _parse_size,
    "RTPRIO": _parse_uint,
    "RTTIME": _rlimit_usec,
    "SIGPENDING": _parse_uint,
    "STACK": _parse_size,
}


def _rlimit(parse_one: Callable[[str], int]) -> Converter:
    """``LimitX=V`` (soft and hard) or ``LimitX=SOFT:HARD``; ``infinity`` anywhere."""

    def parse(text: str) -> int:
        if text == "infinity":
            return INFINITY
        n = parse_one(text)
        if n >= INFINITY:
            raise ValueError("limit is too large (use infinity)")
        return n

    def convert(name: str, value: str) -> list[Property]:
        soft_text, sep, hard_text = value.partition(":")
        soft = parse(soft_text)
        if not sep:
            # A lone LimitX sets both soft and hard limits of a new transient unit.
            return [(name, Variant("t", soft))]
        hard = parse(hard_text)
        if soft > hard:
            raise ValueError("the soft limit exceeds the hard limit")
        return [(name, Variant("t", hard)), (name + "Soft", Variant("t", soft))]

    return convert


_MEMORY_LIMITS = ("MemoryMax", "MemoryHigh", "MemoryMin", "MemoryLow", "MemorySwapMax")
_TIMESPANS = ("RuntimeMax", "TimeoutStop", "TimeoutStart", "RuntimeRandomizedExtra")

_CONVERTERS: dict[str, Converter] = {
    "Description": _as("s", str),
    **dict.fromkeys(_MEMORY_LIMITS, _cgroup_limit),
    "TasksMax": _cgroup_limit,
    "CPUQuota": _cpu_quota,
    "CPUQuotaPerSecUSec": _timespan(),
    "CPUWeight": _as("t", _cpu_weight),
    "IOWeight": _as("t", _weight),
    **{f"{n}Sec": _timespan(f"{n}USec") for n in _TIMESPANS},
    # The D-Bus names count microseconds, as flux-core's sdexec reads them.
    **{f"{n}USec": _timespan(default_unit=1) for n in _TIMESPANS},
    "TimeoutSec": _timeout,
    "KillMode": _as("s", _one_of("control-group", "mixed", "process", "none")),
    "KillSignal": _as("i", _parse_signal),
    "FinalKillSignal": _as("i", _parse_signal),
    "SendSIGKILL": _as("b", _parse_bool),
    "SendSIGHUP": _as("b", _parse_bool),
    "Delegate": _as("b", _parse_bool),
    "OOMScoreAdjust": _as("i", _int_in(-1000, 1000)),
    "Nice": _as("i", _int_in(-20, 19)),
    "Slice": _as("s", _slice_name),
    "User": _as("s", _user_or_group),
    "Group": _as("s", _user_or_group),
    "WorkingDirectory": _as("s", _working_directory),
    "SyslogIdentifier": _as("s", _nonempty),
    "StandardOutput": _std_output,
    "StandardError": _std_output,
    **{f"Limit{r}": _rlimit(parse) for r, parse in _RLIMITS.items()},
    "AllowedCPUs": _allowed_ids,
    "AllowedMemoryNodes": _allowed_ids,
    "DeviceAllow": _device_allow,
}

#: The setting names :func:`convert_property` understands.
SUPPORTED_PROPERTIES = frozenset(_CONVERTERS)

#: Settings sdexec decides itself, because a client's value would break the
#: mapping of unit states to RFC 42 responses: refused with the reason.
MANAGED_PROPERTIES: dict[str, str] = {
    "RemainAfterExit": (
        "sdexec sets it itself (a --waitable background process keeps its unit, "
        "and its status, until it is waited for); on a foreground process it "
        "would keep the output open and the exec would never end"
    ),
}


def convert_properties(name: str, value: str) -> list[Property]:
    """Convert one ``Name=Value`` unit setting to the D-Bus properties it stands for.

    Most settings give one property; ``LimitX=SOFT:HARD`` gives ``LimitX`` and
    ``LimitXSoft``, and ``TimeoutSec`` gives the start and stop timeouts.  A
    value that does not parse is ``SdexecError(EINVAL)`` naming the property
    and the value ("error setting property").

    A name this module does not know goes to systemd as a string, as
    flux-core's sdexec sends it: systemd parses string-typed settings itself
    (``Type``, ``DevicePolicy``, ``OOMPolicy``, ...) and refuses an unknown
    name or a bad value before it creates the unit ("Cannot set property xxx,
    or unknown property.", "Invalid Type setting: zzz").
    """
    if name in MANAGED_PROPERTIES:
        raise SdexecError(
            errno.EINVAL, f"unit property {name}= is refused: {MANAGED_PROPERTIES[name]}"
        )
    problem = _text_problem(value) or _name_problem(name)
    converter = _CONVERTERS.get(name)
    if problem is None and converter is None:
        return [(name, Variant("s", value))]
    if problem is None and converter is not None:
        try:
            return converter(name, value)
        except ValueError as exc:
            problem = str(exc)
    raise SdexecError(errno.EINVAL, f"error setting property {name}={_show(value)}: {problem}")


_PROPERTY_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]*")


#: Settings sdexec makes from the request itself (the command, its
#: environment and stdio, the unit's lifetime): not to be replaced by a
#: property, or the unit would no longer be the one the request describes.
RESERVED_PROPERTIES = frozenset(
    {
        "ExecStart",
        "ExecStartEx",
        "Environment",
        "UnsetEnvironment",
        "PassEnvironment",
        "EnvironmentFile",
        "StandardInput",
        "StandardInputFileDescriptor",
        "StandardOutputFileDescriptor",
        "StandardErrorFileDescriptor",
        "CollectMode",
    }
)


def _name_problem(name: str) -> str | None:
    if _PROPERTY_NAME.fullmatch(name) is None:
        return "a property name is letters and digits"
    if name in RESERVED_PROPERTIES:
        return "sdexec sets it from the request itself"
    return None


def convert_property(name: str, value: str) -> Property:
    """Convert one unit setting that maps to a single D-Bus property.

    The few settings that expand to two properties (``LimitX=SOFT:HARD``,
    ``TimeoutSec``) raise EINVAL here; use :func:`convert_properties` for them.
    """
    props = convert_properties(name, value)
    if len(props) != 1:
        raise SdexecError(
            errno.EINVAL,
            f"unit property {name}={_show(value)} sets {len(props)} D-Bus properties",
        )
    return props[0]


def convert_assignment(assignment: str) -> list[Property]:
    """Convert a ``Name=Value`` string, as given to ``sdexec -p``."""
    name, sep, value = assignment.partition("=")
    if not sep or not name:
        raise SdexecError(
            errno.EINVAL, f"unit property {_show(assignment)} is not of the form Name=Value"
        )
    return convert_properties(name, value)


def opts_properties(opts: Mapping[str, object]) -> list[Property]:
    """The unit properties carried by an RFC 42 ``opts`` object (``SDEXEC_PROP_<Name>`` keys).

    Other keys are ignored.  A value that is not a string is EINVAL.
    """
    props: list[Property] = []
    for key, value in opts.items():
        if not key.startswith(OPTS_PREFIX):
            continue
        name = key[len(OPTS_PREFIX) :]
        if not isinstance(value, str):
            raise SdexecError(errno.EINVAL, f"option {key} must be a string")
        props.extend(convert_properties(name, value))
    return props


# --- the command -------------------------------------------------------------


def exec_start_ex(argv: list[str], path: str | None = None) -> Property:
    """``ExecStartEx`` running ``argv`` exactly as given.

    ``path`` is the executable (default ``argv[0]``); ``argv[0]`` stays the
    name the program sees, so a resolved ``/usr/bin/env`` can still run as
    ``env``.  The ``no-env-expand`` flag stops systemd from expanding
    ``$VAR``, ``${VAR}`` and ``$$`` in the arguments.  systemd looks a bare
    name up in its own fixed PATH, not the unit's: resolve it first.
    """
    if not argv or not argv[0]:
        raise SdexecError(errno.EINVAL, "the command is empty")
    exe = argv[0] if path is None else path
    if not exe:
        raise SdexecError(errno.EINVAL, "the executable path is empty")
    for arg in (exe, *argv):
        problem = _text_problem(arg)
        if problem is not None:
            raise SdexecError(errno.EINVAL, f"command argument {_show(arg)} {problem}")
    return ("ExecStartEx", Variant("a(sasas)", [[exe, list(argv), ["no-env-expand"]]]))


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: Valid names, one per line (one name at least).
_ENV_NAMES = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\n[A-Za-z_][A-Za-z0-9_]*)*")


def env_name_is_valid(name: str) -> bool:
    """Whether systemd accepts ``name`` in a unit's Environment (bash's rules)."""
    return _ENV_NAME.fullmatch(name) is not None


def rejected_env_names(env: Mapping[str, str]) -> list[str]:
    """The names :func:`environment` leaves out because systemd would refuse them."""
    return [name for name in env if not env_name_is_valid(name)]


def environment(env: Mapping[str, str]) -> Property:
    """``Environment`` as ``KEY=VALUE`` strings.

    A name that is empty or holds ``=`` or NUL, or a value with NUL, cannot
    be an environment entry at all: EINVAL.  Names that are well-formed for
    the kernel but not for systemd, which accepts only ``[A-Za-z_][A-Za-z0-9_]*``
    and refuses the whole unit otherwise, are left out: exported bash
    functions (``BASH_FUNC_module%%``, set by environment modules on many HPC
    systems) would else make every command fail.  :func:`rejected_env_names`
    lists them, for a log line.
    """
    # Most environments are all valid: checked at once, on the joined names and values.
    names = "\n".join(env)
    if (
        _ENV_NAMES.fullmatch(names) is not None
        and names.count("\n") == len(env) - 1  # no name holds the separator itself
        and _text_problem("".join(env.values())) is None
    ):
        return ("Environment", Variant("as", [f"{n}={v}" for n, v in env.items()]))
    entries: list[str] = []
    for name, value in env.items():
        if not name or "=" in name:
            raise SdexecError(errno.EINVAL, f"invalid environment variable name {_show(name)}")
        for text in (name, value):
            problem = _text_problem(text)
            if problem is not None:
                raise SdexecError(errno.EINVAL, f"environment variable {_show(name)} {problem}")
        if env_name_is_valid(name):
            entries.append(f"{name}={value}")
    return ("Environment", Variant("as", entries))


def default_description(argv: list[str]) -> str:
    """The command line, shell-quoted, cut to DESCRIPTION_MAX characters."""
    text = shlex.join(argv)
    if len(text) > DESCRIPTION_MAX:
        text = text[: DESCRIPTION_MAX - 3] + "..."
    return text


# Names whose later assignment must also cancel an earlier companion property:
# a LimitX=V after LimitX=SOFT:HARD would otherwise keep the old soft limit.
_SUPERSEDES: dict[str, str] = {f"Limit{r}": f"Limit{r}Soft" for r in _RLIMITS}


@dataclass
class UnitSpec:
    """Everything StartTransientUnit needs to run one command.

    ``argv[0]`` is the executable; ``argv0``, when set, is the name the
    program sees as its ``argv[0]`` instead (the command as typed, before PATH
    resolution).  ``stdin_fd``/``stdout_fd``/``stderr_fd`` are indices into
    the ``unix_fds`` list sent with the D-Bus message, not fd numbers.
    ``extra`` holds further properties (for example from
    :func:`opts_properties`); they come after the built-in ones and override
    them.
    """

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    description: str | None = None
    stdin_fd: int | None = None
    stdout_fd: int | None = None
    stderr_fd: int | None = None
    extra: list[Property] = field(default_factory=list)
    argv0: str | None = None

    def base_properties(self) -> list[Property]:
        """The properties that follow from the command itself, before ``extra``."""
        props: list[Property] = [
            ("Type", Variant("s", "exec")),
            self._exec_start(),
            environment(self.env),
        ]
        if self.cwd is not None:
            try:
                _check_normalized_path(self.cwd)
            except ValueError as exc:
                raise SdexecError(
                    errno.EINVAL, f"invalid working directory {_show(self.cwd)}: {exc}"
                ) from None
            props.append(("WorkingDirectory", Variant("s", self.cwd)))
        description = self.description
        if description is None:
            shown = self.argv if self.argv0 is None else [self.argv0, *self.argv[1:]]
            description = default_description(shown)
        elif _text_problem(description) is not None:
            raise SdexecError(errno.EINVAL, f"invalid description {_show(description)}")
        props.append(("Description", Variant("s", description)))
        for stream, index in (
            ("StandardInput", self.stdin_fd),
            ("StandardOutput", self.stdout_fd),
            ("StandardError", self.stderr_fd),
        ):
            if index is not None:
                if index < 0:
                    raise SdexecError(errno.EINVAL, f"negative fd index for {stream}")
                props.append((f"{stream}FileDescriptor", Variant("h", index)))
        # Failed units are otherwise kept (and their name taken) until reset.
        props.append(("CollectMode", Variant("s", "inactive-or-failed")))
        return props

    def _exec_start(self) -> Property:
        if self.argv0 is None or not self.argv:
            return exec_start_ex(self.argv)
        return exec_start_ex([self.argv0, *self.argv[1:]], path=self.argv[0])

    def properties(self) -> list[list[object]]:
        """The full ``a(sv)`` list for StartTransientUnit, one entry per name."""
        return [
            [name, variant]
            for name, variant in merge_properties(self.base_properties(), self.extra)
        ]


def merge_properties(*groups: Iterable[Property]) -> list[Property]:
    """Concatenate property lists so that the last assignment of each name wins.

    A property assigned again moves to its new position: systemd applies the
    properties in order, and settings with several spellings (``MemoryMax``
    and ``MemoryMaxScale``, ``StandardOutput`` and ``StandardOutputFile``)
    must keep the order in which they were given.
    """
    merged: dict[str, Variant] = {}
    for group in groups:
        for name, variant in group:
            merged.pop(name, None)
            companion = _SUPERSEDES.get(name)
            if companion is not None:
                merged.pop(companion, None)
            merged[name] = variant
    return list(merged.items())


def dedupe(props: Iterable[Sequence[object]]) -> list[list[object]]:
    """An ``a(sv)`` list with each name once, the last assignment winning.

    The list form of :func:`merge_properties`, for callers that append
    ``[name, variant]`` entries to :meth:`UnitSpec.properties` themselves.
    """
    pairs: list[Property] = []
    for entry in props:
        name, variant = entry
        if not isinstance(name, str) or not isinstance(variant, Variant):
            raise TypeError(f"not a (name, Variant) property: {entry!r}")
        pairs.append((name, variant))
    return [[name, variant] for name, variant in merge_properties(pairs)]


# --- object paths ------------------------------------------------------------


def bus_label_escape(label: str) -> str:
    """Escape a string into one D-Bus object path element, as sd_bus_path_encode() does.

    Every UTF-8 byte that is not an ASCII letter or digit, and a digit in the
    first position, becomes ``_`` and two lowercase hex digits; the empty
    string becomes ``_``.
    """
    data = label.encode("utf-8")
    if not data:
        return "_"
    # One byte per character (latin-1), each mapped by the table (str.translate, in C).
    text = data.decode("latin-1")
    if data[:1].isdigit():
        return f"_{data[0]:02x}" + text[1:].translate(_PATH_ESCAPES)
    return text.translate(_PATH_ESCAPES)


_PATH_ESCAPES = {b: f"_{b:02x}" for b in range(256) if not (b < 0x80 and chr(b).isalnum())}


_UNIT_NAME_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789:_.-")
_UNIT_NAME_TEXT = re.compile(r"[A-Za-z0-9:_.\-]*")


def unit_name_fragment(text: str, limit: int = 64) -> str:
    """``text`` as a piece of a unit name, escaped as systemd-escape(1) does, at most ``limit``.

    Bytes that may not appear in a unit name become ``\\xNN``; the result is
    cut (never inside a character) so that a long label cannot push the whole
    name past systemd's 255 characters.
    """
    if len(text) <= limit and _UNIT_NAME_TEXT.fullmatch(text) is not None:
        return text  # nothing to escape (the usual label)
    out: list[str] = []
    size = 0
    for ch in text:
        piece = "".join(
            chr(b) if b in _UNIT_NAME_CHARS else f"\\x{b:02x}" for b in ch.encode("utf-8")
        )
        if size + len(piece) > limit:
            break
        out.append(piece)
        size += len(piece)
    return "".join(out)


def unit_object_path(unit: str) -> str:
    """The D-Bus object path of a unit: ``sdexec-1.service`` -> ``.../sdexec_2d1_2eservice``."""
    return UNIT_PATH_PREFIX + bus_label_escape(unit)
