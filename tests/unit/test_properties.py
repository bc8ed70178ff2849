"""StartTransientUnit property building (sdexec.systemd.properties)."""

from __future__ import annotations

import errno
import re

import pytest
from dbus_fast import Variant
from hypothesis import given, settings
from hypothesis import strategies as st

from sdexec.base.errors import SdexecError
from sdexec.proto import idset
from sdexec.systemd import properties as p
from sdexec.systemd.properties import (
    INFINITY,
    UINT32_MAX,
    UnitSpec,
    convert_assignment,
    convert_properties,
    convert_property,
    environment,
    exec_start_ex,
    opts_properties,
    unit_object_path,
)

SEC = 1_000_000
MIN = 60 * SEC


def einval(name: str, value: str) -> SdexecError:
    """Convert, expecting EINVAL; return the error."""
    with pytest.raises(SdexecError) as info:
        convert_properties(name, value)
    assert info.value.errno == errno.EINVAL
    return info.value


# --- Description and other strings -------------------------------------------


def test_description_is_a_string() -> None:
    assert convert_property("Description", "nightly epilog") == (
        "Description",
        Variant("s", "nightly epilog"),
    )


def test_syslog_identifier_is_a_string() -> None:
    assert convert_property("SyslogIdentifier", "prolog") == (
        "SyslogIdentifier",
        Variant("s", "prolog"),
    )


def test_syslog_identifier_must_not_be_empty() -> None:
    einval("SyslogIdentifier", "")


@pytest.mark.parametrize("name", ["User", "Group"])
@pytest.mark.parametrize("value", ["root", "flux", "1000", "svc_account.1"])
def test_user_and_group_accept_names_and_ids(name: str, value: str) -> None:
    assert convert_property(name, value) == (name, Variant("s", value))


@pytest.mark.parametrize("name", ["User", "Group"])
@pytest.mark.parametrize("value", ["", "a:b", "a/b", "a b", "-x", ".", "..", "a\tb"])
def test_user_and_group_reject_malformed_names(name: str, value: str) -> None:
    einval(name, value)


@pytest.mark.parametrize("value", ["/tmp", "/", "~", "-/var/tmp/job", "-~"])
def test_working_directory_accepts_absolute_paths_and_home(value: str) -> None:
    assert convert_property("WorkingDirectory", value) == ("WorkingDirectory", Variant("s", value))


@pytest.mark.parametrize("value", ["", "tmp", "./x", "/a/../b", "/a//b", "/a/./b", "-"])
def test_working_directory_rejects_relative_or_unnormalized_paths(value: str) -> None:
    einval("WorkingDirectory", value)


def test_string_value_with_nul_is_rejected() -> None:
    err = einval("Description", "a\0b")
    assert "NUL" in err.message


def test_string_value_with_lone_surrogate_is_rejected() -> None:
    einval("Description", "bad \udcff byte")


# --- memory limits -----------------------------------------------------------

MEMORY = ["MemoryMax", "MemoryHigh", "MemoryMin", "MemoryLow", "MemorySwapMax"]


@pytest.mark.parametrize("name", MEMORY)
def test_memory_limit_plain_bytes(name: str) -> None:
    assert convert_property(name, "1048576") == (name, Variant("t", 1048576))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0),
        ("512B", 512),
        ("1K", 1024),
        ("1KB", 1024),
        ("1KiB", 1024),
        ("2M", 2 << 20),
        ("2MiB", 2 << 20),
        ("4G", 4 << 30),
        ("4GB", 4 << 30),
        ("1T", 1 << 40),
        ("1P", 1 << 50),
        ("1.5G", 3 << 29),
        ("1 G", 1 << 30),
    ],
)
def test_memory_limit_sizes_are_base_1024(value: str, expected: int) -> None:
    assert convert_property("MemoryMax", value) == ("MemoryMax", Variant("t", expected))


@pytest.mark.parametrize("name", MEMORY)
def test_memory_limit_infinity_is_uint64_max(name: str) -> None:
    assert convert_property(name, "infinity") == (name, Variant("t", 2**64 - 1))


@pytest.mark.parametrize("name", MEMORY)
def test_memory_limit_percent_becomes_scale_property(name: str) -> None:
    assert convert_property(name, "50%") == (f"{name}Scale", Variant("u", 2**31))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0%", 0),
        ("25%", 2**30),
        ("100%", UINT32_MAX),
        # systemd scales to 2^32-1 == 100% and rounds to nearest:
        ("33%", (3300 * UINT32_MAX + 5000) // 10000),
        ("12.5%", 2**29),
        ("0.01%", (1 * UINT32_MAX + 5000) // 10000),
    ],
)
def test_memory_limit_percent_scale_values(value: str, expected: int) -> None:
    assert convert_property("MemoryMax", value) == ("MemoryMaxScale", Variant("u", expected))


