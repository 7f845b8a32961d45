"""Stall detection: a long command watches its own progress and, when nothing moves for
``scaling.stall_timeout_s``, stops and fails with what was waiting for what.

Progress is anything that only moves when work gets done: training steps and validation batches (every Train
worker beats a ``Heartbeat``, a tiny actor the driver owns), rows the driver reads (``progressed``), trials
finished. A watchdog thread samples them; on a stall it builds the diagnostic (``cluster_state``: Ray's pending
demands, placement groups, waiting tasks and actors, and the likely fix) and interrupts the main thread, whose
``watch`` block turns whatever that interrupt became (KeyboardInterrupt, Ray Train's abort, Tune's stop) into a
``StallError``. Should the main thread not come back within ``grace_s`` (stuck in C code that never checks
signals), the process writes the diagnostic to stderr and exits 1: a run never hangs.
"""

from __future__ import annotations

import _thread
import contextlib
import logging
import os
import sys
import threading
import time
from collections import Counter, deque
from typing import Callable

log = logging.getLogger(__name__)

BEAT_INTERVAL_S = 1.0  # a worker beats at most this often (one fire-and-forget actor call)
GRACE_S = 120.0  # after interrupting, how long the main thread has to come back before the process exits
ABORT_S = 20.0  # after interrupting, how long a graceful stop may take before ``force_stop`` runs
EVENTS_KEPT = 256  # events a Heartbeat keeps for a console that has not read them (Tune's trials send, nobody reads)


class StallError(RuntimeError):
    """A run made no progress for its stall timeout; the message is the diagnostic."""


class _Beats:
    """The counter actor. Besides the count it keeps each worker's latest status (rank, epoch, phase, rows,
    running loss) and the last EVENTS_KEPT events (first batch, finished epoch), numbered, for the driver's
    console: workers never print (their output is Ray's, interleaved and duplicated), they tell the driver."""

    def __init__(self) -> None:
        self.count = 0
        self.status: dict[int, dict] = {}
        self.events: deque = deque(maxlen=EVENTS_KEPT)
        self.seq = 0

    def beat(self, n: int = 1, status: dict | None = None) -> None:
        self.count += n
        if status is not None:
            self.status[status.get("rank", 0)] = status

    def event(self, event: dict) -> None:
        self.count += 1
        self.seq += 1
        self.events.append((self.seq, event))

    def get(self) -> int:
        return self.count

    def read(self, after: int) -> tuple[int, list[dict], dict[int, dict]]:
        """(number of the newest event, the events numbered after ``after``, each worker's latest status)."""
        return self.seq, [e for n, e in list(self.events) if n > after], dict(self.status)


class Heartbeat:
    """Picklable handle to a beat counter: the driver creates it and passes it to workers, which ``beat()`` (with
    their progress) and send ``event``s; the driver's watchdog reads ``count()``, its console ``read()``.
    ``close()`` ends the actor (runs leave no actors behind)."""

    def __init__(self) -> None:
        import ray

        self._actor = ray.remote(num_cpus=0, max_concurrency=4)(_Beats).remote()
        self._last = 0.0

    def beat(self, **status) -> None:
        """One step done; ``status``: this worker's progress (rank, epoch, phase, rows, loss), absolute values,
        so the ones skipped by the rate limit lose nothing."""
        now = time.monotonic()
        if now - self._last >= BEAT_INTERVAL_S:
            self._last = now
            self._actor.beat.remote(1, status or None)  # fire and forget: a dead counter must not stop training

    def event(self, kind: str, **data) -> None:
        """Something the person running it should see (never rate-limited): ``first_batch``, ``epoch``..."""
        self._actor.event.remote({"kind": kind, **data})

    def read(self, after: int = 0, timeout_s: float = 5.0) -> tuple[int, list[dict], dict[int, dict]] | None:
        """``_Beats.read``; None when the counter does not answer in time."""
        import ray

        try:
            return ray.get(self._actor.read.remote(after), timeout=timeout_s)
        except Exception:  # noqa: BLE001  (a slow or dead counter: the console just shows nothing new)
            return None

    def count(self, timeout_s: float = 10.0) -> int | None:
        """Beats so far; None when the counter does not answer in time."""
        import ray

        try:
            return ray.get(self._actor.get.remote(), timeout=timeout_s)
        except Exception:  # noqa: BLE001  (a timeout or a dead actor reads as "no progress seen")
            return None

    def close(self) -> None:
        import ray

        with contextlib.suppress(Exception):
            ray.kill(self._actor)


