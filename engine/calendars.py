"""Business-hours calendars: is it open, closed or a holiday at a given instant?

Theory of operation
-------------------
A calendar is one IANA time zone, weekly opening hours, holidays and extra
closures (``[[calendars]]`` in a rules file).  It answers one question,
:meth:`Calendar.status`, for an event time (epoch seconds), in the order the
contact-centre products use (Genesys schedule groups, Amazon Connect):

1. **Holiday** — the local date falls in one of ``holidays``;
2. **Closed** — the local date falls in one of ``closed`` (a one-off closure:
   an inventory day, a strike);
3. **Open** — the local time of day falls in one of the weekday's ``hours``;
4. otherwise **closed**.

Everything is local to the calendar's own zone, converted with :mod:`zoneinfo`
from the event time, so a DST change moves opening hours with the wall clock
(09:00 is 09:00 in summer and in winter) and a time that a spring-forward gap
skips simply never happens.  Ranges never wrap around midnight: an overnight
shift is two ranges on two days (``mon = ["22:00-24:00"]``,
``tue = ["00:00-06:00"]``); an inverted range is an error, not a guess, as are
overlapping ranges (they are always a typo in one of them).

Pure: no clock is read; the zone object is built by the caller (reading the
zone database is I/O, done once when the rules file is loaded).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, tzinfo

#: Weekday keys, Monday first (``datetime.weekday()`` order).
DAYS: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
STATUSES = ("open", "closed", "holiday")

_RANGE = re.compile(r"^(\d{2}):(\d{2})-(\d{2}):(\d{2})$")


class CalendarError(ValueError):
    """A calendar definition is wrong; ``field`` names the key, ``str()`` says what to fix."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class Calendar:
    """One named calendar, validated (build it with :func:`build`)."""

    name: str
    zone: tzinfo
    #: per weekday (0 = Monday): sorted, disjoint (start, end) minutes of the day
    hours: tuple[tuple[tuple[int, int], ...], ...]
    #: sorted, disjoint inclusive date ranges
    holidays: tuple[tuple[date, date], ...] = ()
    closed: tuple[tuple[date, date], ...] = ()

    def local(self, at: float) -> datetime:
        """Event time → wall-clock time in the calendar's zone."""
        return datetime.fromtimestamp(at, UTC).astimezone(self.zone)

    def status(self, at: float) -> str:
        """``holiday``, ``closed`` or ``open`` at event time ``at`` (see the module docstring)."""
        now = self.local(at)
        today = now.date()
        if _within(today, self.holidays):
            return "holiday"
        if _within(today, self.closed):
            return "closed"
        minute = now.hour * 60 + now.minute
        for start, end in self.hours[now.weekday()]:
            if start <= minute < end:
                return "open"
        return "closed"


def _within(day: date, ranges: Sequence[tuple[date, date]]) -> bool:
    return any(first <= day <= last for first, last in ranges)


def parse_range(text: str) -> tuple[int, int]:
    """``"09:00-17:30"`` → minutes (540, 1050); ``24:00`` ends a day.  ValueError says why not."""
    match = _RANGE.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a range like '09:00-17:30'")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if h1 > 23 or m1 > 59 or h2 > 24 or m2 > 59 or (h2 == 24 and m2):
        raise ValueError(f"{text!r} is not a time of day (00:00 to 24:00)")
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if end <= start:
        raise ValueError(
            f"{text!r} ends before it starts; split a range over midnight into two days (… -24:00, 00:00- …)"
        )
    return start, end


def parse_dates(text: str) -> tuple[date, date]:
    """``"2025-12-25"`` or ``"2025-12-24..2025-12-26"`` (inclusive) → (first, last)."""
    first_text, sep, last_text = text.partition("..")
    try:
        first = date.fromisoformat(first_text.strip())
        last = date.fromisoformat(last_text.strip()) if sep else first
    except ValueError:
        raise ValueError(
            f"{text!r} is not a date (2025-12-25) or a date range (2025-12-24..2025-12-26)"
        ) from None
    if last < first:
        raise ValueError(f"{text!r} ends before it starts")
    return first, last


def _disjoint(items: Sequence[tuple[int, int]] | Sequence[tuple[date, date]], texts: Sequence[str]) -> None:
    """Raise ValueError naming two ranges that overlap (times are half-open, dates inclusive)."""
    order = sorted(range(len(items)), key=lambda i: items[i][0])
    for a, b in itertools.pairwise(order):
        end, start = items[a][1], items[b][0]
        overlap = start <= end if isinstance(end, date) else start < end  # type: ignore[operator]
        if overlap:
            raise ValueError(f"{texts[a]!r} and {texts[b]!r} overlap")


def build(
    name: str,
    zone: tzinfo,
    hours: Mapping[str, Sequence[str]],
    holidays: Sequence[str] = (),
    closed: Sequence[str] = (),
) -> Calendar:
    """A validated :class:`Calendar`; :class:`CalendarError` names the field and the problem."""
    unknown = sorted(set(hours) - set(DAYS))
    if unknown:
        raise CalendarError("hours", f"unknown day {unknown[0]!r} (use {', '.join(DAYS)})")
    week: list[tuple[tuple[int, int], ...]] = []
    for day in DAYS:
        texts = list(hours.get(day, ()))
        try:
            ranges = [parse_range(text) for text in texts]
            _disjoint(ranges, texts)
        except ValueError as exc:
            raise CalendarError(f"hours.{day}", str(exc)) from None
        week.append(tuple(sorted(ranges)))
    spans: dict[str, tuple[tuple[date, date], ...]] = {}
    for field, texts in (("holidays", list(holidays)), ("closed", list(closed))):
        try:
            ranges_d = [parse_dates(text) for text in texts]
            _disjoint(ranges_d, texts)
        except ValueError as exc:
            raise CalendarError(field, str(exc)) from None
        spans[field] = tuple(sorted(ranges_d))
    return Calendar(name, zone, tuple(week), spans["holidays"], spans["closed"])
