"""Job schedules: parse a Dkron-style spec once, then answer "when does it fire next?" fast.

Forms (all accept a leading ``TZ=Area/City`` or ``CRON_TZ=Area/City`` that overrides the job zone):

* cron, 6 fields seconds first (``sec min hour dom month dow``, Dkron's form) or 5 fields (seconds = 0);
* descriptors ``@yearly @annually @monthly @weekly @daily @midnight @hourly @minutely``;
* ``@every <go duration>`` (>= 1s), ticks aligned to the Unix epoch at the zone's standard offset;
* ``@at <RFC3339>`` one-shot, and ``@manually`` (never fires by itself).

Cron times are computed on the zone's wall clock and then mapped to UTC. A wall time that does not
exist (spring-forward gap) fires once, at the instant the clock jumps past it; a wall time that
occurs twice (fall-back) fires only at its first occurrence. The job zone defaults to UTC, never
the server's local zone, so every node of a cluster computes identical fire times.
"""

from __future__ import annotations

import functools
import re
import threading
from datetime import UTC, datetime, timedelta
from decimal import ROUND_FLOOR, Decimal, InvalidOperation
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from croniter.croniter import CroniterError

__all__ = ["Schedule", "ScheduleError", "parse_schedule", "validate_timezone"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_SECOND = timedelta(seconds=1)
# Only a pathological zone (two backward jumps within one search) can make a candidate land at or
# before `after`; the bound keeps such a zone from turning into an endless loop.
_MAX_STEPS = 64

# (name, min, max) per field, in the 6-field seconds-first order. Day-of-week accepts 7 (= Sunday).
_FIELDS = (
    ("second", 0, 59),
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day-of-month", 1, 31),
    ("month", 1, 12),
    ("day-of-week", 0, 7),
)
# Dkron's `~` hash: value = sum(ord(c)) % modulus + offset, per field. Keeping Dkron's formula means a
# job moved from Go Dkron keeps its fire times.
_HASH = ((60, 0), (60, 0), (24, 0), (28, 1), (12, 1), (7, 0))
_MONTH_NAMES = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_MONTHS = {n: i for i, n in enumerate(_MONTH_NAMES, 1)}
_DAYS = {n: i for i, n in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"))}
_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # Feb 29 counts: it does occur
_DOW, _DOM = 5, 3

_DESCRIPTORS = {
    "@yearly": "0 0 0 1 1 *",
    "@annually": "0 0 0 1 1 *",
    "@monthly": "0 0 0 1 * *",
    "@weekly": "0 0 0 * * 0",
    "@daily": "0 0 0 * * *",
    "@midnight": "0 0 0 * * *",
    "@hourly": "0 0 * * * *",
    "@minutely": "0 * * * * *",
}
_TZ_PREFIX = re.compile(r"(?:CRON_)?TZ=(\S*)(.*)", re.DOTALL)
_DURATION = re.compile(r"(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ms|h|m|s))+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|h|m|s)")
_UNIT_US = {"h": 3_600_000_000, "m": 60_000_000, "s": 1_000_000, "ms": 1_000}
_MAX_DURATION_US = (2**63 - 1) // 1000  # Go's time.Duration limit, so specs stay portable
_AT = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:[Zz]|[+-]\d{2}:\d{2})?")


class ScheduleError(ValueError):
    """A schedule spec or time zone is invalid; the message says what to fix."""


def validate_timezone(name: str) -> ZoneInfo:
    """Return the zone called `name`; "" means UTC (not server-local: the cluster must agree)."""
    if not name:
        return ZoneInfo("UTC")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # ValueError: paths such as "../x"
        raise ScheduleError(f"unknown time zone {name!r}") from None


def _transition(tz: ZoneInfo, lo: datetime, hi: datetime) -> datetime:
    """First whole second in (lo, hi] whose UTC offset in `tz` equals that of `hi`.

    zoneinfo does not expose its transition table, so bisect; this only runs for wall times inside
    a DST gap or fold, i.e. a few times a year per job, and takes ~12 steps for a one-hour change.
    """
    target = hi.astimezone(tz).utcoffset()
    lo_s, hi_s = (lo - _EPOCH) // _SECOND, -((_EPOCH - hi) // _SECOND)
    while hi_s - lo_s > 1:
        mid = (lo_s + hi_s) // 2
        if datetime.fromtimestamp(mid, tz).utcoffset() == target:
            hi_s = mid
        else:
            lo_s = mid
    return _EPOCH + timedelta(seconds=hi_s)


def _local_to_utc(wall: datetime, tz: ZoneInfo) -> datetime:
    """Map a naive wall time in `tz` to the UTC instant it fires at (see module docstring)."""
    off0 = wall.replace(tzinfo=tz, fold=0).utcoffset()
    off1 = wall.replace(tzinfo=tz, fold=1).utcoffset()
    assert off0 is not None and off1 is not None
    if off0 >= off1:  # normal time, or a repeated one where fold=0 is its first occurrence
        return (wall - off0).replace(tzinfo=UTC)
    # Spring-forward gap (the clock jumps from old to new offset, new > old): wall - off1 lies
    # before the jump and wall - off0 after it; fire at the jump, the first instant after the gap.
    return _transition(tz, (wall - off1).replace(tzinfo=UTC), (wall - off0).replace(tzinfo=UTC))


def _parse_field(text: str, idx: int, job_hash: int, spec: str) -> tuple[set[int], bool]:
    """Expand one cron field into its set of values; the flag is True when it is `*`/`?`.

    The flag matters for day-of-month/day-of-week: as in cron (and Dkron), they are OR-ed only when
    both are restricted, and a field written `*` or `?` is unrestricted even though it matches all.
    """
    name, lo, hi = _FIELDS[idx]
    top = 6 if idx == _DOW else hi  # implied range ends stop at Saturday so 7 never doubles Sunday

    def fail(why: str) -> ScheduleError:
        return ScheduleError(f"invalid {name} field {text!r} in {spec!r}: {why}")

    def value(tok: str) -> int:
        if tok.isdigit():
            v = int(tok)
            if not lo <= v <= hi:
                raise fail(f"{v} is out of range {lo}-{hi}")
            return v
        names = _MONTHS if idx == 4 else _DAYS if idx == _DOW else {}
        if tok.upper() in names:
            return names[tok.upper()]
        if idx == 4:
            raise fail(f"unknown month {tok!r} (use JAN-DEC or 1-12)")
        if idx == _DOW:
            raise fail(f"unknown day {tok!r} (use SUN-SAT or 0-7)")
        raise fail(f"{tok!r} is not a number" if tok else "empty value")

    values: set[int] = set()
    for item in text.split(","):
        base, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise fail(f"step {step_text!r} must be a positive integer")
            step = int(step_text)
        if base in ("*", "?"):
            if base == "?" and idx not in (_DOM, _DOW):
                raise fail("'?' is only allowed in day-of-month and day-of-week")
            start, end = lo, top
        elif base in ("~", "H"):
            modulus, offset = _HASH[idx]
            if not slash:
                values.add(job_hash % modulus + offset)
                continue
            # `H/15`: a hashed start within the first step, then every step (Jenkins' meaning).
            start, end = lo + job_hash % step, top
            if start > end:
                raise fail(f"step {step} is larger than the field's range {lo}-{top}")
        else:
            first, dash, last = base.partition("-")
            start = value(first)
            end = value(last) if dash else (top if slash else start)
            if start > end:
                raise fail(f"range {base!r} runs backwards; write it as two ranges joined by ','")
        values.update(range(start, end + 1, step))
    if idx == _DOW and 7 in values:
        values.discard(7)
        values.add(0)
    return values, text in ("*", "?", "*/1", "?/1")


def _parse_cron(fields: list[str], job_name: str, spec: str) -> croniter:
    if len(fields) == 5:
        fields = ["0", *fields]
    elif len(fields) != 6:
        raise ScheduleError(f"expected 5 or 6 fields, got {len(fields)}: {spec!r}")
    job_hash = sum(ord(c) for c in job_name)
    parsed = [_parse_field(text, i, job_hash, spec) for i, text in enumerate(fields)]
    out = []
    for i, (values, star) in enumerate(parsed):
        full = len(values) == _FIELDS[i][2] - _FIELDS[i][1] + 1 - (i == _DOW)
        # Only a literal `*`/`?` may become "*" in dom/dow: croniter (like cron) treats "*" as
        # "unrestricted" there, which decides between AND and OR of the two day fields.
        unrestricted = star if i in (_DOM, _DOW) else (star or full)
        out.append("*" if unrestricted else ",".join(map(str, sorted(values))))
    (doms, dom_star), (months, _), (_, dow_star) = parsed[_DOM], parsed[4], parsed[_DOW]
    if not dom_star and dow_star and min(doms) > max(_MONTH_DAYS[m - 1] for m in months):
        # Without this, croniter would search 50 years per call before giving up.
        raise ScheduleError(f"day-of-month {sorted(doms)} never occurs in month(s) {sorted(months)}: {spec!r}")
    # croniter wants seconds LAST when given 6 fields; we parse seconds first, like Dkron.
    expr = " ".join(out[1:] + out[:1])
    try:
        return croniter(expr, datetime(2000, 1, 1))
    except CroniterError as exc:  # should not happen: every field was normalised above
        raise ScheduleError(f"invalid cron expression {spec!r}: {exc}") from None


def _parse_duration(text: str) -> int:
    """Go-style duration ("1h30m", "1.5h", "1s500ms") in whole microseconds."""
    if not text:
        raise ScheduleError("missing duration after @every, e.g. '@every 1h30m'")
    if not _DURATION.fullmatch(text):
        raise ScheduleError(f"invalid duration {text!r} in @every: use h, m, s, ms units, e.g. '1h30m' or '1.5h'")
    try:
        total = sum(Decimal(num) * _UNIT_US[unit] for num, unit in _DURATION_PART.findall(text))
    except InvalidOperation:
        raise ScheduleError(f"invalid duration {text!r} in @every") from None
    us = int(total.to_integral_value(rounding=ROUND_FLOOR))
    if us < 1_000_000:
        raise ScheduleError(f"@every duration {text!r} is shorter than the 1s minimum")
    if us > _MAX_DURATION_US:
        raise ScheduleError(f"@every duration {text!r} is too large")
    return us


def _parse_at(text: str, tz: ZoneInfo) -> datetime:
    if not _AT.fullmatch(text):
        raise ScheduleError(f"failed to parse date in @at {text!r}: expected RFC3339 like 2024-05-01T10:00:00Z")
    norm = text.replace("t", "T").replace("z", "+00:00").replace("Z", "+00:00")
    norm = re.sub(r"(\.\d{6})\d+", r"\1", norm)  # fromisoformat takes at most microseconds
    try:
        when = datetime.fromisoformat(norm)
    except ValueError as exc:
        raise ScheduleError(f"failed to parse date in @at {text!r}: {exc}") from None
    if when.tzinfo is None:  # no offset: a wall time in the job's zone, gap/fold rules included
        return _local_to_utc(when, tz)
    return when.astimezone(UTC)


class Schedule:
    """A parsed schedule. Build with :func:`parse_schedule`; safe to share between threads."""

    __slots__ = ("_at", "_cron", "_interval_us", "_lock", "_memo", "kind", "spec", "tz")

    def __init__(
        self,
        spec: str,
        kind: str,
        tz: ZoneInfo,
        *,
        cron: croniter | None = None,
        interval_us: int = 0,
        at: datetime | None = None,
    ) -> None:
        self.spec = spec
        self.kind = kind
        self.tz = tz
        self._cron = cron
        self._interval_us = interval_us
        self._at = at
        self._lock = threading.Lock()  # croniter keeps its position in the object
        # (after, result): result is the answer for every `after` in [after, result), because no
        # fire time lies strictly between them. Lets repeated polling skip croniter entirely.
        self._memo: tuple[datetime, datetime] | None = None

    def __repr__(self) -> str:
        return f"Schedule({self.spec!r}, kind={self.kind!r}, tz={self.tz.key!r})"

    def interval(self) -> float | None:
        """Seconds between ticks for "every" schedules, else None."""
        return self._interval_us / 1e6 if self.kind == "every" else None

    def next_after(self, after: datetime) -> datetime | None:
        """First fire time strictly after the aware datetime `after`, in UTC; None means never."""
        if after.tzinfo is None:
            raise ValueError("next_after needs a timezone-aware datetime")
        after = after.astimezone(UTC)
        kind = self.kind
        if kind == "cron":
            memo = self._memo
            if memo is not None and memo[0] <= after < memo[1]:
                return memo[1]
            result = self._next_cron(after)
            if result is not None:
                self._memo = (after, result)
            return result
        if kind == "every":
            return self._next_every(after)
        if kind == "at":
            assert self._at is not None
            return self._at if self._at > after else None
        return None

    def next_n(self, after: datetime, n: int) -> list[datetime]:
        """The next `n` fire times after `after` (fewer if the schedule ends)."""
        out: list[datetime] = []
        current: datetime | None = after
        while len(out) < n:
            current = self.next_after(current)
            if current is None:
                break
            out.append(current)
        return out

    def _next_every(self, after: datetime) -> datetime | None:
        # Ticks at anchor + k*interval with anchor = 1970-01-01T00:00 at the zone's standard offset:
        # the same ticks on every leader, uniform elapsed time across DST. The standard offset is
        # read at `after` (not at parse time) so nodes that parsed in different years still agree.
        local = after.astimezone(self.tz)
        std = local.utcoffset() - (local.dst() or timedelta(0))  # type: ignore[operator]
        anchor = -(std // _US)
        interval = self._interval_us
        k = ((after - _EPOCH) // _US - anchor) // interval + 1
        try:
            return _EPOCH + timedelta(microseconds=anchor + k * interval)
        except OverflowError:  # beyond year 9999
            return None

    def _next_cron(self, after: datetime) -> datetime | None:
        tz = self.tz
        local = after.astimezone(tz)
        # croniter works on naive wall time and returns the first match strictly after `wall`;
        # matches fall on whole seconds, so dropping the microseconds keeps "strictly after" exact.
        wall = local.replace(tzinfo=None, microsecond=0, fold=0)
        if local.fold:
            old, new = local.replace(fold=0).utcoffset(), local.utcoffset()
            if old is not None and new is not None and old != new:
                # Second pass through a repeated hour: each of its wall times already fired on the
                # first pass, so resume from the end of the fold (the wall time the clock reached).
                jump = _transition(tz, after - (old - new), after)
                wall = (jump + old).replace(tzinfo=None) - _SECOND
        cron = self._cron
        assert cron is not None
        for _ in range(_MAX_STEPS):
            try:
                with self._lock:
                    nxt = cron.get_next(datetime, start_time=wall)
                result = _local_to_utc(nxt, tz)
            except (OverflowError, ValueError):  # CroniterBadDateError: no match in 50 years; year 9999
                return None
            if result > after:
                return result
            wall = nxt
        return None


@functools.lru_cache(maxsize=4096)
def parse_schedule(spec: str, *, timezone: str = "", job_name: str = "") -> Schedule:
    """Parse and validate `spec`; raise ScheduleError saying what to fix on any problem.

    `timezone` applies to every form (cron, descriptors, @every, @at without offset); a
    ``TZ=``/``CRON_TZ=`` prefix overrides it. `job_name` seeds the `~`/`H` hash fields.

    Parsed schedules are cached (a job is parsed on validation, on every write and by the
    scheduler); a Schedule is safe to share between threads.
    """
    tz = validate_timezone(timezone)
    text = spec.strip()
    if not text:
        raise ScheduleError("empty schedule")
    prefix = _TZ_PREFIX.fullmatch(text)
    if prefix:
        if not prefix[1]:
            raise ScheduleError(f"missing time zone name after 'TZ=' in {spec!r}")
        tz = validate_timezone(prefix[1])
        text = prefix[2].strip()
        if not text:
            raise ScheduleError(f"missing schedule after the time zone in {spec!r}")
    if not text.startswith("@"):
        return Schedule(spec, "cron", tz, cron=_parse_cron(text.split(), job_name, spec))
    word, *tail = text.split(None, 1)
    word, rest = word.lower(), (tail[0].strip() if tail else "")
    if word == "@every":
        return Schedule(spec, "every", tz, interval_us=_parse_duration(rest))
    if word == "@at":
        return Schedule(spec, "at", tz, at=_parse_at(rest, tz))
    if word not in _DESCRIPTORS and word != "@manually":
        known = ", ".join([*_DESCRIPTORS, "@every", "@at", "@manually"])
        raise ScheduleError(f"unknown descriptor {word!r} in {spec!r}; expected one of {known}")
    if rest:
        raise ScheduleError(f"unexpected text {rest!r} after {word} in {spec!r}")
    if word == "@manually":
        return Schedule(spec, "manual", tz)
    return Schedule(spec, "cron", tz, cron=_parse_cron(_DESCRIPTORS[word].split(), "", spec))
