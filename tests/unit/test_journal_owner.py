"""Which journal a user manager's records are read from (sdexec.systemd.journal)."""

from __future__ import annotations

from sdexec.systemd.journal import Journal, journald_splits_off


def test_a_regular_user_reads_their_own_user_journal() -> None:
    journal = Journal.for_mode("user", uid=1001)
    assert journal.argv("-t", "x") == ["journalctl", "--no-pager", "-q", "--user", "-t", "x"]


def test_a_system_user_reads_the_system_journal_limited_to_its_own_records() -> None:
    # The flux user of a system instance: journald never gives it a user journal.
    journal = Journal.for_mode("user", uid=999)
    assert journal.argv("-t", "x") == [
        "journalctl",
        "--no-pager",
        "-q",
        "_SYSTEMD_OWNER_UID=999",
        "-t",
        "x",
    ]
    assert journal.unit_field == "USER_UNIT"


def test_the_owner_match_holds_in_every_alternative() -> None:
    journal = Journal.for_mode("user", uid=998)
    argv = journal.argv("A=1", "B=2", "+", "C=3")
    assert argv[3:] == [
        "_SYSTEMD_OWNER_UID=998",
        "A=1",
        "B=2",
        "+",
        "_SYSTEMD_OWNER_UID=998",
        "C=3",
    ]


def test_journalds_split_follows_its_own_uid_ranges() -> None:
    assert [journald_splits_off(u) for u in (0, 999, 1000, 61184, 65519, 65534, 65535)] == [
        False,
        False,
        True,
        False,
        False,
        False,
        True,
    ]


def test_system_and_private_modes_are_unchanged() -> None:
    assert Journal.for_mode("system", uid=999).argv() == ["journalctl", "--no-pager", "-q"]
    private = Journal.for_mode("private", "/j", uid=999)
    assert private.argv() == ["journalctl", "--no-pager", "-q", "--directory", "/j"]


def test_the_in_process_reader_gets_the_same_owner_limit_on_every_term() -> None:
    journal = Journal.for_mode("user", uid=999)
    scoped = journal.scoped([["A=1", "B=2"], ["C=3"]])
    assert scoped == [["_SYSTEMD_OWNER_UID=999", "A=1", "B=2"], ["_SYSTEMD_OWNER_UID=999", "C=3"]]
    assert Journal.for_mode("user", uid=5000).scoped([["A=1"]]) == [["A=1"]]
