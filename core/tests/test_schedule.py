"""Tests for dkron.schedule: grammar, time zones, DST gap/fold handling, @every/@at, errors."""

from __future__ import annotations

import itertools
import threading
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from dkron.schedule import Schedule, ScheduleError, parse_schedule, validate_timezone


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def fires(spec: str, after: datetime, n: int = 3, **kwargs: str) -> list[datetime]:
    return parse_schedule(spec, **kwargs).next_n(after, n)


# --- descriptors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "after", "expected"),
    [
        ("@yearly", utc(2024, 3, 1), [utc(2025, 1, 1), utc(2026, 1, 1)]),
        ("@annually", utc(2024, 3, 1), [utc(2025, 1, 1), utc(2026, 1, 1)]),
        ("@monthly", utc(2024, 1, 31, 12), [utc(2024, 2, 1), utc(2024, 3, 1)]),
        ("@weekly", utc(2024, 1, 1), [utc(2024, 1, 7), utc(2024, 1, 14)]),  # Sundays
        ("@daily", utc(2024, 1, 1), [utc(2024, 1, 2), utc(2024, 1, 3)]),
        ("@midnight", utc(2024, 1, 1, 5), [utc(2024, 1, 2), utc(2024, 1, 3)]),
        ("@hourly", utc(2024, 1, 1, 0, 30), [utc(2024, 1, 1, 1), utc(2024, 1, 1, 2)]),
        ("@minutely", utc(2024, 1, 1, 0, 0, 30), [utc(2024, 1, 1, 0, 1), utc(2024, 1, 1, 0, 2)]),
        ("@DAILY", utc(2024, 1, 1), [utc(2024, 1, 2), utc(2024, 1, 3)]),
    ],
)
def test_descriptors(spec: str, after: datetime, expected: list[datetime]) -> None:
    sched = parse_schedule(spec)
    assert sched.kind == "cron"
    assert sched.interval() is None
    assert sched.next_n(after, 2) == expected


@pytest.mark.parametrize(
    ("spec", "timezone", "after", "expected"),
    [
        # Europe/Madrid is UTC+1 in winter, UTC+2 from 2024-03-31: local midnight moves in UTC.
        ("@daily", "Europe/Madrid", utc(2024, 3, 30), [utc(2024, 3, 30, 23), utc(2024, 3, 31, 22)]),
        ("@midnight", "Europe/Madrid", utc(2024, 1, 10), [utc(2024, 1, 10, 23), utc(2024, 1, 11, 23)]),
        ("@hourly", "Asia/Kolkata", utc(2024, 1, 1), [utc(2024, 1, 1, 0, 30), utc(2024, 1, 1, 1, 30)]),
        ("@weekly", "Asia/Tokyo", utc(2024, 1, 1), [utc(2024, 1, 6, 15), utc(2024, 1, 13, 15)]),
        ("@monthly", "America/New_York", utc(2024, 1, 15), [utc(2024, 2, 1, 5), utc(2024, 3, 1, 5)]),
        ("@yearly", "Australia/Sydney", utc(2024, 6, 1), [utc(2024, 12, 31, 13), utc(2025, 12, 31, 13)]),
    ],
)
def test_job_timezone_applies_to_descriptors(
    spec: str, timezone: str, after: datetime, expected: list[datetime]
) -> None:
    sched = parse_schedule(spec, timezone=timezone)
    assert sched.tz == ZoneInfo(timezone)
    assert sched.next_n(after, 2) == expected


