"""The systemd bus's per-unit match rules: what a refused rule does (sdexec.systemd.bus).

The rules themselves are exercised against a real manager in
tests/integration/test_bus_matches.py; a bus daemon that refuses a rule
under our limit cannot be set up there, so its reply is handed to the
connection's message handler here.
"""

from __future__ import annotations

import errno

from dbus_fast import Message, MessageType

from sdexec.systemd.bus import UNITS_RULE, SystemdBus, unit_rule


def _refusal(serial: int) -> Message:
    return Message(
        message_type=MessageType.ERROR,
        reply_serial=serial,
        error_name="org.freedesktop.DBus.Error.LimitsExceeded",
        signature="s",
        body=["Connection has too many match rules"],
    )


def test_a_refused_rule_gives_the_connection_up_and_uses_one_rule_for_all_after() -> None:
    bus = SystemdBus("unix:path=/nonexistent")
    bus._match_calls[7] = unit_rule("/org/freedesktop/systemd1/unit/a_2eservice")
    bus._on_message(_refusal(7))
    assert bus.down is not None
    assert bus.down.errno == errno.EAGAIN
    assert "too many match rules" in bus.down.message
    assert bus.unit_matches == 0  # the next connection starts with UNITS_RULE
    assert not bus._match_calls


def test_a_reply_to_another_call_is_not_taken_for_a_rule() -> None:
    bus = SystemdBus("unix:path=/nonexistent")
    bus._match_calls[7] = UNITS_RULE
    bus._on_message(_refusal(8))
    assert bus.down is None
    assert 7 in bus._match_calls


def test_a_unit_rule_names_the_unit_object_path_only() -> None:
    rule = unit_rule("/org/freedesktop/systemd1/unit/sdexec_2d0_2d1_2eservice")
    assert "path='/org/freedesktop/systemd1/unit/sdexec_2d0_2d1_2eservice'" in rule
    assert "path_namespace" not in rule
    assert "member='PropertiesChanged'" in rule
