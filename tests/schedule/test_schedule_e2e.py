"""A scheduled retrain through the real ``mmpipe run`` (jobs/retrain.yaml on the demo data, three epochs): the fire,
the run killed (its whole session, SIGKILL) after its training's first checkpoint and resumed by the scheduler in
the same run directory, whose training then continues from that checkpoint; the recorded registry version and
promotion decision, then the data trigger skipping the unchanged data."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from pipeline.data.tools.demo import write_demo
from pipeline.schedule.scheduler import Scheduler
from pipeline.schedule.store import Schedule, Store
from support.runs import assert_resumed, committed_checkpoint, epoch_rows
import support

RETRAIN = support.ROOT / "jobs" / "retrain.yaml"
T0 = datetime(2024, 6, 3, 2, 59, tzinfo=timezone.utc)


@pytest.mark.cluster  # `mmpipe run` in a subprocess starts its own Ray
@pytest.mark.slow
@pytest.mark.timeout(800)
def test_scheduled_retrain_records_version_and_promotion(tmp_path):
    data = tmp_path / "demo"
    write_demo(data, seed=1, scale=0.25)
    sets = [f"data.splits.{split}={data}/{split}/*.tar" for split in ("train", "val", "test")] + \
        ["train.epochs=3", "train.batch_size=32", "augment.enabled=false", f"registry.uri={tmp_path / 'registry'}"]
    clock = [T0]
    store = Store(tmp_path / "schedule.db")
    store.add(Schedule(name="retrain", spec=str(RETRAIN), overrides=sets, cron="0 3 * * *", timezone="UTC",
                       address=None, concurrency="forbid", missed="skip", trigger="data-changed", retries=1,
                       grace_s=600, runs_dir=str(tmp_path / "runs"), cwd=str(tmp_path), paused=False, cursor=T0,
                       created=T0, updated=T0))
    s = Scheduler(store, clock=lambda: clock[0])  # the real launcher: python -m pipeline.cli run …

    clock[0] = T0 + timedelta(minutes=1)
    s.tick()
    [run] = store.runs("retrain")
    assert run.status == "running" and run.pid
    run_dir = tmp_path / "runs" / "retrain" / "20240603T030000Z" / "run"
    deadline = time.monotonic() + 300
    while not committed_checkpoint(run_dir / "train.partial" / "ray"):  # registered by Ray, not only written
        assert time.monotonic() < deadline, (Path(run.control_dir) / "launch.log").read_text()[-3000:]
        time.sleep(0.5)
    _kill_session(run.pid)  # the wrapper too: no exit status is left, the run is lost
    deadline = time.monotonic() + 400
    while store.active("retrain"):
        assert time.monotonic() < deadline, (Path(run.control_dir) / "launch.log").read_text()[-3000:]
        time.sleep(2)
        s.tick()
    run = store.run(run.id)
    log = (Path(run.control_dir) / "launch.log").read_text()
    assert run.status == "succeeded", f"{run.error}\n{log[-3000:]}"
    assert run.run_dir == str(run_dir)
    assert run.attempts == 2 and "resumed in the same run dir after attempt 1" in run.reason
    rows = epoch_rows(run_dir / "train")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert_resumed(rows)  # from the checkpoint the killed attempt left, with its weights and step count
    assert run.registry == str(tmp_path / "registry") and run.version == 1
    assert run.promoted is True and run.decision["promote"] is True and "no champion" in run.decision["reason"]
    assert run.fingerprint

    clock[0] = T0 + timedelta(days=1, minutes=1)  # next day, same data
    s.tick()
    latest = store.runs("retrain", limit=1)[0]
    assert latest.status == "skipped" and f"data unchanged since run #{run.id}" in latest.reason


def _kill_session(sid: int) -> None:
    """SIGKILL every process of the run's session: the wrapper, mmpipe run and the Ray it started."""
    out = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True, check=True).stdout
    for pid in [int(p) for p, s in (line.split() for line in out.splitlines()) if int(s) == sid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
