"""The [systemd] table the Flux module reads (sdexec.flux.config)."""

from __future__ import annotations

import pytest

from sdexec.flux.config import SystemdConfig, config_error


def test_default_is_no_debug() -> None:
    assert SystemdConfig.from_config({}) == SystemdConfig(sdexec_debug=False)


def test_sdexec_debug_is_read() -> None:
    assert SystemdConfig.from_config({"systemd": {"sdexec-debug": True}}).sdexec_debug


@pytest.mark.parametrize(
    ("conf", "text"),
    [
        ({"systemd": {"sdexec-debug": 42}}, "Expected true or false, got integer"),
        ({"systemd": {"sdexec-debug": "yes"}}, "Expected true or false, got string"),
        ({"systemd": []}, "Expected object, got array"),
        ([], "Expected object, got array"),
    ],
)
def test_bad_config_is_refused_with_janssons_words(conf: object, text: str) -> None:
    with pytest.raises(ValueError) as info:
        SystemdConfig.from_config(conf)
    assert str(info.value) == text
    assert config_error(info.value) == f"error reading [systemd] config table: {text}"