_driver_progress = 0
_driver_lock = threading.Lock()


def interrupt_main() -> None:
    """SIGINT delivered to the main thread itself. A real signal also wakes a wait blocked in a system call there
    (a lock, a queue, a socket read), which ``_thread.interrupt_main`` (a flag checked only between bytecodes)
    leaves blocked: a data report pass waiting in Ray Data's iterator for rows that never came was never stopped.
    Python runs the handler (KeyboardInterrupt, or Ray Train's/Tune's own) in the main thread either way."""
    import signal

    if callable(signal.getsignal(signal.SIGINT)):
        try:
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
            return
        except (AttributeError, OSError, ValueError):  # no pthread_kill here: the flag, as before
            pass
    _thread.interrupt_main()


def progressed(n: int = 1) -> None:
    """Record driver-side progress (rows or batches read by this process). Any driver loop over data calls it."""
    global _driver_progress
    with _driver_lock:
        _driver_progress += n


def driver_progress() -> int:
    return _driver_progress


class Watchdog(threading.Thread):
    def __init__(self, what: str, timeout_s: float, probes: list[Callable[[], object]], hint: str,
                 poll_s: float, grace_s: float, force_stop: Callable[[], None] | None = None):
        super().__init__(name=f"watchdog: {what}", daemon=True)
        self.what, self.timeout_s, self.probes, self.hint = what, timeout_s, probes, hint
        self.poll_s, self.grace_s, self.force_stop = poll_s, grace_s, force_stop
        self.fired = False
        self.diagnostic = ""
        self._stop_event = threading.Event()
        self._lock = threading.Lock()

    def _sample(self) -> tuple:
        values = []
        for probe in self.probes:
            try:
                values.append(probe())
            except Exception:  # noqa: BLE001  (an unreadable probe counts as unchanged)
                values.append(None)
        return tuple(values)

    def run(self) -> None:
        last, since = self._sample(), time.monotonic()
        while not self._stop_event.wait(self.poll_s):
            # A probe that cannot answer (None) keeps its last value: silence is not progress.
            now_values = tuple(old if new is None else new for old, new in zip(last, self._sample()))
            if now_values != last:
                last, since = now_values, time.monotonic()
                continue
            if time.monotonic() - since < self.timeout_s:
                continue
            diagnostic = stall_message(self.what, self.timeout_s, self.hint)
            with self._lock:
                if self._stop_event.is_set():
                    return
                self.fired, self.diagnostic = True, diagnostic
            log.error("%s", diagnostic)
            interrupt_main()
            if self.force_stop is not None and not self._stop_event.wait(min(ABORT_S, self.grace_s)):
                log.warning("%s: not stopped %.0f s after the interrupt; forcing it", self.what, ABORT_S)
                with contextlib.suppress(Exception):
                    self.force_stop()
            if not self._stop_event.wait(self.grace_s):
                print(f"error: {diagnostic}\n(the run did not stop within {self.grace_s:.0f} s of being "
                      "interrupted; exiting. Where each thread was:)", file=sys.stderr, flush=True)
                with contextlib.suppress(Exception):  # where the main thread sat, for whoever fixes it
                    import faulthandler

                    faulthandler.dump_traceback(file=sys.__stderr__, all_threads=True)
                os._exit(1)
            return

    def stop(self) -> None:
        with self._lock:
            self._stop_event.set()


@contextlib.contextmanager
def watch(what: str, timeout_s: float, heartbeat: Heartbeat | None = None,
          probes: list[Callable[[], object]] | None = None, hint: str = "", poll_s: float | None = None,
          grace_s: float = GRACE_S, force_stop: Callable[[], None] | None = None):
    """Run the block under a watchdog: progress is ``heartbeat``'s count, the driver's ``progressed`` rows and
    each of ``probes`` (any value that changes when work is done). No change for ``timeout_s`` -> StallError with
    the diagnostic. ``what``: the work, as the message names it ("training", "tune"); ``force_stop``: what ends the
    work when the interrupt did not within ABORT_S (e.g. ``kill_train_controllers``)."""
    all_probes = [driver_progress, *(probes or [])]
    handler = _default_sigint()
    if heartbeat is not None:
        all_probes.append(heartbeat.count)
    dog = Watchdog(what, timeout_s, all_probes, hint, poll_s or min(10.0, max(0.2, timeout_s / 10)), grace_s,
                   force_stop)
    with _active_lock:
        _active.append(dog)
    dog.start()
    try:
        yield dog
        if dog.fired:  # the interrupt was turned into a normal return (Tune stops gracefully)
            with contextlib.suppress(KeyboardInterrupt):
                time.sleep(0.2)  # a pending interrupt surfaces here, not in the caller
    except BaseException as e:  # noqa: BLE001  (an interrupt arrives as KeyboardInterrupt, SystemExit, Ray errors)
        if dog.fired:
            raise StallError(dog.diagnostic) from None
        raise
    finally:
        dog.stop()
        with _active_lock:
            _active.remove(dog)
        _restore_sigint(handler)
    if dog.fired:
        raise StallError(dog.diagnostic)


