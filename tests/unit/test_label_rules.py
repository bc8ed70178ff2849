"""Labels: what may name a process (sdexec.proto.labels), at every door."""

from __future__ import annotations

import errno

import pytest

from sdexec.base.errors import SdexecError
from sdexec.cli import parser as cli_parser
from sdexec.cli import quick
from sdexec.client.exec import build_command
from sdexec.proto import rfc42
from sdexec.proto.labels import LABEL_MAX, label_problem

GOOD = ["job1", "prolog-1234", "a", "x" * LABEL_MAX, "ü" * (LABEL_MAX // 2), "-x", "1a", "a.b:c@d"]
BAD = [
    "",
    "x" * (LABEL_MAX + 1),
    "x" * 256,
    "ü" * (LABEL_MAX // 2 + 1),  # 130 bytes
    "two words",
    "new\nline",
    "tab\t",
    "bell\a",
    "54321",
    "0",
]


@pytest.mark.parametrize("label", GOOD)
def test_good_labels_pass(label: str) -> None:
    assert label_problem(label) is None


@pytest.mark.parametrize("label", BAD)
def test_bad_labels_have_a_reason(label: str) -> None:
    assert label_problem(label)


def _exec(label: str) -> dict[str, object]:
    return {"cmd": {"cmdline": ["true"], "env": {}, "label": label}, "flags": 0}


@pytest.mark.parametrize("label", BAD)
def test_server_refuses_bad_labels_with_einval(label: str) -> None:
    with pytest.raises(SdexecError) as info:
        rfc42.parse_exec(_exec(label))
    assert info.value.errno == errno.EINVAL
    assert "label" in info.value.message


def test_the_refusal_says_why() -> None:
    with pytest.raises(SdexecError) as info:
        rfc42.parse_exec(_exec("x" * 256))
    assert f"at most {LABEL_MAX} bytes long, not 256" in info.value.message
    with pytest.raises(SdexecError) as info:
        rfc42.parse_exec(_exec("54321"))
    assert "digits only" in info.value.message


@pytest.mark.parametrize("label", GOOD)
def test_server_takes_good_labels(label: str) -> None:
    assert rfc42.parse_exec(_exec(label)).cmd.label == label


def test_targets_are_checked_the_same_way() -> None:
    with pytest.raises(SdexecError) as info:
        rfc42.parse_target({"pid": -1, "label": "a\nb"}, "kill")
    assert info.value.errno == errno.EINVAL


@pytest.mark.parametrize("label", BAD)
def test_client_library_refuses_bad_labels(label: str) -> None:
    with pytest.raises(SdexecError) as info:
        build_command(["true"], env={}, label=label)
    assert info.value.errno == errno.EINVAL


@pytest.mark.parametrize("label", [b for b in BAD if b and not b.startswith("-")])
def test_cli_refuses_bad_labels_before_connecting(
    label: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert quick.parse_exec(["--bg", "--label", label, "true"]) is None
    with pytest.raises(SystemExit) as info:
        cli_parser.parse(["exec", "--bg", "--label", label, "true"])
    assert info.value.code == 2
    assert "label" in capsys.readouterr().err