# --- cron fields -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "after", "expected"),
    [
        # 6 fields, seconds FIRST (Dkron), unlike croniter's native seconds-last layout.
        ("30 * * * * *", utc(2024, 1, 1), [utc(2024, 1, 1, 0, 0, 30), utc(2024, 1, 1, 0, 1, 30)]),
        ("15 30 9 * * *", utc(2024, 1, 1), [utc(2024, 1, 1, 9, 30, 15), utc(2024, 1, 2, 9, 30, 15)]),
        ("*/20 * * * * *", utc(2024, 1, 1), [utc(2024, 1, 1, 0, 0, 20), utc(2024, 1, 1, 0, 0, 40)]),
        ("* * * * * *", utc(2024, 1, 1, 0, 0, 59), [utc(2024, 1, 1, 0, 1), utc(2024, 1, 1, 0, 1, 1)]),
        ("0 30 9 * * 1-5", utc(2024, 1, 5, 10), [utc(2024, 1, 8, 9, 30), utc(2024, 1, 9, 9, 30)]),
        # 5 fields: standard crontab, seconds = 0.
        ("30 9 * * *", utc(2024, 1, 1), [utc(2024, 1, 1, 9, 30), utc(2024, 1, 2, 9, 30)]),
        ("*/15 * * * *", utc(2024, 1, 1, 0, 1), [utc(2024, 1, 1, 0, 15), utc(2024, 1, 1, 0, 30)]),
        ("0 12 1,15 * *", utc(2024, 1, 2), [utc(2024, 1, 15, 12), utc(2024, 2, 1, 12)]),
        ("5-7 * * * *", utc(2024, 1, 1), [utc(2024, 1, 1, 0, 5), utc(2024, 1, 1, 0, 6)]),
        ("10/20 * * * *", utc(2024, 1, 1), [utc(2024, 1, 1, 0, 10), utc(2024, 1, 1, 0, 30)]),
        ("0 0 29 2 *", utc(2024, 3, 1), [utc(2028, 2, 29), utc(2032, 2, 29)]),
    ],
)
def test_cron_fields(spec: str, after: datetime, expected: list[datetime]) -> None:
    assert fires(spec, after, 2) == expected


@pytest.mark.parametrize(
    ("spec", "same_as"),
    [
        ("0 0 12 * JAN,jul *", "0 0 12 * 1,7 *"),
        ("0 0 12 * Mar-May *", "0 0 12 * 3-5 *"),
        ("0 0 12 * * MON-fri", "0 0 12 * * 1-5"),
        ("0 0 12 * * sun", "0 0 12 * * 0"),
        ("0 0 12 * * 7", "0 0 12 * * 0"),  # 7 is Sunday too
        ("0 0 12 * * 5-7", "0 0 12 * * 0,5,6"),
        ("0 0 12 ? * SAT", "0 0 12 * * 6"),
        ("0 0 12 1 * ?", "0 0 12 1 * *"),
        ("0 0 12 * * */1", "0 0 12 * * *"),
        ("0 12 * * ?", "0 12 * * *"),
    ],
)
def test_names_and_aliases(spec: str, same_as: str) -> None:
    after = utc(2024, 1, 1)
    assert fires(spec, after, 8) == fires(same_as, after, 8)


def test_names_fire_on_the_named_days() -> None:
    got = fires("0 0 12 * * MON-fri", utc(2024, 1, 5, 13), 3)  # 2024-01-05 is a Friday
    assert [d.strftime("%a") for d in got] == ["Mon", "Tue", "Wed"]
    assert fires("0 0 0 1 jul *", utc(2024, 1, 1), 1) == [utc(2024, 7, 1)]


def test_dom_and_dow_are_ored_when_both_restricted() -> None:
    # 1st and 15th of the month OR any Friday (2024-01-05 is a Friday, 2024-01-15 a Monday).
    assert fires("0 0 0 1,15 * FRI", utc(2024, 1, 1), 4) == [
        utc(2024, 1, 5),
        utc(2024, 1, 12),
        utc(2024, 1, 15),
        utc(2024, 1, 19),
    ]
    # A `*`/`?` day field leaves the other one alone (AND with "every day").
    assert fires("0 0 0 13 * ?", utc(2024, 1, 1), 2) == [utc(2024, 1, 13), utc(2024, 2, 13)]
    # February 30th never happens, but OR-ed with February's Mondays the spec is still satisfiable.
    assert fires("0 0 0 30 2 MON", utc(2024, 1, 1), 2) == [utc(2024, 2, 5), utc(2024, 2, 12)]


