"""Due times of a cron expression in a time zone, as UTC instants.

croniter iterates *wall-clock* times (naive datetimes); each wall time is then placed on the UTC time line with
zoneinfo. That makes the two daylight-saving edge cases explicit instead of croniter-version dependent:

- a wall time that does not exist (spring forward: 02:30 in Europe/Berlin on the last Sunday of March) fires once,
  at the instant the gap ends (03:00 local);
- a wall time that happens twice (fall back: 02:30 on the last Sunday of October) fires once, at its first
  occurrence. An hourly schedule therefore fires 23 times on the spring day and 24 times on the autumn day; use
  ``--timezone UTC`` where every real hour matters.

The mapping is monotone, so due times come out strictly increasing after equal instants are merged.
"""

from __future__ import annotations

import difflib
import zoneinfo
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Iterator

from croniter import CroniterError, croniter

UTC = timezone.utc


class CronError(ValueError):
    """A cron expression or time zone that cannot be used; the message says which and why."""


def parse_timezone(name: str) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        close = difflib.get_close_matches(name, zoneinfo.available_timezones(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else " (an IANA name such as Europe/Berlin or UTC)"
        raise CronError(f"unknown time zone {name!r}{hint}") from None


def check_cron(expr: str, tz: str = "UTC") -> None:
    """Raise CronError unless ``expr`` is a 5-field cron expression (or an @alias) that fires at least once."""
    expr = expr.strip()
    if not expr.startswith("@") and len(expr.split()) != 5:
        raise CronError(f"cron expression {expr!r} has {len(expr.split())} field(s); expected 5: "
                        "minute hour day-of-month month day-of-week, e.g. '0 3 * * *'")
    if not croniter.is_valid(expr):
        raise CronError(f"cron expression {expr!r} is not valid (fields: minute 0-59, hour 0-23, day-of-month 1-31, "
                        "month 1-12, day-of-week 0-6; e.g. '0 3 * * *', '*/15 * * * *', '0 3 * * mon-fri')")
    zone = parse_timezone(tz)
    try:  # e.g. "0 0 30 2 *" is well-formed but never comes
        next_due(expr, zone, datetime.now(UTC))
    except (CroniterError, ValueError) as e:  # e.g. no 30 February within croniter's search horizon
        raise CronError(f"cron expression {expr!r} never fires ({e})") from None


def to_utc(wall: datetime, tz: zoneinfo.ZoneInfo) -> datetime:
    """The UTC instant a naive local wall time stands for (first occurrence; end of the gap when it does not exist)."""
    first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if first.astimezone(tz).replace(tzinfo=None) == wall:
        return first
    # In a gap: fold=1 reads it with the new offset (an instant before the change), fold=0 with the old one (after).
    lo, hi = wall.replace(tzinfo=tz, fold=1).astimezone(UTC), first
    before = lo.astimezone(tz).utcoffset()
    while hi - lo > timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        if mid.astimezone(tz).utcoffset() == before:
            lo = mid
        else:
            hi = mid
    return hi.replace(microsecond=0)


def _walls(expr: str, tz: zoneinfo.ZoneInfo, after: datetime) -> Iterator[datetime]:
    it = croniter(expr, after.astimezone(tz).replace(tzinfo=None))
    while True:
        yield it.get_next(datetime)


def iter_due(expr: str, tz: zoneinfo.ZoneInfo, after: datetime) -> Iterator[datetime]:
    """Due instants strictly after ``after``, increasing, without repeats."""
    last = after
    for wall in _walls(expr, tz, after):
        instant = to_utc(wall, tz)
        if instant > last:
            last = instant
            yield instant


def next_due(expr: str, tz: zoneinfo.ZoneInfo, after: datetime) -> datetime:
    return next(iter_due(expr, tz, after))


@dataclass(frozen=True)
class DueWindow:
    """The due times in (after, until]: how many, the first and the latest."""
    count: int
    first: datetime
    latest: datetime
    capped: bool = False  # count stopped at the limit: "at least count"


def due_window(expr: str, tz: zoneinfo.ZoneInfo, after: datetime, until: datetime,
               limit: int = 1000) -> DueWindow | None:
    first = latest = None
    count = 0
    for instant in iter_due(expr, tz, after):
        if instant > until:
            break
        first = first or instant
        latest, count = instant, count + 1
        if count >= limit:  # a long outage of a frequent schedule: find the latest directly, don't walk to it
            prev = croniter(expr, until.astimezone(tz).replace(tzinfo=None) + timedelta(seconds=1))
            return DueWindow(count, first, max(latest, to_utc(prev.get_prev(datetime), tz)), capped=True)
    return DueWindow(count, first, latest) if count else None