@pytest.mark.parametrize(
    "value", ["", "-1", "1X", "1k", "G", "1.2.3G", "101%", "50.001%", "%", "lots", "1G512M"]
)
def test_memory_limit_rejects_bad_values(value: str) -> None:
    einval("MemoryMax", value)


def test_memory_limit_rejects_sizes_beyond_uint64() -> None:
    einval("MemoryMax", "16E")


def test_memory_limit_error_names_property_and_value() -> None:
    err = einval("MemoryMax", "lots")
    assert "MemoryMax" in err.message
    assert "'lots'" in err.message


# --- tasks, CPU, IO ----------------------------------------------------------


def test_tasks_max_plain_number() -> None:
    assert convert_property("TasksMax", "512") == ("TasksMax", Variant("t", 512))


def test_tasks_max_infinity() -> None:
    assert convert_property("TasksMax", "infinity") == ("TasksMax", Variant("t", INFINITY))


def test_tasks_max_percent_becomes_scale_property() -> None:
    assert convert_property("TasksMax", "50%") == ("TasksMaxScale", Variant("u", 2**31))


@pytest.mark.parametrize("value", ["1K", "", "-5", "x", "150%"])
def test_tasks_max_rejects_bad_values(value: str) -> None:
    einval("TasksMax", value)


@pytest.mark.parametrize(
    ("value", "usec"), [("150%", 1_500_000), ("20%", 200_000), ("1%", 10_000), ("12.5%", 125_000)]
)
def test_cpu_quota_percent_becomes_usec_per_second(value: str, usec: int) -> None:
    assert convert_property("CPUQuota", value) == ("CPUQuotaPerSecUSec", Variant("t", usec))


@pytest.mark.parametrize("value", ["0%", "150", "", "x%", "-5%"])
def test_cpu_quota_rejects_bad_values(value: str) -> None:
    einval("CPUQuota", value)


def test_cpu_quota_per_sec_usec_accepts_a_time_span_directly() -> None:
    assert convert_property("CPUQuotaPerSecUSec", "500ms") == (
        "CPUQuotaPerSecUSec",
        Variant("t", 500_000),
    )


@pytest.mark.parametrize("name", ["CPUWeight", "IOWeight"])
@pytest.mark.parametrize("value", [1, 100, 10000])
def test_weights_accept_1_to_10000(name: str, value: int) -> None:
    assert convert_property(name, str(value)) == (name, Variant("t", value))


@pytest.mark.parametrize("name", ["CPUWeight", "IOWeight"])
@pytest.mark.parametrize("value", ["0", "10001", "-1", "high", ""])
def test_weights_reject_out_of_range_values(name: str, value: str) -> None:
    einval(name, value)


def test_cpu_weight_idle_is_zero() -> None:
    assert convert_property("CPUWeight", "idle") == ("CPUWeight", Variant("t", 0))


# --- time spans --------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "dbus_name"),
    [
        ("RuntimeMaxSec", "RuntimeMaxUSec"),
        ("TimeoutStopSec", "TimeoutStopUSec"),
        ("TimeoutStartSec", "TimeoutStartUSec"),
        ("RuntimeRandomizedExtraSec", "RuntimeRandomizedExtraUSec"),
    ],
)
def test_sec_settings_travel_as_usec_properties(name: str, dbus_name: str) -> None:
    assert convert_property(name, "30") == (dbus_name, Variant("t", 30 * SEC))


@pytest.mark.parametrize(
    "name", ["RuntimeMaxUSec", "TimeoutStopUSec", "TimeoutStartUSec", "RuntimeRandomizedExtraUSec"]
)
def test_usec_names_are_accepted_directly(name: str) -> None:
    assert convert_property(name, "5s") == (name, Variant("t", 5 * SEC))


