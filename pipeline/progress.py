"""Training progress on the driver's console: the workers' heartbeat (``pipeline/watchdog.py``) carries their rows,
running loss and finished epochs; ``follow_training`` polls it and draws them on ``console.current()`` — a live bar
per epoch, then one line with the epoch's key metrics. Workers never print: Ray would forward each line from every
process (Train V2 twice), interleaved with its own."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Iterator

from pipeline.console import View, current

log = logging.getLogger(__name__)

POLL_S = 0.5  # how often the driver reads the heartbeat
FINAL_WAIT_S = 2.0  # after training, how long events still in flight (the last epoch's line) may take to arrive


def epoch_line(event: dict) -> str:
    """``epoch 2/8: train loss 1.234 acc 0.512 | val loss 1.100 acc 0.600 macro-F1 0.550 (4.1 s)``"""
    m = event["metrics"]
    seconds = f" ({event['seconds']:.1f} s)" if event.get("seconds") is not None else ""
    # label.tasks: each further task's validation macro-F1 (val.<task>.macro_f1) after the primary's
    tasks = "".join(f" | {k.split('.')[1]} macro-F1 {v:.3f}" for k, v in m.items()
                    if k.startswith("val.") and k.endswith(".macro_f1") and k.count(".") == 2)
    return (f"epoch {event['epoch'] + 1}/{event['epochs']}: train loss {m['train.loss']:.3f} "
            f"acc {m['train.accuracy']:.3f} | val loss {m['val.loss']:.3f} acc {m['val.accuracy']:.3f} "
            f"macro-F1 {m['val.macro_f1']:.3f}{tasks}{seconds}")


class TrainingFeed:
    """Turns heartbeat reads into view calls. Separate from the thread that polls, so it is testable without Ray:
    feed it what ``Heartbeat.read`` returns."""

    def __init__(self, view: View, epochs: int, rows_per_epoch: float | None) -> None:
        self.view, self.epochs, self.rows_per_epoch = view, epochs, rows_per_epoch
        self.seq = 0
        self.shown: int | None = None  # the epoch whose bar is up
        self.finished: set[int] = set()
        self.first_batch: float | None = None
        self.trained: dict[int, int] = {}  # rank -> rows it trained on in the shown epoch (kept while it validates)

    def feed(self, seq: int, events: list[dict], status: dict[int, dict]) -> None:
        self.seq = max(self.seq, seq)
        for event in events:
            self._event(event)
        self._status(status)

    def _event(self, event: dict) -> None:
        kind = event.get("kind")
        if kind == "first_batch" and self.first_batch is None:
            self.first_batch = event["time"]
            # benchmarks/first_batch.py reads this line from RUN_DIR/logs/mmpipe.log
            log.info("first training batch at unix time %.3f", event["time"])
        elif kind == "epoch" and event["epoch"] not in self.finished:
            self.finished.add(event["epoch"])
            self.shown = None
            self.view.done(epoch_line(event))
        elif kind == "early_stop":
            self.view.line(f"early stopping: {event['metric']} has not improved for {event['stale']} epochs")

    def _status(self, status: dict[int, dict]) -> None:
        now = [s for s in status.values() if s.get("epoch") is not None]
        if not now:
            return
        epoch = max(s["epoch"] for s in now)
        if epoch in self.finished:
            return
        ranks = [s for s in now if s["epoch"] == epoch]
        label = f"epoch {epoch + 1}/{self.epochs}"
        if self.shown != epoch:
            self.shown, self.trained = epoch, {}
            self.view.start(label, self.rows_per_epoch)
        for rank, s in status.items():
            if s.get("epoch") == epoch and s.get("phase") == "train":
                self.trained[rank] = s.get("rows", 0)
        rows = sum(self.trained.values())  # a rank already validating still counts what it trained on
        losses = [s["loss"] for s in ranks if s.get("loss") is not None and s.get("phase") == "train"]
        validating = all(s.get("phase") == "val" for s in ranks)
        self.view.update(self.rows_per_epoch or rows if validating else rows,
                         sum(losses) / len(losses) if losses else None,
                         label + (" validating" if validating else ""))


@contextlib.contextmanager
def follow_training(heartbeat, epochs: int, rows_per_epoch: float | None,
                    view: View | None = None) -> Iterator[TrainingFeed]:
    """While the block runs (``trainer.fit()``), draw the workers' progress from ``heartbeat`` on ``view``
    (``console.current()``); afterwards wait briefly for the last events in flight."""
    feed = TrainingFeed(view or current(), epochs, rows_per_epoch)
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(POLL_S):
            read = heartbeat.read(feed.seq)
            if read is not None:
                feed.feed(*read)

    thread = threading.Thread(target=poll, name="training progress", daemon=True)
    thread.start()
    try:
        yield feed
    finally:
        stop.set()
        thread.join()
        # The last epoch's event is sent just before the workers finish: read until a read brings nothing new
        # (at least two reads, FINAL_WAIT_S at most).
        deadline, reads = time.monotonic() + FINAL_WAIT_S, 0
        while time.monotonic() < deadline:
            read = heartbeat.read(feed.seq, timeout_s=FINAL_WAIT_S)
            reads += 1
            if read is not None:
                feed.feed(read[0], read[1], {})
                if not read[1] and reads >= 2:
                    break
            time.sleep(0.2)
