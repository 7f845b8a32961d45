"""The small actors a run makes for its datasets (duplicate index, epoch clock) end with the run.

Ray ends an actor when the last handle to it goes, but these handles travel inside datasets: into read tasks,
Ray Train's controller and split coordinators, Tune's parameter registry, exception tracebacks. Some of those
copies outlive the run (issue 20: ``DuplicateIndex`` actors of finished trials were still alive), so the handles
are not left to reference counting: every one made inside ``actors_scope()`` is killed when the block ends,
whether the run succeeded or failed. Outside any scope (a one-off read in a test or a notebook) Ray's reference
counting alone ends them.
"""

from __future__ import annotations

import contextlib
import logging
import threading

log = logging.getLogger(__name__)

_lock = threading.Lock()
_scopes: list[list] = []  # innermost last; each holds the actor handles made while it was innermost


def owned(handle):
    """Register ``handle`` (a fresh actor) with the innermost ``actors_scope``; returns it."""
    with _lock:
        if _scopes:
            _scopes[-1].append(handle)
    return handle


def release(handles: list) -> None:
    """Kill ``handles`` now (best effort: one already dead is fine)."""
    import ray

    for handle in handles:
        with contextlib.suppress(Exception):
            ray.kill(handle)


@contextlib.contextmanager
def actors_scope():
    """Kill every actor ``owned`` inside the block when it ends (also on failure). Scopes nest: an inner one
    releases its own actors first (a data report pass inside a training)."""
    mine: list = []
    with _lock:
        _scopes.append(mine)
    try:
        yield mine
    finally:
        with _lock:
            _scopes.remove(mine)
        release(mine)
        if mine:
            log.debug("released %d dataset actor(s)", len(mine))