@pytest.mark.parametrize(
    ("value", "usec"),
    [
        ("0", 0),
        ("5", 5 * SEC),
        ("1.5", 1_500_000),
        ("10us", 10),
        ("10usec", 10),
        ("10µs", 10),
        ("500ms", 500_000),
        ("500msec", 500_000),
        ("2s", 2 * SEC),
        ("2sec", 2 * SEC),
        ("2 seconds", 2 * SEC),
        ("3m", 3 * MIN),
        ("3min", 3 * MIN),
        ("3 minutes", 3 * MIN),
        ("2h", 120 * MIN),
        ("2hr", 120 * MIN),
        ("1d", 1440 * MIN),
        ("1w", 7 * 1440 * MIN),
        ("1min 30s", 90 * SEC),
        ("1min30s", 90 * SEC),
        ("1h 2m 3s 4ms 5us", 3723 * SEC + 4005),
        (" 1min ", MIN),
        ("1M", 2_629_800 * SEC),
        ("1y", 31_557_600 * SEC),
        ("infinity", INFINITY),
    ],
)
def test_time_span_syntax(value: str, usec: int) -> None:
    assert convert_property("RuntimeMaxSec", value) == ("RuntimeMaxUSec", Variant("t", usec))


@pytest.mark.parametrize(
    "value", ["", " ", "-1", "5 parsecs", "1mins", "s", "1min x", "Infinity", "1,5s", "1e3"]
)
def test_time_span_rejects_bad_syntax(value: str) -> None:
    einval("TimeoutStopSec", value)


def test_time_span_rejects_overflow() -> None:
    einval("RuntimeMaxSec", "600000y")


def test_timeout_sec_sets_start_and_stop_timeouts() -> None:
    assert convert_properties("TimeoutSec", "10s") == [
        ("TimeoutStartUSec", Variant("t", 10 * SEC)),
        ("TimeoutStopUSec", Variant("t", 10 * SEC)),
    ]


# --- kill settings -----------------------------------------------------------


@pytest.mark.parametrize("mode", ["control-group", "mixed", "process", "none"])
def test_kill_mode_accepts_systemd_modes(mode: str) -> None:
    assert convert_property("KillMode", mode) == ("KillMode", Variant("s", mode))


@pytest.mark.parametrize("mode", ["", "all", "Mixed", "process "])
def test_kill_mode_rejects_unknown_modes(mode: str) -> None:
    einval("KillMode", mode)


@pytest.mark.parametrize("name", ["KillSignal", "FinalKillSignal"])
@pytest.mark.parametrize(
    ("value", "signum"),
    [
        ("15", 15),
        ("9", 9),
        ("SIGTERM", 15),
        ("TERM", 15),
        ("sigkill", 9),
        ("SIGUSR1", 10),
        ("RTMIN", 34),
        ("SIGRTMIN+2", 36),
        ("RTMAX", 64),
        ("RTMAX-1", 63),
    ],
)
def test_signals_by_number_or_name(name: str, value: str, signum: int) -> None:
    assert convert_property(name, value) == (name, Variant("i", signum))


@pytest.mark.parametrize("value", ["0", "65", "-9", "SIGFOO", "", "RTMIN-1", "RTMAX+1", "RTMIN+31"])
def test_signals_reject_unknown_values(value: str) -> None:
    einval("KillSignal", value)


# --- booleans ----------------------------------------------------------------

BOOLS = ["SendSIGKILL", "SendSIGHUP", "Delegate"]


@pytest.mark.parametrize("name", BOOLS)
@pytest.mark.parametrize("value", ["yes", "true", "1", "on", "YES", "True", "y", "t"])
def test_booleans_true_spellings(name: str, value: str) -> None:
    assert convert_property(name, value) == (name, Variant("b", True))


@pytest.mark.parametrize("name", BOOLS)
@pytest.mark.parametrize("value", ["no", "false", "0", "off", "NO", "False", "n", "f"])
def test_booleans_false_spellings(name: str, value: str) -> None:
    assert convert_property(name, value) == (name, Variant("b", False))


@pytest.mark.parametrize("value", ["", "maybe", "2", "yes please"])
def test_booleans_reject_other_words(value: str) -> None:
    einval("SendSIGKILL", value)


@pytest.mark.parametrize("value", ["yes", "no"])
def test_remain_after_exit_is_refused_with_the_reason(value: str) -> None:
    with pytest.raises(SdexecError) as info:
        convert_properties("RemainAfterExit", value)
    assert info.value.errno == errno.EINVAL
    assert "never end" in info.value.message


# --- bounded integers --------------------------------------------------------


@pytest.mark.parametrize("value", [-1000, 0, 500, 1000])
def test_oom_score_adjust_in_range(value: int) -> None:
    assert convert_property("OOMScoreAdjust", str(value)) == ("OOMScoreAdjust", Variant("i", value))


@pytest.mark.parametrize("value", ["-1001", "1001", "x", "", "1.5"])
def test_oom_score_adjust_out_of_range(value: str) -> None:
    einval("OOMScoreAdjust", value)