_active: list[Watchdog] = []
_active_lock = threading.Lock()


def raise_if_stalled() -> None:
    """Raise the StallError of a watch that fired: for a wait loop of the main thread that the interrupt may not
    reach (data/streaming/pull.py)."""
    with _active_lock:
        fired = [dog for dog in _active if dog.fired]
    if fired:
        raise StallError(fired[-1].diagnostic)


def _default_sigint():
    """Python's own SIGINT handler (KeyboardInterrupt) for the watched block; returns what to restore after it
    (None off the main thread). Ray Train and Tune install theirs inside ``fit()`` and never put the old one back.
    Ray Train's closes over its controller's handle, so while it stays installed that controller and its
    SplitCoordinator outlive the run (the leak issue 20 saw after workflows), and a later interrupt goes to a
    finished run (a data report pass after a tune swallowed it). So a handler of Ray's found here is replaced by
    Python's, and on the way out the handler from before the block is put back, whatever ``fit()`` installed."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        return None
    before = signal.getsignal(signal.SIGINT)
    if _installed_by_ray(before):  # a finished fit()'s: restoring it would pin that run's controller again
        before = signal.default_int_handler
    with contextlib.suppress(ValueError, TypeError):
        signal.signal(signal.SIGINT, signal.default_int_handler)
        return before
    return None


def _installed_by_ray(handler) -> bool:
    return (getattr(handler, "__module__", None) or "").startswith("ray.")


def _restore_sigint(before) -> None:
    import signal

    if before is not None and threading.current_thread() is threading.main_thread():
        with contextlib.suppress(ValueError, TypeError):
            signal.signal(signal.SIGINT, before)


def kill_train_controllers() -> None:
    """kill -9 this job's Ray Train controllers (on this node, as Ray Train places them): ``fit()`` then raises at
    once, the controllers' workers end with them and Ray Train's placement-group cleaner frees their CPUs. For a
    training whose graceful abort (Ray Train's SIGINT handler) itself waits."""
    import signal

    import ray
    from ray.util.state import list_actors

    job = ray.get_runtime_context().get_job_id()
    for a in list_actors(address=state_address(), filters=[("class_name", "=", "TrainController"),
                                                           ("state", "=", "ALIVE"), ("job_id", "=", job)],
                         detail=True, timeout=10, raise_on_missing_output=False):
        if a.pid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(a.pid, signal.SIGKILL)


# ------------------------------------------------------------------------------------------ the diagnostic


def stall_message(what: str, timeout_s: float, hint: str = "") -> str:
    state = cluster_state()
    return (f"{what} made no progress for {timeout_s:g} s (scaling.stall_timeout_s) and was stopped.\n{state}"
            + (f"\n{hint}" if hint else ""))


def state_address() -> str:
    """This process's cluster, for Ray's state API (which otherwise looks for one on the machine and fails when
    several run there)."""
    import ray

    return ray.get_runtime_context().gcs_address


def _short(resources: dict | None) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted((resources or {}).items())
                           if not k.startswith(("node:", "bundle_group"))) + "}"


def cluster_state() -> str:
    """What the cluster holds and what waits: resources, placement groups, pending demands, unfinished tasks and
    live actors (grouped), and the likely fix. Every part is best effort: a part Ray cannot answer says so."""
    import ray

    if not ray.is_initialized():
        return "Ray is not running in this process: nothing there waits\nlikely fix: see what the block waits on"
    lines = []
    try:
        total, free = ray.cluster_resources(), ray.available_resources()
        lines.append(f"cluster: {total.get('CPU', 0):g} CPUs ({free.get('CPU', 0):g} free), "
                     f"{total.get('GPU', 0):g} GPUs ({free.get('GPU', 0):g} free)")
    except Exception as e:  # noqa: BLE001
        lines.append(f"cluster resources unavailable: {e}")
        total, free = {}, {}
    pending_cpu, reserved, pending_groups = _add_ray_state(lines)
    lines.append("likely fix: " + _likely_fix(total, free, pending_cpu, reserved, pending_groups))
    return "\n".join(lines)


