"""``sdexec top``'s arithmetic and table, without a terminal or a server."""

from __future__ import annotations

from sdexec.cli.top import Rates, Sample, elapsed_text, human_size, notes, rows_of, sort_rows, table


def _resp(time: float, cpu: int, rank: int = 0, source: str = "cgroup") -> dict[str, object]:
    return {
        "rank": rank,
        "time": time,
        "procs": [
            {"pid": 10, "label": "a", "unit": "u-a.service", "state": "R", "cmd": "sh",
             "started": 100.0, "cpu_usec": cpu, "memory": 3 << 20, "memory_source": source},
            {"pid": 11, "label": "b", "unit": "u-b.service", "state": "Z", "cmd": "true"},
        ],
    }  # fmt: skip


def test_cpu_is_the_life_average_first_and_the_rate_between_refreshes_then() -> None:
    rates = Rates()
    first = Sample()
    rows_of(_resp(110.0, 5_000_000), rates, first)  # 5 s of CPU in 10 s of life
    assert first.rows[0].cpu_pct == 50.0
    assert first.rows[0].elapsed == 10.0
    later = Sample()
    rows_of(_resp(112.0, 7_000_000), rates, later)  # 2 s of CPU in 2 s
    assert later.rows[0].cpu_pct == 100.0
    assert later.rows[1].cpu_pct is None and later.rows[1].elapsed is None


def test_sorting_puts_the_biggest_first() -> None:
    sample = Sample()
    rows_of(_resp(110.0, 1_000_000), Rates(), sample)
    assert [r.label for r in sort_rows(sample.rows, "cpu")] == ["a", "b"]
    assert [r.label for r in sort_rows(sample.rows, "label")] == ["a", "b"]
    assert [r.pid for r in sort_rows(sample.rows, "pid")] == [10, 11]


def test_sizes_and_elapsed_times() -> None:
    assert [human_size(n) for n in (None, 512, 1536, 20 << 20, 3 << 30)] == [
        "-", "512B", "1.5K", "20.0M", "3.0G",
    ]  # fmt: skip
    assert [elapsed_text(s) for s in (None, 5, 65, 3725, 90061)] == [
        "-", "00:05", "01:05", "01:02:05", "1-01:01:01",
    ]  # fmt: skip


def test_table_columns_and_notes() -> None:
    sample = Sample(unreachable={3: "unreachable: no server"})
    rows_of(_resp(110.0, 1_000_000, rank=2, source="rss"), Rates(), sample)
    lines = table(sample.rows, with_rank=True)
    assert lines[0].split() == [
        "RANK",
        "PID",
        "LABEL",
        "UNIT",
        "S",
        "CPU%",
        "MEM",
        "ELAPSED",
        "CMD",
    ]
    assert lines[1].split() == ["2", "10", "a", "u-a.service", "R", "10.0", "3.0M", "00:10", "sh"]
    assert lines[2].split()[5:8] == ["-", "-", "-"]
    assert notes(sample) == [
        "MEM on rank 2: resident set of the unit's processes"
        " (no memory controller for its cgroups)",
        "rank 3: unreachable: no server",
    ]


def test_the_state_says_why_a_process_ended_when_the_server_does() -> None:
    from sdexec.cli.top import state_text

    assert state_text({"state": "Z", "reason": "oom-kill"}) == "Z (oom-kill)"
    assert state_text({"state": "R"}) == "R"
    assert state_text({}) == "-"
