"""The instance configuration the sdexec module reads: ``[systemd]``.

flux-core's C module reads one key, ``[systemd] sdexec-debug`` (a boolean),
at load and on every ``config-reload``, and refuses a config where it is not
a boolean with jansson's wording (``flux config load`` prints it, and the
config module then reverts the modules it had already updated).  The same
check, with the same text, here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_JSON_TYPES = (
    (bool, "true or false"),
    (dict, "object"),
    (list, "array"),
    (str, "string"),
    (int, "integer"),
    (float, "real"),
)


def json_type(value: Any) -> str:
    """jansson's name for the type of a decoded JSON value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    for kind, name in _JSON_TYPES[1:]:
        if isinstance(value, kind):
            return name
    return type(value).__name__


@dataclass(frozen=True)
class SystemdConfig:
    """What the module takes from ``[systemd]``."""

    sdexec_debug: bool = False

    @classmethod
    def from_config(cls, conf: Any) -> SystemdConfig:
        """Read ``conf`` (the whole instance config); ValueError says what is wrong."""
        if not isinstance(conf, dict):
            raise ValueError(f"Expected object, got {json_type(conf)}")
        table = conf.get("systemd", {})
        if not isinstance(table, dict):
            raise ValueError(f"Expected object, got {json_type(table)}")
        debug = table.get("sdexec-debug", False)
        if not isinstance(debug, bool):
            raise ValueError(f"Expected true or false, got {json_type(debug)}")
        return cls(sdexec_debug=debug)


def config_error(exc: ValueError) -> str:
    """The error text of a refused config, as ``flux config load`` shows it."""
    return f"error reading [systemd] config table: {exc}"