# --- time zones --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "timezone", "expected"),
    [
        ("TZ=Asia/Tokyo 0 0 9 * * *", "", utc(2024, 1, 1)),
        ("CRON_TZ=America/New_York 0 0 9 * * *", "", utc(2024, 1, 1, 14)),
        ("TZ=Asia/Tokyo 0 9 * * *", "Europe/Berlin", utc(2024, 1, 1)),  # prefix overrides the job zone
        ("0 0 9 * * *", "Asia/Tokyo", utc(2024, 1, 1)),
        ("0 0 9 * * *", "", utc(2024, 1, 1, 9)),  # no zone: UTC, never server-local
        ("TZ=Asia/Tokyo @daily", "", utc(2024, 1, 1, 15)),
        ("CRON_TZ=Asia/Kolkata @hourly", "", utc(2024, 1, 1, 0, 30)),
        ("TZ=Asia/Kolkata @every 1h", "", utc(2024, 1, 1, 0, 30)),
        ("TZ=UTC   @daily", "Asia/Tokyo", utc(2024, 1, 1)),
    ],
)
def test_timezones(spec: str, timezone: str, expected: datetime) -> None:
    sched = parse_schedule(spec, timezone=timezone)
    assert sched.spec == spec
    assert sched.next_after(utc(2023, 12, 31, 23, 59, 59)) == expected


def test_validate_timezone() -> None:
    assert validate_timezone("") == ZoneInfo("UTC")
    assert validate_timezone("Europe/Berlin") == ZoneInfo("Europe/Berlin")
    assert parse_schedule("@daily").tz == ZoneInfo("UTC")
    for bad in ("Mars/Olympus", "../../etc/passwd", "Local"):
        with pytest.raises(ScheduleError, match=r"unknown time zone"):
            validate_timezone(bad)


# --- @every ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("duration", "seconds"),
    [("2s", 2), ("1h30m10s", 5410), ("1.5h", 5400), ("90m", 5400), ("1s500ms", 1.5), ("1500ms", 1.5)],
)
def test_every_interval(duration: str, seconds: float) -> None:
    sched = parse_schedule(f"@every {duration}")
    assert sched.kind == "every"
    assert sched.interval() == seconds
    first, second = sched.next_n(utc(2024, 1, 1, 0, 0, 0), 2)
    assert (second - first).total_seconds() == seconds


@pytest.mark.parametrize("offset_us", [0, 1, 999_999, 1_000_000, 1_500_000, 37_123_456])
def test_every_2s_fires_on_even_unix_seconds(offset_us: int) -> None:
    after = utc(2024, 1, 1) + timedelta(microseconds=offset_us)
    got = parse_schedule("@every 2s").next_after(after)
    assert got is not None and got > after and got - after <= timedelta(seconds=2)
    assert got.microsecond == 0 and int(got.timestamp()) % 2 == 0


def test_every_is_aligned_to_standard_offset_and_uniform_across_dst() -> None:
    # Kolkata is +05:30: hourly ticks land on the local hour, i.e. :30 UTC.
    kolkata = parse_schedule("@every 1h", timezone="Asia/Kolkata")
    assert kolkata.next_n(utc(2024, 1, 1, 0, 10), 2) == [utc(2024, 1, 1, 0, 30), utc(2024, 1, 1, 1, 30)]
    # New York's DST does not shift the ticks: elapsed time between them stays 3h.
    ny = parse_schedule("@every 3h", timezone="America/New_York")
    ticks = ny.next_n(utc(2024, 3, 9), 16)
    assert {b - a for a, b in itertools.pairwise(ticks)} == {timedelta(hours=3)}
    assert ticks[0] == utc(2024, 3, 9, 2)  # 1970-01-01T00:00 EST = 05:00 UTC, + k*3h


def test_every_ticks_do_not_depend_on_the_query_time() -> None:
    sched = parse_schedule("@every 7m")
    seq = sched.next_n(utc(2024, 5, 1), 20)
    for tick in seq:
        assert tick.timestamp() % 420 == 0
    for q in (utc(2024, 5, 1, 0, 33, 17), utc(2024, 5, 1, 1, 10)):
        assert sched.next_after(q) == min(t for t in seq if t > q)


