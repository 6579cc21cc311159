"""Cron schedules (``DUCC_SYNC_SCHEDULE``, ``DUCC_GC_SCHEDULE``) read as Celery beat reads them, and when
one runs next, in UTC.

Pure, so that the status page can say when the next wishlist sync runs without loading Celery; beat
itself runs Celery's ``crontab`` (``ducc.service.broker.parse_cron``), and
``tests/unit/test_schedule.py`` holds this reading to Celery's, expression by expression. Celery's reading
differs from cron(5) where it matters here:

- a day must match both the day of the month and the day of the week (cron(5) takes either when both
  are restricted);
- the day of the week runs 0–6 from Sunday (7 is refused); names (``mon``, ``january``: their first three
  letters) are accepted in every field and stand for their number;
- a range may wrap (``fri-mon``), a step applies to a range or ``*`` only (``5/10`` is refused);
- a day of the month that no chosen month has (``31 2``) is refused.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
LONGEST_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # February of a leap year
CYCLE_YEARS = 400  # the Gregorian calendar repeats: a day not found within it never comes

_RANGE = re.compile(r"(\w+?)-(\w+)")
_RANGE_STEP = re.compile(r"(\w+?)-(\w+)/(\w+)?")
_STAR_STEP = re.compile(r"\*/(\w+)?")


@dataclass(frozen=True)
class Schedule:
    """A five-field cron expression, each field the set of values it allows."""

    minutes: frozenset[int]
    hours: frozenset[int]
    days_of_month: frozenset[int]
    months: frozenset[int]
    days_of_week: frozenset[int]  # 0 is Sunday

    @classmethod
    def parse(cls, expression: str, name: str = "DUCC_SYNC_SCHEDULE") -> Schedule:
        """The schedule ``expression``; a ValueError naming the setting ``name`` if it is not one."""
        fields = expression.split()
        if len(fields) != 5:
            raise ValueError(f"{name} {expression!r} is not a 5-field cron expression")
        minute, hour, day_of_month, month, day_of_week = fields
        try:
            schedule = cls(_field(minute, 0, 59), _field(hour, 0, 23), _field(day_of_month, 1, 31),
                           _field(month, 1, 12), _field(day_of_week, 0, 6))
        except ValueError as exc:
            raise ValueError(f"{name} {expression!r} is not a valid cron expression: {exc}") from exc
        if not any(day <= LONGEST_MONTH[m - 1] for m in schedule.months for day in schedule.days_of_month):
            raise ValueError(f"{name} {expression!r} is not a valid cron expression: day of the month "
                             f"{day_of_month!r} never occurs in month {month!r}")
        return schedule

    def next_after(self, now: datetime) -> datetime:
        """The first minute after ``now``'s (aware; the answer is in UTC) that the schedule names."""
        at = now.astimezone(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
        for day in self._days(at.date()):
            earliest = (at.hour, at.minute) if day == at.date() else (0, 0)
            found = min(((h, m) for h in self.hours for m in self.minutes if (h, m) >= earliest), default=None)
            if found is not None:
                return datetime(day.year, day.month, day.day, *found, tzinfo=UTC)
        raise ValueError(f"no day within {CYCLE_YEARS} years matches the schedule")

    def _days(self, first: date) -> Iterator[date]:
        """The days from ``first`` on (for one Gregorian cycle) that the month, the day of the month and the
        day of the week all name."""
        for index in range(first.year * 12 + first.month - 1, (first.year + CYCLE_YEARS) * 12 + first.month):
            year, month = index // 12, index % 12 + 1
            if month not in self.months:
                continue
            start = first.day if (year, month) == (first.year, first.month) else 1
            for day in range(start, calendar.monthrange(year, month)[1] + 1):
                if day in self.days_of_month and (date(year, month, day).weekday() + 1) % 7 in self.days_of_week:
                    yield date(year, month, day)


def next_sync(expression: str, now: datetime, name: str = "DUCC_SYNC_SCHEDULE") -> datetime:
    """When beat runs the schedule ``expression`` next after ``now`` (aware): in UTC, as beat reads it."""
    return Schedule.parse(expression, name).next_after(now)


def _field(spec: str, low: int, high: int) -> frozenset[int]:
    """One field: comma-separated parts, each ``*``, a value, a range ``a-b`` (wrapping past ``high`` when
    ``b < a``), optionally with ``/step`` after ``*`` or a range."""
    values: set[int] = set()
    for part in spec.split(","):
        if not part:
            raise ValueError("empty part")
        values.update(_part(part, low, high))
    return frozenset(values)


def _part(part: str, low: int, high: int) -> list[int]:
    # Matched from the start, as Celery matches (``re.match``): what follows a match is ignored.
    if found := _RANGE_STEP.match(part):
        start, end, step = found.groups()
        return _range(start, end, low, high)[::_step(step)]
    if found := _RANGE.match(part):
        start, end = found.groups()
        return _range(start, end, low, high)
    if found := _STAR_STEP.match(part):
        return list(range(low, high + 1))[::_step(found.group(1))]
    if part == "*":
        return list(range(low, high + 1))
    return [_value(part, low, high)]


def _range(start: str, end: str, low: int, high: int) -> list[int]:
    first, last = _value(start, low, high), _value(end, low, high)
    if last < first:
        return list(range(first, high + 1)) + list(range(low, last + 1))
    return list(range(first, last + 1))


def _step(text: str | None) -> int:
    if not text:
        raise ValueError("empty step")
    step = int(text)
    if step < 1:
        raise ValueError(f"step {text!r} is not a positive number")
    return step


def _value(text: str, low: int, high: int) -> int:
    if text.startswith("-"):
        raise ValueError("negative numbers are not supported")
    try:
        value = int(text)
    except ValueError:
        abbreviation = text[:3].lower()
        if abbreviation in MONTHS:
            value = MONTHS.index(abbreviation) + 1
        elif abbreviation in DAYS:
            value = DAYS.index(abbreviation)
        else:
            raise ValueError(f"{text!r} is neither a number nor a day or month name") from None
    if not low <= value <= high:
        raise ValueError(f"{value} is outside {low}-{high}")
    return value
