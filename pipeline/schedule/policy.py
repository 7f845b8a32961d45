"""Schedule policies as plain functions: which due time fires after an outage, and how long to wait before a retry.

Missed runs. A pass sees every due time in (cursor, now]. Only the latest of them can fire; the earlier ones are
missed whatever the policy (they are counted in the recorded reason, not fired one by one). The latest one is
*on time* when the pass sees it within ``grace`` seconds of its due time:

- ``skip``: an on-time due time fires; a late one is recorded as skipped (missed). After an outage nothing fires
  until the next regular due time.
- ``run_once``: the latest due time fires even when late: one catch-up run, however many were missed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from pipeline.schedule.cron import DueWindow

CONCURRENCY = ("forbid", "allow", "replace")
MISSED = ("skip", "run_once")
TRIGGERS = ("always", "data-changed")

# Defaults of a new schedule (`mmpipe schedule add`)
DEFAULT_CONCURRENCY = "forbid"
DEFAULT_MISSED = "skip"
DEFAULT_TRIGGER = "always"
DEFAULT_RETRIES = 2  # extra attempts when a run cannot be started or vanished
DEFAULT_GRACE_S = 600  # seconds after its due time a run still counts as on time

BACKOFF_BASE = timedelta(seconds=30)
BACKOFF_CAP = timedelta(minutes=30)


@dataclass(frozen=True)
class Plan:
    due: datetime  # the due time this pass records (the latest in the window)
    fire: bool
    reason: str | None


def _ago(d: timedelta) -> str:
    s = int(d.total_seconds())
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def plan(window: DueWindow, now: datetime, missed: str, grace: timedelta) -> Plan:
    late = now - window.latest
    earlier = window.count - 1
    note = (f"{'at least ' if window.capped else ''}{earlier} earlier due time(s) since "
            f"{window.first.isoformat(timespec='minutes')} missed" if earlier else "")
    if late <= grace:
        return Plan(window.latest, True, note or None)
    if missed == "run_once":
        return Plan(window.latest, True, f"late by {_ago(late)}: one catch-up run (missed=run_once)"
                                         + (f"; {note}" if note else ""))
    return Plan(window.latest, False, f"missed: seen {_ago(late)} after its due time, past the grace of "
                                      f"{_ago(grace)} (missed=skip)" + (f"; {note}" if note else ""))


def backoff(attempt: int) -> timedelta:
    """Wait before attempt ``attempt + 1``: 30 s, 1 min, 2 min, … capped at 30 min."""
    return min(BACKOFF_BASE * 2 ** (attempt - 1), BACKOFF_CAP)