# --- @at / @manually ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "timezone", "instant"),
    [
        ("@at 2024-05-01T10:00:00Z", "", utc(2024, 5, 1, 10)),
        ("@at 2024-05-01T10:00:00+02:00", "Asia/Tokyo", utc(2024, 5, 1, 8)),
        ("@at 2024-05-01T10:00:00.250Z", "", utc(2024, 5, 1, 10) + timedelta(milliseconds=250)),
        ("@at 2024-05-01T10:00:00", "Europe/Berlin", utc(2024, 5, 1, 8)),  # no offset: job zone
        ("@at 2024-05-01T10:00", "America/New_York", utc(2024, 5, 1, 14)),
        ("@at 2024-05-01T10:00", "", utc(2024, 5, 1, 10)),
        ("TZ=Asia/Tokyo @at 2024-05-01T09:00:00", "", utc(2024, 5, 1)),
        ("@at 2024-03-10T02:30:00", "America/New_York", utc(2024, 3, 10, 7)),  # in the DST gap
    ],
)
def test_at(spec: str, timezone: str, instant: datetime) -> None:
    sched = parse_schedule(spec, timezone=timezone)
    assert sched.kind == "at"
    assert sched.next_after(instant - timedelta(days=30)) == instant  # future
    assert sched.next_after(instant - timedelta(microseconds=1)) == instant
    assert sched.next_after(instant) is None  # strictly after
    assert sched.next_after(instant + timedelta(days=1)) is None  # past
    assert sched.next_n(instant - timedelta(days=1), 5) == [instant]


def test_manually() -> None:
    sched = parse_schedule("@manually", timezone="Europe/Berlin")
    assert sched.kind == "manual"
    assert sched.next_after(utc(2024, 1, 1)) is None
    assert sched.next_n(utc(2024, 1, 1), 3) == []
    assert sched.interval() is None


# --- hash fields -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        # sum(ord(c) for c in "test_job") == 858 (Dkron's own test vectors come first).
        ("0 0 ~ * * *", utc(2024, 1, 1, 18)),  # 858 % 24 = 18
        ("0 0 1 * ~ *", utc(2024, 7, 1, 1)),  # 858 % 12 + 1 = 7
        ("0 0 H * * *", utc(2024, 1, 1, 18)),  # Jenkins-style synonym
        ("~ 0 0 * * *", utc(2024, 1, 1, 0, 0, 18)),  # 858 % 60 = 18
        ("0 ~ 0 * * *", utc(2024, 1, 1, 0, 18)),
        ("~ 0 * * *", utc(2024, 1, 1, 0, 18)),  # 5 fields: first field is the minute
        ("0 0 0 ~ * *", utc(2024, 1, 19)),  # 858 % 28 + 1 = 19
        ("0 0 0 * * ~", utc(2024, 1, 4)),  # 858 % 7 = 4 = Thursday
        ("0 H/15 * * * *", utc(2024, 1, 1, 0, 3)),  # start 858 % 15 = 3, then every 15 min
    ],
)
def test_hash_fields(spec: str, expected: datetime) -> None:
    sched = parse_schedule(spec, job_name="test_job")
    assert sched.next_after(utc(2023, 12, 31, 23, 59, 59)) == expected


def test_hash_depends_only_on_job_name() -> None:
    a = parse_schedule("~ ~ ~ * * *", job_name="backup").next_n(utc(2024, 1, 1), 3)
    assert a == parse_schedule("~ ~ ~ * * *", job_name="backup").next_n(utc(2024, 1, 1), 3)
    assert a != parse_schedule("~ ~ ~ * * *", job_name="backup2").next_n(utc(2024, 1, 1), 3)
    assert fires("0 H/15 * * * *", utc(2024, 1, 1), 4, job_name="test_job")[1:] == [
        utc(2024, 1, 1, 0, 18),
        utc(2024, 1, 1, 0, 33),
        utc(2024, 1, 1, 0, 48),
    ]