@pytest.mark.parametrize(("value", "nice"), [("-20", -20), ("0", 0), ("19", 19), ("+5", 5)])
def test_nice_in_range(value: str, nice: int) -> None:
    assert convert_property("Nice", value) == ("Nice", Variant("i", nice))


@pytest.mark.parametrize("value", ["-21", "20", "x", ""])
def test_nice_out_of_range(value: str) -> None:
    einval("Nice", value)


# --- slices ------------------------------------------------------------------


@pytest.mark.parametrize("value", ["flux.slice", "system-sdexec.slice", "-.slice"])
def test_slice_accepts_slice_names(value: str) -> None:
    assert convert_property("Slice", value) == ("Slice", Variant("s", value))


@pytest.mark.parametrize("value", ["flux", "flux.service", ".slice", "a b.slice", "a/b.slice", ""])
def test_slice_rejects_other_names(value: str) -> None:
    einval("Slice", value)


# --- standard output and error -----------------------------------------------


@pytest.mark.parametrize("name", ["StandardOutput", "StandardError"])
@pytest.mark.parametrize("kind", ["journal", "null", "inherit", "kmsg", "journal+console", "tty"])
def test_std_output_kinds(name: str, kind: str) -> None:
    assert convert_property(name, kind) == (name, Variant("s", kind))


@pytest.mark.parametrize("name", ["StandardOutput", "StandardError"])
@pytest.mark.parametrize(
    ("prefix", "suffix"),
    [("file", "File"), ("append", "FileToAppend"), ("truncate", "FileToTruncate")],
)
def test_std_output_files_use_their_own_properties(name: str, prefix: str, suffix: str) -> None:
    assert convert_property(name, f"{prefix}:/var/log/job.out") == (
        f"{name}{suffix}",
        Variant("s", "/var/log/job.out"),
    )


@pytest.mark.parametrize("value", ["", "syslog", "file:", "file:job.out", "append:/a/../b", "fd:x"])
def test_std_output_rejects_other_values(value: str) -> None:
    einval("StandardOutput", value)


# --- resource limits ---------------------------------------------------------


def test_limit_core_infinity() -> None:
    assert convert_property("LimitCORE", "infinity") == ("LimitCORE", Variant("t", INFINITY))


def test_limit_core_accepts_sizes() -> None:
    assert convert_property("LimitCORE", "1G") == ("LimitCORE", Variant("t", 1 << 30))


def test_limit_nofile_is_a_count() -> None:
    assert convert_property("LimitNOFILE", "4096") == ("LimitNOFILE", Variant("t", 4096))


def test_limit_nofile_rejects_size_suffixes() -> None:
    einval("LimitNOFILE", "4K")


def test_limit_soft_and_hard_give_two_properties() -> None:
    assert convert_properties("LimitNOFILE", "1024:524288") == [
        ("LimitNOFILE", Variant("t", 524288)),
        ("LimitNOFILESoft", Variant("t", 1024)),
    ]


def test_limit_soft_may_be_below_infinite_hard() -> None:
    assert convert_properties("LimitSTACK", "8M:infinity") == [
        ("LimitSTACK", Variant("t", INFINITY)),
        ("LimitSTACKSoft", Variant("t", 8 << 20)),
    ]


def test_limit_soft_above_hard_is_rejected() -> None:
    einval("LimitNOFILE", "4096:1024")


def test_convert_property_refuses_a_setting_with_two_properties() -> None:
    with pytest.raises(SdexecError) as info:
        convert_property("LimitNOFILE", "1024:4096")
    assert info.value.errno == errno.EINVAL


@pytest.mark.parametrize(("value", "seconds"), [("60", 60), ("1min", 60), ("1.5", 2), ("1ms", 1)])
def test_limit_cpu_is_whole_seconds_rounded_up(value: str, seconds: int) -> None:
    assert convert_property("LimitCPU", value) == ("LimitCPU", Variant("t", seconds))


def test_limit_rttime_counts_plain_numbers_in_microseconds() -> None:
    assert convert_property("LimitRTTIME", "500") == ("LimitRTTIME", Variant("t", 500))
    assert convert_property("LimitRTTIME", "1s") == ("LimitRTTIME", Variant("t", SEC))


@pytest.mark.parametrize(("value", "raw"), [("+5", 15), ("-20", 40), ("19", 19), ("0", 0)])
def test_limit_nice_accepts_nice_levels_and_raw_values(value: str, raw: int) -> None:
    assert convert_property("LimitNICE", value) == ("LimitNICE", Variant("t", raw))