def _add_ray_state(lines: list[str]) -> tuple[float, float, float]:
    """Placement groups, demands, tasks and actors into ``lines``; (CPU asked by pending tasks, CPU reserved, CPU
    asked by pending placement groups)."""
    from ray.util.state import list_actors, list_placement_groups, list_tasks

    reserved, pending_cpu, pending_groups = 0.0, 0.0, 0.0
    address = state_address()
    try:
        groups = [g for g in list_placement_groups(address=address, detail=True, timeout=10,
                                                   raise_on_missing_output=False)
                  if g.state in ("CREATED", "PENDING", "RESCHEDULING")]
        for g in groups:
            cpus = sum(b.get("unit_resources", {}).get("CPU", 0) for b in g.bundles or [])
            if g.state == "CREATED":
                reserved += cpus
            else:
                pending_groups += cpus
            lines.append(f"placement group {g.placement_group_id[:8]} {g.name or '(unnamed)'}: {g.state}, "
                         f"{cpus:g} CPU in {len(g.bundles or [])} bundles")
    except Exception as e:  # noqa: BLE001
        lines.append(f"placement groups unavailable: {e}")
    lines.extend(_demands())
    try:
        waiting = Counter()
        for t in list_tasks(address=address, filters=[("state", "!=", "FINISHED"), ("state", "!=", "FAILED")],
                            detail=True, timeout=10, raise_on_missing_output=False):
            if t.type == "ACTOR_CREATION_TASK":
                continue
            waiting[(t.name, t.state, _short(t.required_resources))] += 1
            if str(t.state).startswith("PENDING_NODE"):
                pending_cpu += (t.required_resources or {}).get("CPU", 0)
        for (name, state, res), n in waiting.most_common(12):
            lines.append(f"task {n} x {name}: {state}, needs {res}")
    except Exception as e:  # noqa: BLE001
        lines.append(f"tasks unavailable: {e}")
    try:
        actors = Counter()
        for a in list_actors(address=address, filters=[("state", "!=", "DEAD")], detail=True,
                             timeout=10, raise_on_missing_output=False):
            actors[(a.class_name, a.state, _short(a.required_resources))] += 1
        for (name, state, res), n in actors.most_common(16):
            lines.append(f"actor {n} x {name}: {state}, holds {res}")
    except Exception as e:  # noqa: BLE001
        lines.append(f"actors unavailable: {e}")
    return pending_cpu, reserved, pending_groups


def _demands() -> list[str]:
    """Ray's pending resource demands, as ``ray status`` shows them."""
    import ray

    try:
        from ray.autoscaler.v2.sdk import get_cluster_status

        status = get_cluster_status(state_address(), timeout=10)
        demands = status.resource_demands
        out = []
        for d in demands.ray_task_actor_demand:
            for b in d.bundles_by_count:
                out.append(f"pending demand: {_short(b.bundle)} x {b.count} tasks/actors")
        for d in demands.placement_group_demand:
            for b in d.bundles_by_count:
                out.append(f"pending demand: placement group bundle {_short(b.bundle)} x {b.count}")
        return out or ["pending demands: none"]
    except Exception as e:  # noqa: BLE001
        return [f"pending demands unavailable: {e}"]


def _likely_fix(total: dict, free: dict, pending_cpu: float, reserved: float, pending_groups: float) -> str:
    if pending_groups:
        return (f"a placement group (training workers) waits for {pending_groups:g} CPU while {reserved:g} of "
                f"{total.get('CPU', 0):g} CPUs are held by others: stop the other jobs sharing this Ray cluster "
                "(placement groups of finished runs are leftovers), or lower scaling.num_workers, "
                "scaling.cpus_per_worker or tune.max_concurrent_trials")
    if pending_cpu and free.get("CPU", 0) < 1:
        return (f"tasks wait for {pending_cpu:g} CPU while {reserved:g} of {total.get('CPU', 0):g} CPUs are held "
                "in placement groups: lower tune.max_concurrent_trials or scaling.cpus_per_worker, or stop other "
                "jobs sharing this Ray cluster (placement groups of finished runs are leftovers)")
    if pending_cpu:
        return "tasks wait for resources no node offers: check their needs against the cluster's nodes"
    return ("nothing waits for resources: a worker is blocked (a collective waiting for a rank that died, a "
            "stuck read); see the worker logs under /tmp/ray/session_latest/logs and rerun (the run resumes)")
