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