@pytest.mark.parametrize(
    "name",
    [
        "LimitAS",
        "LimitCORE",
        "LimitCPU",
        "LimitDATA",
        "LimitFSIZE",
        "LimitLOCKS",
        "LimitMEMLOCK",
        "LimitMSGQUEUE",
        "LimitNICE",
        "LimitNOFILE",
        "LimitNPROC",
        "LimitRSS",
        "LimitRTPRIO",
        "LimitRTTIME",
        "LimitSIGPENDING",
        "LimitSTACK",
    ],
)
def test_every_rlimit_accepts_infinity(name: str) -> None:
    assert convert_property(name, "infinity") == (name, Variant("t", INFINITY))


@pytest.mark.parametrize("value", ["", ":", "1:", ":1", "1:2:3", "many", "-21", "+20", "41"])
def test_limit_rejects_bad_values(value: str) -> None:
    einval("LimitNICE", value)


def test_limit_rejects_the_infinity_value_spelled_as_a_number() -> None:
    einval("LimitNOFILE", str(2**64 - 1))


# --- unknown settings, assignments, opts -------------------------------------


@pytest.mark.parametrize("name", ["ExecStart", "Environment", "StandardInput", "", "Bad-Name"])
def test_reserved_or_malformed_property_is_einval_naming_it(name: str) -> None:
    err = einval(name, "1")
    assert f"error setting property {name}=" in err.message


@pytest.mark.parametrize("name", ["Bogus", "memorymax", "LimitFOO", "Type", "DevicePolicy"])
def test_unknown_property_goes_to_systemd_as_a_string(name: str) -> None:
    # systemd itself refuses a name it does not know, before creating the unit
    # (flux-core's sdexec passes such settings the same way).
    assert convert_properties(name, "zzz") == [(name, Variant("s", "zzz"))]


def test_bad_value_says_error_setting_property() -> None:
    err = einval("SendSIGKILL", "zzz")
    assert err.message.startswith("error setting property SendSIGKILL='zzz': ")


def test_usec_names_count_microseconds() -> None:
    assert convert_property("TimeoutStopUSec", "42") == ("TimeoutStopUSec", Variant("t", 42))