# --- DST ---------------------------------------------------------------------------------------

NY, BERLIN = "America/New_York", "Europe/Berlin"


@pytest.mark.parametrize(
    ("spec", "timezone", "after", "expected"),
    [
        # Spring forward, New York 2024-03-10: local 02:00-02:59 does not exist; 03:00 EDT = 07:00Z.
        ("0 * * * * *", NY, utc(2024, 3, 10, 6, 58), [utc(2024, 3, 10, 6, 59), utc(2024, 3, 10, 7)]),
        ("0 * * * * *", NY, utc(2024, 3, 10, 7), [utc(2024, 3, 10, 7, 1), utc(2024, 3, 10, 7, 2)]),
        (
            "0 30 2 * * *",
            NY,
            utc(2024, 3, 9),
            [utc(2024, 3, 9, 7, 30), utc(2024, 3, 10, 7), utc(2024, 3, 11, 6, 30)],
        ),
        # Several gap times collapse onto the same instant: it fires once.
        ("0 */15 2 * * *", NY, utc(2024, 3, 10), [utc(2024, 3, 10, 7), utc(2024, 3, 11, 6)]),
        # Fall back, New York 2024-11-03: local 01:00-01:59 happens twice (05:xxZ EDT, 06:xxZ EST).
        ("0 * * * * *", NY, utc(2024, 11, 3, 5, 58), [utc(2024, 11, 3, 5, 59), utc(2024, 11, 3, 7)]),
        (
            "0 30 1 * * *",
            NY,
            utc(2024, 11, 2),
            [utc(2024, 11, 2, 5, 30), utc(2024, 11, 3, 5, 30), utc(2024, 11, 4, 6, 30)],
        ),
        # Queried from inside the second pass, nothing of the repeated hour fires again.
        ("0 * * * * *", NY, utc(2024, 11, 3, 6, 30), [utc(2024, 11, 3, 7), utc(2024, 11, 3, 7, 1)]),
        ("0 30 1 * * *", NY, utc(2024, 11, 3, 6, 0, 0), [utc(2024, 11, 4, 6, 30)]),
        ("* * * * * *", NY, utc(2024, 11, 3, 6, 30), [utc(2024, 11, 3, 7), utc(2024, 11, 3, 7, 0, 1)]),
        # Berlin 2024-03-31: local 02:00-02:59 does not exist; 03:00 CEST = 01:00Z.
        ("0 * * * * *", BERLIN, utc(2024, 3, 31, 0, 58), [utc(2024, 3, 31, 0, 59), utc(2024, 3, 31, 1)]),
        (
            "30 30 2 * * *",
            BERLIN,
            utc(2024, 3, 30),
            [utc(2024, 3, 30, 1, 30, 30), utc(2024, 3, 31, 1), utc(2024, 4, 1, 0, 30, 30)],
        ),
        # Berlin 2024-10-27: local 02:00-02:59 happens twice (00:xxZ CEST, 01:xxZ CET).
        ("0 * * * * *", BERLIN, utc(2024, 10, 27, 0, 58), [utc(2024, 10, 27, 0, 59), utc(2024, 10, 27, 2)]),
        ("0 * * * * *", BERLIN, utc(2024, 10, 27, 1, 59, 59), [utc(2024, 10, 27, 2)]),
        (
            "0 30 2 * * *",
            BERLIN,
            utc(2024, 10, 26),
            [utc(2024, 10, 26, 0, 30), utc(2024, 10, 27, 0, 30), utc(2024, 10, 28, 1, 30)],
        ),
    ],
)
def test_dst_gap_and_fold(spec: str, timezone: str, after: datetime, expected: list[datetime]) -> None:
    assert fires(spec, after, len(expected), timezone=timezone) == expected


