"""Iterate a dataset from a helper thread, so the caller's wait can always be interrupted.

A data report pass whose read tasks could not get a CPU sat in Ray Data's iterator waiting for its first block;
the stall watchdog's interrupt never reached it (the main thread was blocked where no Python code runs, and came
back neither from ``_thread.interrupt_main`` nor from a real SIGINT), so the process could only be ended by the
watchdog's hard exit. Here a daemon thread pulls the batches and the caller waits on a queue in short steps:
an interrupt (the watchdog's, or Ctrl-C) ends the caller's loop at once, and the helper is told to stop and left
to end with its iterator.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator

from pipeline.watchdog import raise_if_stalled

WAIT_STEP_S = 0.5  # how long the caller waits on the queue between chances for an interrupt to arrive
_END = object()


def pulled(batches: Iterable, name: str = "dataset reader") -> Iterator:
    """Yield what ``batches`` yields, pulled by a daemon thread; its exceptions are raised here."""
    out: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=WAIT_STEP_S)
                return True
            except queue.Full:
                continue
        return False

    def pull() -> None:
        try:
            for batch in batches:
                if not put(batch):
                    return
            put(_END)
        except BaseException as e:  # noqa: BLE001  (handed to the caller, who raises it)
            put(e)

    threading.Thread(target=pull, name=name, daemon=True).start()
    try:
        while True:
            try:
                item = out.get(timeout=WAIT_STEP_S)
            except queue.Empty:
                raise_if_stalled()  # should the interrupt itself not arrive (a handler that swallows it)
                continue
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
