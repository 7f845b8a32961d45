"""Due times: daylight-saving changes, long outages, validation messages, missed-run plans."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from itertools import islice

import pytest

from pipeline.schedule.cron import CronError, check_cron, due_window, iter_due, parse_timezone, to_utc
from pipeline.schedule.policy import backoff, plan

UTC = timezone.utc


def local(instants, tz):
    return [t.astimezone(parse_timezone(tz)).strftime("%m-%d %H:%M %Z") for t in instants]


@pytest.mark.parametrize("tz, spring, autumn", [
    ("Europe/Berlin", datetime(2024, 3, 29, tzinfo=UTC), datetime(2024, 10, 25, tzinfo=UTC)),
    ("America/New_York", datetime(2024, 3, 8, 12, tzinfo=UTC), datetime(2024, 11, 1, 12, tzinfo=UTC)),
])
def test_daily_0230_fires_once_a_day_across_both_dst_changes(tz, spring, autumn):
    zone = parse_timezone(tz)
    around_spring = list(islice(iter_due("30 2 * * *", zone, spring), 4))
    around_autumn = list(islice(iter_due("30 2 * * *", zone, autumn), 4))
    if tz == "Europe/Berlin":
        # 31 March: 02:30 does not exist -> fires when the gap ends, 03:00 CEST (01:00 UTC).
        assert local(around_spring, tz) == ["03-29 02:30 CET", "03-30 02:30 CET", "03-31 03:00 CEST",
                                            "04-01 02:30 CEST"]
        assert around_spring[2] == datetime(2024, 3, 31, 1, 0, tzinfo=UTC)
        # 27 October: 02:30 happens twice -> fires once, at the first (CEST) one.
        assert local(around_autumn, tz) == ["10-25 02:30 CEST", "10-26 02:30 CEST", "10-27 02:30 CEST",
                                            "10-28 02:30 CET"]
    else:
        assert local(around_spring, tz) == ["03-09 02:30 EST", "03-10 03:00 EDT", "03-11 02:30 EDT",
                                            "03-12 02:30 EDT"]
        assert local(around_autumn, tz) == ["11-02 02:30 EDT", "11-03 02:30 EST", "11-04 02:30 EST",
                                            "11-05 02:30 EST"]
    for seq in (around_spring, around_autumn):  # one fire per calendar day, strictly increasing
        assert all(b - a >= timedelta(hours=22) for a, b in zip(seq, seq[1:]))


def test_hourly_fires_each_wall_clock_hour_once_on_dst_days():
    zone = parse_timezone("Europe/Berlin")
    spring = due_window("0 * * * *", zone, datetime(2024, 3, 30, 23, 0, tzinfo=UTC) - timedelta(seconds=1),
                        datetime(2024, 3, 31, 22, 0, tzinfo=UTC) - timedelta(seconds=1))
    autumn = due_window("0 * * * *", zone, datetime(2024, 10, 26, 22, 0, tzinfo=UTC) - timedelta(seconds=1),
                        datetime(2024, 10, 27, 23, 0, tzinfo=UTC) - timedelta(seconds=1))
    assert spring.count == 23  # local midnight to midnight: the 02:00 hour does not exist
    assert autumn.count == 24  # 25 real hours; the repeated 02:00 fires once
    assert due_window("0 * * * *", UTC, datetime(2024, 10, 26, 22, 59, tzinfo=UTC),
                      datetime(2024, 10, 27, 22, 59, tzinfo=UTC)).count == 24


def test_to_utc_places_gap_times_at_the_end_of_the_gap_and_repeated_times_at_the_first():
    zone = parse_timezone("Europe/Berlin")
    assert to_utc(datetime(2024, 3, 31, 2, 0), zone) == datetime(2024, 3, 31, 1, 0, tzinfo=UTC)
    assert to_utc(datetime(2024, 3, 31, 2, 59), zone) == datetime(2024, 3, 31, 1, 0, tzinfo=UTC)
    assert to_utc(datetime(2024, 10, 27, 2, 30), zone) == datetime(2024, 10, 27, 0, 30, tzinfo=UTC)


def test_due_window_counts_and_caps_a_long_outage():
    after = datetime(2024, 1, 1, tzinfo=UTC)
    w = due_window("0 3 * * *", UTC, after, datetime(2024, 1, 10, 12, tzinfo=UTC))
    assert (w.count, w.first.day, w.latest.day, w.capped) == (10, 1, 10, False)
    assert due_window("0 3 * * *", UTC, after, datetime(2024, 1, 1, 2, 59, tzinfo=UTC)) is None
    big = due_window("* * * * *", UTC, after, datetime(2024, 3, 1, 0, 0, 30, tzinfo=UTC))
    assert big.capped and big.count == 1000 and big.latest == datetime(2024, 3, 1, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize("expr, tz, message", [
    ("0 3 * *", "UTC", "has 4 field(s); expected 5"),
    ("0 3 * * * *", "UTC", "has 6 field(s)"),
    ("61 3 * * *", "UTC", "is not valid"),
    ("0 0 30 2 *", "UTC", "never fires"),
    ("0 3 * * *", "Europe/Berln", "unknown time zone 'Europe/Berln' (did you mean Europe/Berlin"),
    ("0 3 * * *", "CEST+2", "unknown time zone"),
])
def test_bad_cron_or_time_zone_is_named(expr, tz, message):
    with pytest.raises(CronError, match=None) as e:
        check_cron(expr, tz)
    assert message in str(e.value)


def test_valid_expressions_pass():
    for expr in ("0 3 * * *", "*/15 * * * *", "0 3 * * mon-fri", "@daily"):
        check_cron(expr, "Europe/Berlin")


def test_missed_plans():
    now = datetime(2024, 6, 6, 9, 0, tzinfo=UTC)
    w = due_window("0 3 * * *", UTC, datetime(2024, 6, 3, 2, tzinfo=UTC), now)
    skip = plan(w, now, "skip", timedelta(minutes=10))
    once = plan(w, now, "run_once", timedelta(minutes=10))
    assert not skip.fire and skip.due == datetime(2024, 6, 6, 3, tzinfo=UTC) and "missed=skip" in skip.reason
    assert once.fire and once.due == skip.due and "3 earlier due time(s)" in once.reason
    on_time = plan(w, datetime(2024, 6, 6, 3, 5, tzinfo=UTC), "skip", timedelta(minutes=10))
    assert on_time.fire and "3 earlier" in on_time.reason


def test_backoff_doubles_and_is_capped():
    assert [int(backoff(a).total_seconds()) for a in (1, 2, 3, 10)] == [30, 60, 120, 1800]