@pytest.mark.parametrize(
    ("spec", "timezone", "day", "expected_count"),
    [
        # 23h day: the 60 gap minutes all map onto 03:00, which fires anyway, so 23 * 60 fires.
        ("0 * * * * *", NY, utc(2024, 3, 10, 5), 23 * 60),
        ("0 * * * * *", NY, utc(2024, 11, 3, 4), 24 * 60),  # 25h day, repeated hour runs once
        ("0 * * * * *", BERLIN, utc(2024, 3, 30, 23), 23 * 60),
        ("0 * * * * *", BERLIN, utc(2024, 10, 26, 22), 24 * 60),
        ("0 0 * * * *", BERLIN, utc(2024, 10, 26, 22), 24),
        ("0 0 2 * * *", BERLIN, utc(2024, 3, 30, 23), 1),
    ],
)
def test_dst_days_fire_each_wall_time_once(spec: str, timezone: str, day: datetime, expected_count: int) -> None:
    """Walk a whole local DST day: strictly increasing, once per wall time, consistent queries."""
    sched = parse_schedule(spec, timezone=timezone)
    tz = ZoneInfo(timezone)
    local_day = day.astimezone(tz).date()
    start = day - timedelta(seconds=1)  # `day` is local midnight, which may itself fire
    seq = [t for t in sched.next_n(start, 1600) if t.astimezone(tz).date() == local_day]
    assert len(seq) == expected_count
    assert all(a < b for a, b in itertools.pairwise(seq))
    walls = [t.astimezone(tz).replace(tzinfo=None, fold=0) for t in seq]
    assert len(set(walls)) == len(walls)
    # Any query time, including ones inside the gap/fold, gets the first listed time after it.
    fresh = parse_schedule(spec, timezone=timezone)  # fresh: no memo carried over from the walk
    for minutes in range(0, 25 * 60, 7):
        q = start + timedelta(minutes=minutes, seconds=13)
        if q < seq[-1]:
            assert fresh.next_after(q) == min(t for t in seq if t > q)


# --- general contract --------------------------------------------------------------------------


def test_next_after_is_strictly_after_and_utc() -> None:
    sched = parse_schedule("* * * * * *", timezone="Asia/Tokyo")
    after = utc(2024, 1, 1, 10) + timedelta(milliseconds=500)
    got = sched.next_after(after)
    assert got == utc(2024, 1, 1, 10, 0, 1)
    assert got.tzinfo is UTC
    assert sched.next_after(got) == utc(2024, 1, 1, 10, 0, 2)
    # Any aware input zone works; the answer is the same instant, in UTC.
    tokyo = after.astimezone(ZoneInfo("Asia/Tokyo"))
    assert sched.next_after(tokyo) == got
    with pytest.raises(ValueError, match="timezone-aware"):
        sched.next_after(datetime(2024, 1, 1))


def test_memo_matches_fresh_computation() -> None:
    polled = parse_schedule("0 30 9 * * 1-5", timezone=NY)
    for i in range(0, 20 * 24 * 60, 37):  # poll every 37 min for 20 days, crossing DST
        q = utc(2024, 3, 1) + timedelta(minutes=i)
        assert polled.next_after(q) == parse_schedule("0 30 9 * * 1-5", timezone=NY).next_after(q)


