"""Schedule state: one SQLite file in WAL mode (schedules, runs, leases).

Every state change is one short ``BEGIN IMMEDIATE`` transaction, so a ``kill -9`` at any point leaves either the
old or the new row, never half of one. Two guards stop a due time from firing twice: ``UNIQUE(schedule, due)`` on
runs, and the ``scheduler`` lease that only one process (serve or tick) holds at a time. The file must be on a
local disk: SQLite's locking is not reliable on network file systems.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

ENV_VAR = "MMPIPE_SCHEDULE_DB"
DEFAULT_PATH = Path("~/.mmpipe/schedule.db")

ACTIVE = ("pending", "launching", "running")  # a run that may still start or is under way
FINISHED = ("succeeded", "failed", "skipped", "stopped")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schedules (
    name        TEXT PRIMARY KEY,
    spec        TEXT NOT NULL,              -- absolute path of the job spec
    overrides   TEXT NOT NULL DEFAULT '[]', -- JSON list of --set KEY=VALUE
    cron        TEXT NOT NULL,
    timezone    TEXT NOT NULL,
    address     TEXT,                       -- Ray dashboard URL for the cluster launcher, NULL for a local subprocess
    concurrency TEXT NOT NULL CHECK (concurrency IN ('forbid', 'allow', 'replace')),
    missed      TEXT NOT NULL CHECK (missed IN ('skip', 'run_once')),
    trigger     TEXT NOT NULL CHECK (trigger IN ('always', 'data-changed')),
    retries     INTEGER NOT NULL CHECK (retries >= 0),
    grace_s     INTEGER NOT NULL CHECK (grace_s >= 0),
    runs_dir    TEXT NOT NULL,
    cwd         TEXT NOT NULL,
    paused      INTEGER NOT NULL DEFAULT 0,
    cursor      TEXT NOT NULL,              -- due times up to here have been handled (UTC ISO)
    created     TEXT NOT NULL,
    updated     TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    schedule     TEXT NOT NULL REFERENCES schedules(name) ON DELETE CASCADE,
    due          TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('pending', 'launching', 'running',
                                                 'succeeded', 'failed', 'skipped', 'stopped')),
    reason       TEXT,                      -- why skipped / missed / resumed / stopped
    claimed      TEXT NOT NULL,
    started      TEXT,
    ended        TEXT,
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_attempt TEXT,
    launched     TEXT,                      -- when the current attempt was started
    pid          INTEGER,
    job_id       TEXT,
    run_dir      TEXT,
    control_dir  TEXT,
    fingerprint  TEXT,
    forced       INTEGER NOT NULL DEFAULT 0,
    registry     TEXT,
    version      INTEGER,
    promoted     INTEGER,
    decision     TEXT,                      -- JSON: the promotion decision from run.json's outcome
    error        TEXT,
    unknown_since TEXT,                     -- when the run's status first could not be read (cluster unreachable)
    UNIQUE (schedule, due)
);
CREATE INDEX IF NOT EXISTS runs_by_status ON runs (schedule, status);
CREATE TABLE IF NOT EXISTS leases (
    name     TEXT PRIMARY KEY,
    holder   TEXT NOT NULL,
    host     TEXT NOT NULL,
    pid      INTEGER NOT NULL,
    acquired TEXT NOT NULL,
    expires  TEXT NOT NULL
);
"""


def iso(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(timezone.utc).isoformat(timespec="seconds")


def parse_iso(s: str | None) -> datetime | None:
    return None if s is None else datetime.fromisoformat(s)


def default_path() -> Path:
    return Path(os.environ.get(ENV_VAR) or DEFAULT_PATH).expanduser()


@dataclass
class Schedule:
    name: str
    spec: str
    overrides: list[str]
    cron: str
    timezone: str
    address: str | None
    concurrency: str
    missed: str
    trigger: str
    retries: int
    grace_s: int
    runs_dir: str
    cwd: str
    paused: bool
    cursor: datetime
    created: datetime
    updated: datetime

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "Schedule":
        d = dict(row)
        d["overrides"] = json.loads(d["overrides"])
        d["paused"] = bool(d["paused"])
        for k in ("cursor", "created", "updated"):
            d[k] = parse_iso(d[k])
        return cls(**d)


@dataclass
class Run:
    id: int
    schedule: str
    due: datetime
    status: str
    reason: str | None
    claimed: datetime
    started: datetime | None
    ended: datetime | None
    attempts: int
    next_attempt: datetime | None
    launched: datetime | None
    pid: int | None
    job_id: str | None
    run_dir: str | None
    control_dir: str | None
    fingerprint: str | None
    forced: bool
    registry: str | None
    version: int | None
    promoted: bool | None
    decision: dict | None
    error: str | None
    unknown_since: datetime | None = None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "Run":
        d = dict(row)
        for k in ("due", "claimed", "started", "ended", "next_attempt", "launched", "unknown_since"):
            d[k] = parse_iso(d[k])
        d["forced"] = bool(d["forced"])
        d["promoted"] = None if d["promoted"] is None else bool(d["promoted"])
        d["decision"] = None if d["decision"] is None else json.loads(d["decision"])
        return cls(**d)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: (iso(v) if isinstance(v, datetime) else v)
                for f in fields(self) for v in [getattr(self, f.name)]}