@pytest.mark.parametrize(
    ("value", "bitmap"),
    [("0,57-99,127", None), ("", b""), ("[0-3]", b"\x0f"), ("8", b"\x00\x01")],
)
def test_allowed_cpus_is_an_idset_bitmap(value: str, bitmap: bytes | None) -> None:
    ((name, variant),) = convert_properties("AllowedCPUs", value)
    assert name == "AllowedCPUs" and variant.signature == "ay"
    data = bytes(variant.value)
    ids = {i for i in range(len(data) * 8) if data[i // 8] >> (i % 8) & 1}
    assert ids == set(idset.decode(value))
    if bitmap is not None:
        assert data == bitmap


def test_device_allow_entries() -> None:
    assert convert_properties("DeviceAllow", "/dev/null rw, /dev/zero r") == [
        ("DeviceAllow", Variant("a(ss)", [["/dev/null", "rw"], ["/dev/zero", "r"]]))
    ]


@pytest.mark.parametrize("value", ["", ",", "/dev/null", "/dev/null rw,char-pts"])
def test_device_allow_without_permissions_is_einval(value: str) -> None:
    einval("DeviceAllow", value)


def test_supported_properties_lists_the_table() -> None:
    assert {"MemoryMax", "CPUQuota", "LimitNOFILE", "RuntimeMaxSec"} <= p.SUPPORTED_PROPERTIES


def test_convert_assignment_splits_at_the_first_equals_sign() -> None:
    assert convert_assignment("Description=a=b") == [("Description", Variant("s", "a=b"))]


@pytest.mark.parametrize("text", ["MemoryMax", "=1G", ""])
def test_convert_assignment_requires_name_equals_value(text: str) -> None:
    with pytest.raises(SdexecError) as info:
        convert_assignment(text)
    assert info.value.errno == errno.EINVAL


def test_opts_properties_picks_prefixed_keys_in_order() -> None:
    opts = {
        "SDEXEC_PROP_MemoryMax": "1G",
        "stdout_buffer_size": "4096",
        "SDEXEC_PROP_KillSignal": "SIGINT",
    }
    assert opts_properties(opts) == [
        ("MemoryMax", Variant("t", 1 << 30)),
        ("KillSignal", Variant("i", 2)),
    ]


def test_opts_properties_of_empty_opts_is_empty() -> None:
    assert opts_properties({}) == []


def test_opts_properties_expands_multi_property_settings() -> None:
    assert [n for n, _ in opts_properties({"SDEXEC_PROP_TimeoutSec": "1"})] == [
        "TimeoutStartUSec",
        "TimeoutStopUSec",
    ]


def test_opts_properties_rejects_non_string_values() -> None:
    with pytest.raises(SdexecError) as info:
        opts_properties({"SDEXEC_PROP_MemoryMax": 1024})
    assert info.value.errno == errno.EINVAL


def test_opts_properties_rejects_reserved_property() -> None:
    with pytest.raises(SdexecError) as info:
        opts_properties({"SDEXEC_PROP_ExecStart": "/bin/sh"})
    assert "ExecStart" in info.value.message


# --- ExecStartEx and Environment ---------------------------------------------


def test_exec_start_ex_passes_argv_with_no_env_expand() -> None:
    argv = ["/bin/echo", "$HOME", "$$", "${X}"]
    assert exec_start_ex(argv) == (
        "ExecStartEx",
        Variant("a(sasas)", [["/bin/echo", argv, ["no-env-expand"]]]),
    )


def test_exec_start_ex_with_separate_executable_path() -> None:
    assert exec_start_ex(["env", "-i"], path="/usr/bin/env") == (
        "ExecStartEx",
        Variant("a(sasas)", [["/usr/bin/env", ["env", "-i"], ["no-env-expand"]]]),
    )


def test_exec_start_ex_rejects_empty_path() -> None:
    with pytest.raises(SdexecError):
        exec_start_ex(["env"], path="")


def test_exec_start_ex_copies_argv() -> None:
    argv = ["/bin/true"]
    _, variant = exec_start_ex(argv)
    argv.append("changed")
    assert variant.value[0][1] == ["/bin/true"]


@pytest.mark.parametrize("argv", [[], [""], ["/bin/echo", "a\0b"]])
def test_exec_start_ex_rejects_empty_or_nul_argv(argv: list[str]) -> None:
    with pytest.raises(SdexecError) as info:
        exec_start_ex(argv)
    assert info.value.errno == errno.EINVAL


def test_environment_is_key_equals_value_strings_in_order() -> None:
    assert environment({"PATH": "/bin", "EMPTY": "", "EQ": "a=b"}) == (
        "Environment",
        Variant("as", ["PATH=/bin", "EMPTY=", "EQ=a=b"]),
    )


@pytest.mark.parametrize("key", ["", "A=B", "A\0B"])
def test_environment_rejects_impossible_names(key: str) -> None:
    with pytest.raises(SdexecError) as info:
        environment({key: "x"})
    assert info.value.errno == errno.EINVAL


def test_environment_rejects_nul_in_values() -> None:
    with pytest.raises(SdexecError) as info:
        environment({"X": "a\0b"})
    assert info.value.errno == errno.EINVAL


def test_environment_leaves_out_names_systemd_refuses() -> None:
    env = {"BASH_FUNC_module%%": "() { :; }", "1X": "y", "A.B": "z", "OK_1": "v"}
    assert environment(env) == ("Environment", Variant("as", ["OK_1=v"]))


def test_rejected_env_names_lists_what_environment_leaves_out() -> None:
    env = {"BASH_FUNC_ml%%": "f", "HOME": "/root", "my-var": "x"}
    assert p.rejected_env_names(env) == ["BASH_FUNC_ml%%", "my-var"]


def test_environment_values_may_hold_control_characters() -> None:
    assert environment({"X": "a\nb\tc\x1b"}) == ("Environment", Variant("as", ["X=a\nb\tc\x1b"]))


def _environment_entry_by_entry(env: dict[str, str]) -> list[str] | None:
    """What environment() must give, one entry at a time (None: EINVAL)."""
    entries = []
    for name, value in env.items():
        if not name or "=" in name or "\0" in name or "\0" in value:
            return None
        try:
            (name + value).encode("utf-8")
        except UnicodeEncodeError:
            return None
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            entries.append(f"{name}={value}")
    return entries


_ENV_TEXT = st.text(alphabet=st.sampled_from("aZ_9=\n\0 %.-é\ud800"), max_size=6)


@given(st.dictionaries(_ENV_TEXT, _ENV_TEXT, max_size=6))
@settings(max_examples=400)
def test_environment_checked_at_once_agrees_with_entry_by_entry(env: dict[str, str]) -> None:
    expected = _environment_entry_by_entry(env)
    if expected is None:
        with pytest.raises(SdexecError):
            environment(env)
    else:
        assert environment(env) == ("Environment", Variant("as", expected))


# --- UnitSpec ----------------------------------------------------------------


def as_dict(props: list[list[object]]) -> dict[object, object]:
    return {entry[0]: entry[1] for entry in props}


def names(props: list[list[object]]) -> list[object]:
    return [entry[0] for entry in props]


def test_unit_spec_minimal_properties_in_order() -> None:
    props = UnitSpec(argv=["/bin/true"]).properties()
    assert names(props) == ["Type", "ExecStartEx", "Environment", "Description", "CollectMode"]


def test_unit_spec_entries_are_two_item_lists() -> None:
    for entry in UnitSpec(argv=["/bin/true"]).properties():
        assert isinstance(entry, list)
        assert len(entry) == 2
        assert isinstance(entry[0], str)
        assert isinstance(entry[1], Variant)


def test_unit_spec_type_exec_and_collect_mode() -> None:
    props = as_dict(UnitSpec(argv=["/bin/true"]).properties())
    assert props["Type"] == Variant("s", "exec")
    assert props["CollectMode"] == Variant("s", "inactive-or-failed")


def test_unit_spec_command_and_environment() -> None:
    props = as_dict(UnitSpec(argv=["/bin/sh", "-c", "echo $X"], env={"X": "1"}).properties())
    assert props["ExecStartEx"] == Variant(
        "a(sasas)", [["/bin/sh", ["/bin/sh", "-c", "echo $X"], ["no-env-expand"]]]
    )
    assert props["Environment"] == Variant("as", ["X=1"])


def test_unit_spec_working_directory_when_cwd_given() -> None:
    props = as_dict(UnitSpec(argv=["/bin/pwd"], cwd="/tmp").properties())
    assert props["WorkingDirectory"] == Variant("s", "/tmp")


def test_unit_spec_rejects_relative_cwd() -> None:
    with pytest.raises(SdexecError) as info:
        UnitSpec(argv=["/bin/pwd"], cwd="tmp").properties()
    assert info.value.errno == errno.EINVAL


def test_unit_spec_default_description_is_the_command_line() -> None:
    props = as_dict(UnitSpec(argv=["/bin/echo", "hello world"]).properties())
    assert props["Description"] == Variant("s", "/bin/echo 'hello world'")


def test_unit_spec_default_description_is_truncated() -> None:
    props = as_dict(UnitSpec(argv=["/bin/echo", "x" * 1000]).properties())
    description = props["Description"]
    assert isinstance(description, Variant)
    assert len(description.value) == p.DESCRIPTION_MAX
    assert description.value.startswith("/bin/echo xxx")
    assert description.value.endswith("...")


def test_unit_spec_explicit_description() -> None:
    props = as_dict(UnitSpec(argv=["/bin/true"], description="epilog").properties())
    assert props["Description"] == Variant("s", "epilog")


def test_unit_spec_stdio_fds_are_h_indices() -> None:
    spec = UnitSpec(argv=["/bin/cat"], stdin_fd=0, stdout_fd=1, stderr_fd=2)
    props = as_dict(spec.properties())
    assert props["StandardInputFileDescriptor"] == Variant("h", 0)
    assert props["StandardOutputFileDescriptor"] == Variant("h", 1)
    assert props["StandardErrorFileDescriptor"] == Variant("h", 2)


def test_unit_spec_omits_fds_not_given() -> None:
    props = as_dict(UnitSpec(argv=["/bin/cat"], stdout_fd=0).properties())
    assert "StandardInputFileDescriptor" not in props
    assert "StandardErrorFileDescriptor" not in props
    assert props["StandardOutputFileDescriptor"] == Variant("h", 0)


def test_unit_spec_rejects_negative_fd_index() -> None:
    with pytest.raises(SdexecError):
        UnitSpec(argv=["/bin/cat"], stdout_fd=-1).properties()


def test_unit_spec_extra_properties_come_last() -> None:
    spec = UnitSpec(argv=["/bin/true"], extra=[convert_property("MemoryMax", "1G")])
    props = spec.properties()
    assert props[-1] == ["MemoryMax", Variant("t", 1 << 30)]


def test_unit_spec_extra_overrides_builtin_without_duplicates() -> None:
    spec = UnitSpec(argv=["/bin/true"], extra=[("Description", Variant("s", "mine"))])
    props = spec.properties()
    assert names(props).count("Description") == 1
    assert as_dict(props)["Description"] == Variant("s", "mine")


def test_unit_spec_later_extra_wins_and_takes_the_later_position() -> None:
    extra = [
        *convert_properties("StandardOutput", "journal"),
        *convert_properties("StandardOutput", "file:/tmp/out"),
        *convert_properties("StandardOutput", "journal"),
    ]
    props = UnitSpec(argv=["/bin/true"], extra=extra).properties()
    assert names(props)[-2:] == ["StandardOutputFile", "StandardOutput"]
    assert names(props).count("StandardOutput") == 1


def test_unit_spec_single_limit_cancels_earlier_soft_limit() -> None:
    extra = [
        *convert_properties("LimitNOFILE", "1024:4096"),
        *convert_properties("LimitNOFILE", "2048"),
    ]
    props = as_dict(UnitSpec(argv=["/bin/true"], extra=extra).properties())
    assert props["LimitNOFILE"] == Variant("t", 2048)
    assert "LimitNOFILESoft" not in props


def test_unit_spec_soft_and_hard_limit_both_survive_merging() -> None:
    extra = convert_properties("LimitNOFILE", "1024:4096")
    props = as_dict(UnitSpec(argv=["/bin/true"], extra=extra).properties())
    assert props["LimitNOFILE"] == Variant("t", 4096)
    assert props["LimitNOFILESoft"] == Variant("t", 1024)


def test_unit_spec_with_opts_properties() -> None:
    extra = opts_properties({"SDEXEC_PROP_RuntimeMaxSec": "1min", "SDEXEC_PROP_Slice": "x.slice"})
    props = as_dict(UnitSpec(argv=["/bin/true"], extra=extra).properties())
    assert props["RuntimeMaxUSec"] == Variant("t", MIN)
    assert props["Slice"] == Variant("s", "x.slice")


def test_unit_spec_argv0_is_what_the_program_sees() -> None:
    spec = UnitSpec(argv=["/usr/bin/sleep", "1"], argv0="sleep")
    props = as_dict(spec.properties())
    assert props["ExecStartEx"] == Variant(
        "a(sasas)", [["/usr/bin/sleep", ["sleep", "1"], ["no-env-expand"]]]
    )
    assert props["Description"] == Variant("s", "sleep 1")


def test_dedupe_keeps_the_last_assignment_of_each_name() -> None:
    props = UnitSpec(argv=["/bin/true"]).properties()
    props.extend([k, v] for k, v in convert_properties("Description", "late"))
    out = p.dedupe(props)
    assert names(out).count("Description") == 1
    assert out[-1] == ["Description", Variant("s", "late")]


def test_dedupe_rejects_entries_that_are_not_properties() -> None:
    with pytest.raises(TypeError):
        p.dedupe([["Description", "not a variant"]])


def test_unit_spec_rejects_empty_argv() -> None:
    with pytest.raises(SdexecError):
        UnitSpec(argv=[]).properties()


# --- object paths ------------------------------------------------------------


@pytest.mark.parametrize(
    ("unit", "element"),
    [
        ("sdexec-0-1.service", "sdexec_2d0_2d1_2eservice"),
        ("init.scope", "init_2escope"),
        ("a_b.service", "a_5fb_2eservice"),
        ("-.slice", "_2d_2eslice"),
        ("1x.service", "_31x_2eservice"),
        ("x1", "x1"),
        ("", "_"),
        ("é", "_c3_a9"),
        ("a@b\\c:d", "a_40b_5cc_3ad"),
    ],
)
def test_unit_object_path_escapes_like_sd_bus_path_encode(unit: str, element: str) -> None:
    assert unit_object_path(unit) == "/org/freedesktop/systemd1/unit/" + element


def unescape_label(label: str) -> str:
    if label == "_":
        return ""
    data = re.sub(rb"_([0-9a-f]{2})", lambda m: bytes.fromhex(m.group(1).decode()), label.encode())
    return data.decode("utf-8")


@settings(max_examples=200)
@given(st.text(max_size=40))
def test_unit_object_path_element_is_a_valid_reversible_path_element(unit: str) -> None:
    element = unit_object_path(unit).rsplit("/", 1)[1]
    assert re.fullmatch(r"[A-Za-z0-9_]+", element)
    assert unescape_label(element) == unit


def _fragment_char_by_char(text: str, limit: int) -> str:
    safe = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789:_.-"
    out, size = [], 0
    for ch in text:
        piece = "".join(chr(b) if b in safe else f"\\x{b:02x}" for b in ch.encode())
        if size + len(piece) > limit:
            break
        out.append(piece)
        size += len(piece)
    return "".join(out)


@given(st.text(alphabet=st.sampled_from("aZ9:_.-/ ö@\\"), max_size=12), st.integers(0, 10))
def test_unit_name_fragment_escapes_and_cuts_like_systemd_escape(text: str, limit: int) -> None:
    assert p.unit_name_fragment(text, limit) == _fragment_char_by_char(text, limit)
