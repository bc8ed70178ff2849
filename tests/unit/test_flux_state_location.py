"""Where the Flux module keeps a rank's state by default (sdexec.flux.serve.state_location)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdexec.flux.serve import state_location


def attrs(**values: str) -> dict[str, str]:
    return {k.replace("_", "-"): v for k, v in values.items()}


def test_a_statedir_the_broker_keeps_is_used_and_outlives_it() -> None:
    got = attrs(statedir="/var/lib/flux", statedir_cleanup="0", rundir="/run/flux")
    assert state_location(got.get, 0, {}) == (Path("/var/lib/flux/sdexec.0"), False)


def test_a_follower_of_flux_service_uses_systemds_state_directory() -> None:
    # flux-core drops statedir on ranks other than 0; flux.service has StateDirectory=flux.
    got = attrs(rundir="/run/flux")
    environ = {"STATE_DIRECTORY": "/var/lib/flux"}
    assert state_location(got.get, 2, environ) == (Path("/var/lib/flux/sdexec.2"), False)


def test_only_the_first_of_several_state_directories_counts() -> None:
    environ = {"STATE_DIRECTORY": "/var/lib/flux:/var/lib/other"}
    assert state_location(attrs(rundir="/r").get, 1, environ)[0] == Path("/var/lib/flux/sdexec.1")


def test_a_statedir_removed_at_broker_exit_is_ephemeral() -> None:
    got = attrs(statedir="/var/tmp/flux-x", statedir_cleanup="1", rundir="/tmp/flux-y")
    assert state_location(got.get, 0, {}) == (Path("/var/tmp/flux-x/sdexec.0"), True)


def test_a_follower_without_systemd_keeps_its_state_in_the_rundir_ephemerally() -> None:
    assert state_location(attrs(rundir="/tmp/r").get, 3, {}) == (Path("/tmp/r/sdexec.3"), True)


def test_a_relative_state_directory_is_not_trusted() -> None:
    got = attrs(rundir="/tmp/r")
    assert state_location(got.get, 1, {"STATE_DIRECTORY": "flux"}) == (
        Path("/tmp/r/sdexec.1"),
        True,
    )


def test_no_rundir_at_all_asks_for_state_dir() -> None:
    with pytest.raises(ValueError, match="state-dir="):
        state_location(attrs().get, 1, {})