@dataclass(frozen=True)
class Lease:
    holder: str
    host: str
    pid: int
    expires: datetime


class ScheduleExists(ValueError):
    pass


class NoSuchSchedule(KeyError):
    def __str__(self) -> str:
        return f"no schedule named {self.args[0]!r} (see: mmpipe schedule list)"


class Store:
    def __init__(self, path: str | Path | None = None):
        self.path = Path(path).expanduser() if path else default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: no implicit transactions; each change is an explicit BEGIN IMMEDIATE.
        self.conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self.conn.row_factory = sqlite3.Row
        mode = self.conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise RuntimeError(f"{self.path}: SQLite could not switch to WAL mode (got {mode}); "
                               "put the schedule state on a local disk")
        self.conn.execute("PRAGMA synchronous=FULL")  # a committed fire survives a power cut, not only kill -9
        self.conn.execute("PRAGMA foreign_keys=ON")
        self.conn.execute("PRAGMA busy_timeout=30000")
        with self.tx() as c:  # executescript would commit on its own; one statement at a time stays in the tx
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    c.execute(stmt)
            columns = {r["name"] for r in c.execute("PRAGMA table_info(runs)")}
            if "unknown_since" not in columns:  # state files written before the column existed
                c.execute("ALTER TABLE runs ADD COLUMN unknown_since TEXT")

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; IMMEDIATE takes the write lock up front so read-then-write cannot interleave."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # ------------------------------------------------------------------ schedules

    def add(self, s: Schedule) -> None:
        row = {f.name: getattr(s, f.name) for f in fields(s)}
        row.update(overrides=json.dumps(s.overrides), paused=int(s.paused),
                   cursor=iso(s.cursor), created=iso(s.created), updated=iso(s.updated))
        try:
            with self.tx() as c:
                c.execute(f"INSERT INTO schedules ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                          list(row.values()))
        except sqlite3.IntegrityError:
            raise ScheduleExists(f"a schedule named {s.name!r} exists already; remove it first "
                                 f"(mmpipe schedule remove {s.name})") from None

    def get(self, name: str) -> Schedule:
        row = self.conn.execute("SELECT * FROM schedules WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NoSuchSchedule(name)
        return Schedule.from_row(row)

    def schedules(self, names: list[str] | None = None) -> list[Schedule]:
        rows = self.conn.execute("SELECT * FROM schedules ORDER BY name").fetchall()
        found = [Schedule.from_row(r) for r in rows]
        if names:
            missing = set(names) - {s.name for s in found}
            if missing:
                raise NoSuchSchedule(sorted(missing)[0])
            found = [s for s in found if s.name in names]
        return found

    def set_paused(self, name: str, paused: bool, now: datetime) -> None:
        with self.tx() as c:
            self.get(name)
            # Resuming moves the cursor to now: due times that fell in the pause are not "missed", they never were.
            extra = ", cursor = ?" if not paused else ""
            args = [int(paused), iso(now)] + ([iso(now)] if not paused else []) + [name]
            c.execute(f"UPDATE schedules SET paused = ?, updated = ?{extra} WHERE name = ?", args)

    def remove(self, name: str) -> None:
        with self.tx() as c:
            self.get(name)
            c.execute("DELETE FROM schedules WHERE name = ?", (name,))

    # ------------------------------------------------------------------ runs

    def claim(self, name: str, due: datetime, cursor: datetime, status: str, reason: str | None,
              now: datetime) -> Run | None:
        """Record a due time (pending or skipped) and move the cursor, in one transaction. None when the due time
        was recorded already (another scheduler got there first) or the cursor has moved past it."""
        with self.tx() as c:
            current = parse_iso(c.execute("SELECT cursor FROM schedules WHERE name = ?", (name,)).fetchone()[0])
            if current >= due:
                return None
            c.execute("UPDATE schedules SET cursor = ? WHERE name = ?", (iso(cursor), name))
            try:
                cur = c.execute("INSERT INTO runs (schedule, due, status, reason, claimed, ended) "
                                "VALUES (?, ?, ?, ?, ?, ?)",
                                (name, iso(due), status, reason, iso(now), iso(now) if status == "skipped" else None))
            except sqlite3.IntegrityError:
                return None  # the cursor still moves on: this due time is handled
            return self._run(cur.lastrowid)

    def _run(self, run_id: int) -> Run:
        return Run.from_row(self.conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone())

    def run(self, run_id: int) -> Run:
        return self._run(run_id)

    def update_run(self, run_id: int, **values: Any) -> Run:
        """Change columns that are no state transition (paths, fingerprint); see ``transition`` for the rest."""
        with self.tx() as c:
            c.execute(f"UPDATE runs SET {', '.join(f'{k} = ?' for k in values)} WHERE id = ?",
                      [*_columns(values).values(), run_id])
        return self._run(run_id)

    def transition(self, run: Run, **values: Any) -> Run | None:
        """Compare-and-set: apply ``values`` only if the row still has the status, attempt and launch time ``run``
        was read with; None when another scheduler changed it since (then that one owns the next step)."""
        with self.tx() as c:
            cur = c.execute(f"UPDATE runs SET {', '.join(f'{k} = ?' for k in values)} "
                            "WHERE id = ? AND status = ? AND attempts = ? AND launched IS ?",
                            [*_columns(values).values(), run.id, run.status, run.attempts, iso(run.launched)])
        return self._run(run.id) if cur.rowcount == 1 else None

    def runs(self, name: str, limit: int | None = None, statuses: tuple[str, ...] | None = None) -> list[Run]:
        where, args = "schedule = ?", [name]
        if statuses:
            where += f" AND status IN ({', '.join('?' * len(statuses))})"
            args += list(statuses)
        sql = f"SELECT * FROM runs WHERE {where} ORDER BY due DESC, id DESC" + (f" LIMIT {int(limit)}" if limit else "")
        return [Run.from_row(r) for r in self.conn.execute(sql, args).fetchall()]

    def active(self, name: str) -> list[Run]:
        return sorted(self.runs(name, statuses=ACTIVE), key=lambda r: r.due)

    def last_success(self, name: str) -> Run | None:
        found = self.runs(name, limit=1, statuses=("succeeded",))
        return found[0] if found else None

    # ------------------------------------------------------------------ leases

    def acquire_lease(self, name: str, holder: str, now: datetime, ttl: timedelta) -> Lease | None:
        """Take or renew the lease; None on success, else the lease someone else holds. A lease whose holder is a
        dead process on this host is taken at once instead of waiting out its expiry (kill -9 of serve)."""
        host, pid = socket.gethostname(), os.getpid()
        with self.tx() as c:
            row = c.execute("SELECT * FROM leases WHERE name = ?", (name,)).fetchone()
            if row is not None and row["holder"] != holder and parse_iso(row["expires"]) > now \
                    and not (row["host"] == host and not process_alive(row["pid"])):
                return Lease(row["holder"], row["host"], row["pid"], parse_iso(row["expires"]))
            c.execute("INSERT INTO leases (name, holder, host, pid, acquired, expires) VALUES (?, ?, ?, ?, ?, ?) "
                      "ON CONFLICT(name) DO UPDATE SET holder = excluded.holder, host = excluded.host, "
                      "pid = excluded.pid, acquired = CASE WHEN leases.holder = excluded.holder "
                      "THEN leases.acquired ELSE excluded.acquired END, expires = excluded.expires",
                      (name, holder, host, pid, iso(now), iso(now + ttl)))
        return None

    def release_lease(self, name: str, holder: str) -> None:
        with self.tx() as c:
            c.execute("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder))

    def lease(self, name: str) -> Lease | None:
        row = self.conn.execute("SELECT * FROM leases WHERE name = ?", (name,)).fetchone()
        return None if row is None else Lease(row["holder"], row["host"], row["pid"], parse_iso(row["expires"]))


def _columns(values: dict[str, Any]) -> dict[str, Any]:
    return {k: (iso(v) if isinstance(v, datetime) else json.dumps(v) if k == "decision" and v is not None
                else int(v) if isinstance(v, bool) else v) for k, v in values.items()}


def process_alive(pid: int, group: bool = False) -> bool:
    """Whether process ``pid`` (or, with ``group``, any process of process group ``pid``) exists."""
    try:
        (os.killpg if group else os.kill)(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