def test_thread_safety() -> None:
    sched = parse_schedule("0 30 9 * * 1-5", timezone=BERLIN)
    starts = [utc(2024, 1, 1) + timedelta(hours=13 * i) for i in range(60)]
    expected = [parse_schedule("0 30 9 * * 1-5", timezone=BERLIN).next_after(s) for s in starts]
    errors: list[int] = []

    def worker(offset: int) -> None:
        for k in range(len(starts)):
            i = (k + offset) % len(starts)
            if sched.next_after(starts[i]) != expected[i]:
                errors.append(i)

    threads = [threading.Thread(target=worker, args=(n * 7,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_schedule_attributes() -> None:
    sched = parse_schedule("  TZ=Europe/Berlin 0 0 9 * * *  ", timezone="Asia/Tokyo")
    assert isinstance(sched, Schedule)
    assert sched.spec == "  TZ=Europe/Berlin 0 0 9 * * *  "
    assert (sched.kind, sched.tz) == ("cron", ZoneInfo("Europe/Berlin"))
    assert "Europe/Berlin" in repr(sched)


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "timezone", "message"),
    [
        ("", "", r"^empty schedule$"),
        ("   ", "", r"^empty schedule$"),
        ("* * * *", "", r"expected 5 or 6 fields, got 4: '\* \* \* \*'"),
        ("* * * * * * *", "", r"expected 5 or 6 fields, got 7"),
        ("61 * * * * *", "", r"invalid second field '61'.*61 is out of range 0-59"),
        ("0 60 * * * *", "", r"invalid minute field '60'.*out of range 0-59"),
        ("0 0 24 * * *", "", r"invalid hour field '24'.*out of range 0-23"),
        ("0 0 0 0 * *", "", r"invalid day-of-month field '0'.*out of range 1-31"),
        ("0 0 0 1 13 *", "", r"invalid month field '13'.*out of range 1-12"),
        ("0 0 0 * * 8", "", r"invalid day-of-week field '8'.*out of range 0-7"),
        ("0 0 0 1 FOO *", "", r"invalid month field 'FOO'.*unknown month 'FOO' \(use JAN-DEC or 1-12\)"),
        ("0 0 0 * * FUN", "", r"unknown day 'FUN' \(use SUN-SAT or 0-7\)"),
        ("0 0 0 1 MON *", "", r"unknown month 'MON'"),
        ("0 0 0 * JAN-DEC FRI-MON", "", r"range 'FRI-MON' runs backwards"),
        ("x * * * * *", "", r"invalid second field 'x'.*'x' is not a number"),
        ("*/0 * * * * *", "", r"step '0' must be a positive integer"),
        ("1,,2 * * * * *", "", r"empty value"),
        ("? * * * * *", "", r"'\?' is only allowed in day-of-month and day-of-week"),
        ("L * * * *", "", r"'L' is not a number"),
        ("0 0 0 30 2 *", "", r"day-of-month \[30\] never occurs in month\(s\) \[2\]"),
        ("0 0 0 31 4,6 *", "", r"never occurs"),
        ("TZ=Mars/Olympus * * * * *", "", r"unknown time zone 'Mars/Olympus'"),
        ("CRON_TZ= * * * * *", "", r"missing time zone name"),
        ("TZ=Europe/Berlin", "", r"missing schedule after the time zone"),
        ("* * * * *", "Nowhere/Special", r"unknown time zone 'Nowhere/Special'"),
        ("@daily", "Nowhere/Special", r"unknown time zone 'Nowhere/Special'"),
        ("@every 0s", "", r"@every duration '0s' is shorter than the 1s minimum"),
        ("@every 500ms", "", r"shorter than the 1s minimum"),
        ("@every 999ms", "", r"shorter than the 1s minimum"),
        ("@every abc", "", r"invalid duration 'abc' in @every"),
        ("@every -1s", "", r"invalid duration '-1s'"),
        ("@every 1d", "", r"invalid duration '1d'"),
        ("@every 10", "", r"invalid duration '10'"),
        ("@every", "", r"missing duration after @every"),
        ("@every 3000000h", "", r"too large"),
        ("@at notadate", "", r"failed to parse date in @at 'notadate'"),
        ("@at 2024-02-30T10:00:00Z", "", r"failed to parse date in @at '2024-02-30T10:00:00Z'"),
        ("@at 2024-05-01", "", r"failed to parse date in @at"),
        ("@at", "", r"failed to parse date in @at"),
        ("@fortnightly", "", r"unknown descriptor '@fortnightly'"),
        ("@daily now", "", r"unexpected text 'now' after @daily"),
        ("@manually 5", "", r"unexpected text"),
    ],
)
def test_errors(spec: str, timezone: str, message: str) -> None:
    with pytest.raises(ScheduleError, match=message):
        parse_schedule(spec, timezone=timezone)


def test_schedule_error_is_a_value_error() -> None:
    assert issubclass(ScheduleError, ValueError)
