"""``pulled``: a dataset iterated from a helper thread, so a stalled read can be interrupted (no Ray needed: any
iterator that blocks where no Python code runs shows it)."""

from __future__ import annotations

import threading
import time

import pytest

from pipeline.data.streaming.pull import pulled
from pipeline.watchdog import StallError, watch


def test_batches_come_through_in_order_and_errors_are_raised_here():
    assert list(pulled(iter(range(50)))) == list(range(50))

    def broken():
        yield 1
        raise ValueError("shard x: bad")

    got = []
    with pytest.raises(ValueError, match="shard x: bad"):
        for item in pulled(broken()):
            got.append(item)
    assert got == [1]


def test_a_read_blocked_for_good_is_stopped_by_the_watchdog():
    """The source blocks in a lock wait that no interrupt reaches; the caller still stops at the stall timeout."""
    never = threading.Event()

    def stuck():
        yield 1
        never.wait()  # as Ray Data's iterator waited for blocks whose read tasks never got a CPU
        yield 2

    start = time.monotonic()
    with pytest.raises(StallError, match="reading made no progress for 0.5 s"):
        with watch("reading", 0.5, poll_s=0.05, grace_s=60):
            for _ in pulled(stuck()):
                pass
    assert time.monotonic() - start < 10
    never.set()  # lets the abandoned helper thread end
