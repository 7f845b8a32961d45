"""A scheduled retrain through the real ``mmpipe run`` (jobs/retrain.yaml on the demo data, one epoch): the fire,
the recorded registry version and promotion decision, then the data trigger skipping the unchanged data."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from pipeline.data.tools.demo import write_demo
from pipeline.schedule.scheduler import Scheduler
from pipeline.schedule.store import Schedule, Store

RETRAIN = Path(__file__).resolve().parents[1] / "jobs" / "retrain.yaml"
T0 = datetime(2024, 6, 3, 2, 59, tzinfo=timezone.utc)


@pytest.mark.cluster  # `mmpipe run` in a subprocess starts its own Ray
@pytest.mark.slow
@pytest.mark.timeout(400)
def test_scheduled_retrain_records_version_and_promotion(tmp_path):
    data = tmp_path / "demo"
    write_demo(data, seed=1, scale=0.25)
    sets = [f"data.splits.{split}={data}/{split}/*.tar" for split in ("train", "val", "test")] + \
        ["train.epochs=1", f"registry.uri={tmp_path / 'registry'}"]
    clock = [T0]
    store = Store(tmp_path / "schedule.db")
    store.add(Schedule(name="retrain", spec=str(RETRAIN), overrides=sets, cron="0 3 * * *", timezone="UTC",
                       address=None, concurrency="forbid", missed="skip", trigger="data-changed", retries=0,
                       grace_s=600, runs_dir=str(tmp_path / "runs"), cwd=str(tmp_path), paused=False, cursor=T0,
                       created=T0, updated=T0))
    s = Scheduler(store, clock=lambda: clock[0])  # the real launcher: python -m pipeline.cli run …

    clock[0] = T0 + timedelta(minutes=1)
    s.tick()
    [run] = store.runs("retrain")
    assert run.status == "running" and run.pid
    deadline = time.monotonic() + 300
    while store.active("retrain"):
        assert time.monotonic() < deadline, (Path(run.control_dir) / "launch.log").read_text()[-3000:]
        time.sleep(2)
        s.tick()
    run = store.run(run.id)
    log = (Path(run.control_dir) / "launch.log").read_text()
    assert run.status == "succeeded", f"{run.error}\n{log[-3000:]}"
    assert run.run_dir == str(tmp_path / "runs" / "retrain" / "20240603T030000Z" / "run")
    assert run.registry == str(tmp_path / "registry") and run.version == 1
    assert run.promoted is True and run.decision["promote"] is True and "no champion" in run.decision["reason"]
    assert run.fingerprint

    clock[0] = T0 + timedelta(days=1, minutes=1)  # next day, same data
    s.tick()
    latest = store.runs("retrain", limit=1)[0]
    assert latest.status == "skipped" and f"data unchanged since run #{run.id}" in latest.reason
