"""Unit options: names and properties reach systemd; bad ones are refused clearly."""

from __future__ import annotations

import json
import subprocess
import time

from conftest import Server


def _unit_of(server: Server, label: str) -> str:
    r = server.sdexec("ps", "--json")
    procs = json.loads(r.stdout)["procs"]
    return next(p["unit"] for p in procs if p["label"] == label)


def test_sdexec_name_option_names_the_unit(server: Server) -> None:
    cli = server.popen(
        "exec",
        "--setopt",
        "SDEXEC_NAME=sdexec-named-test.service",
        "--",
        "sh",
        "-c",
        "echo ready; exec sleep 30",
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )
    try:
        assert cli.stdout is not None
        assert cli.stdout.readline() == b"ready\n"
        out = server.systemctl("list-units", "--plain", "--no-legend", "sdexec-named-test.service")
        assert "sdexec-named-test.service" in out.stdout
    finally:
        cli.terminate()
        cli.wait(10)


def test_properties_reach_the_unit(server: Server) -> None:
    r = server.sdexec(
        "exec",
        "--bg",
        "--label",
        "props",
        "-p",
        "Description=fubar",
        "-p",
        "MemoryMax=1G",
        "--",
        "sleep",
        "30",
    )
    assert r.returncode == 0, r.stderr
    try:
        unit = _unit_of(server, "props")
        show = server.systemctl("show", "-p", "Description", "-p", "MemoryMax", unit).stdout
        assert "Description=fubar" in show
        assert "MemoryMax=1073741824" in show
    finally:
        assert server.sdexec("kill", "-s", "9", "props").returncode == 0
    deadline = time.monotonic() + 5
    while "props" in server.sdexec("ps").stdout.decode() and time.monotonic() < deadline:
        time.sleep(0.05)


def test_bad_property_is_refused_with_a_clear_error(server: Server) -> None:
    r = server.sdexec("exec", "-p", "MemoryMax=lots", "--", "true")
    assert r.returncode != 0
    assert b"MemoryMax" in r.stderr


def test_unknown_property_is_refused(server: Server) -> None:
    r = server.sdexec("exec", "-p", "NoSuchThing=1", "--", "true")
    assert r.returncode != 0
    assert b"NoSuchThing" in r.stderr


def test_a_background_unit_shows_what_the_user_ran_and_carries_the_label(server: Server) -> None:
    r = server.sdexec("exec", "--bg", "--label", "shown", "--", "sh", "-c", "sleep 30 # $HOME")
    assert r.returncode == 0, r.stderr
    try:
        unit = _unit_of(server, "shown")
        assert unit.startswith("sdexec-0-shown-") and unit.endswith(".service")
        show = server.systemctl("show", "-p", "Description", "-p", "ExecStart", unit).stdout
        assert "Description=sh -c 'sleep 30 # $HOME'" in show
        assert "systemd-cat" not in show
        status = server.systemctl("status", unit).stdout
        assert f"{unit} - sh -c 'sleep 30 # $HOME'" in status
    finally:
        assert server.sdexec("kill", "-s", "9", "shown").returncode == 0
    deadline = time.monotonic() + 5
    while "shown" in server.sdexec("ps").stdout.decode() and time.monotonic() < deadline:
        time.sleep(0.05)


def test_an_odd_label_is_escaped_in_the_unit_name(server: Server) -> None:
    r = server.sdexec("exec", "--bg", "--waitable", "--label", "jöb@1/x", "--", "true")
    assert r.returncode == 0, r.stderr
    unit = _unit_of(server, "jöb@1/x")
    assert unit.startswith("sdexec-0-j\\xc3\\xb6b\\x401\\x2fx-")
    assert server.sdexec("wait", "jöb@1/x").returncode == 0
