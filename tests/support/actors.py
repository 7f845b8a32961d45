"""What a run left alive on the shared Ray instance: live actors of ours by class, live placement groups
(docs/liveness.md, "No leaks")."""

from __future__ import annotations

import contextlib
import gc
import time
from collections import Counter

# Actors a run makes (ours, Ray Train's and Tune's per run); Ray's own per-cluster singletons are left out.
OURS = {"_Clock", "DuplicateIndex", "_Beats", "TrainController", "RayTrainWorker", "SplitCoordinator",
        "PlacementGroupCleaner", "_Trainable", "ImplicitFunc", "_trainable", "Predictor", "_MapWorker"}


def live_actors() -> dict[str, int]:
    from ray.util.state import list_actors

    from pipeline.watchdog import state_address

    gc.collect()
    alive = list_actors(address=state_address(), filters=[("state", "=", "ALIVE")], limit=10_000,
                        raise_on_missing_output=False)
    return dict(Counter(a.class_name for a in alive
                        if a.class_name in OURS or a.class_name.startswith("ImplicitFunc")))


def live_placement_groups() -> list[str]:
    from ray.util.state import list_placement_groups

    from pipeline.watchdog import state_address

    return [f"{g.name or g.placement_group_id[:8]} {g.state}"
            for g in list_placement_groups(address=state_address(), limit=10_000, raise_on_missing_output=False)
            if g.state in ("CREATED", "PENDING", "RESCHEDULING")]


def settled(baseline: dict, timeout_s: float = 60.0) -> dict:
    """Live actors once none is above ``baseline`` and no placement group is left (Ray ends them
    asynchronously), else after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        now = live_actors()
        if not leftovers(now, baseline) and not live_placement_groups() or time.monotonic() > deadline:
            return now
        time.sleep(1)


def leftovers(now: dict, baseline: dict) -> dict:
    """Actors alive in ``now`` beyond ``baseline``, by class. A baseline may still hold an earlier test's actors
    on their way out: fewer now is fine, more is a leak."""
    return {name: n - baseline.get(name, 0) for name, n in now.items() if n > baseline.get(name, 0)}


@contextlib.contextmanager
def cpus_held_by_another_job(cpus: float):
    """A placement group named "other-job" holding ``cpus`` for the block: what a run waits on in the stall tests."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    other = placement_group([{"CPU": cpus}], name="other-job")
    ray.get(other.ready(), timeout=30)
    try:
        yield other
    finally:
        remove_placement_group(other)
