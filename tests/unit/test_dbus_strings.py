"""Non-ASCII strings to systemd with any dbus-fast (sdexec.systemd.dbusstrings)."""

from __future__ import annotations

import io

from dbus_fast import Message, Variant
from dbus_fast._private.unmarshaller import Unmarshaller

from sdexec.systemd.dbusstrings import Utf8Sized, fixed, marshaller_counts_characters

BODY = [
    "sdexec-0-x.service",
    [["ExecStart", Variant("a(sasb)", [["/bin/echo", ["/bin/echo", "é ƒ"], False]])]],
    ["FLUX_JOB_ID=ƒH9fPFYs", "A=1"],
]


def test_a_non_ascii_string_is_sized_in_utf8_bytes() -> None:
    s = Utf8Sized("ƒ1")
    assert (s, len(s), str.__len__(s)) == ("ƒ1", 3, 2)


def test_every_non_ascii_string_of_a_body_is_sized_and_ascii_ones_are_left() -> None:
    body = fixed(BODY)
    assert body == BODY
    assert type(body[0]) is str
    assert isinstance(body[2][0], Utf8Sized) and type(body[2][1]) is str
    argv = body[1][0][1].value[0][1]
    assert isinstance(argv[1], Utf8Sized)


def test_a_sized_body_round_trips_through_the_installed_dbus_fast() -> None:
    msg = Message(
        destination="org.freedesktop.systemd1",
        path="/org/freedesktop/systemd1",
        interface="org.freedesktop.systemd1.Manager",
        member="StartTransientUnit",
        signature="sa(sv)as",
        body=fixed(BODY),
    )
    reader = Unmarshaller(io.BytesIO(bytes(msg._marshall(False))))
    reader.unmarshall()
    assert reader.message is not None
    got = reader.message.body
    assert got[0] == BODY[0] and got[2] == BODY[2]
    # (structs come back as tuples from newer versions)
    assert [list(x) for x in got[1][0][1].value] == BODY[1][0][1].value


def test_the_probe_answers_for_the_installed_marshaller() -> None:
    # Debian 12's 1.84 counts characters; the venv's newer dbus-fast counts bytes.
    assert marshaller_counts_characters() in (True, False)
