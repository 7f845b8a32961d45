"""What a run needs from the cluster, worked out before any Ray work, and refused when it cannot fit.

A training (``mmpipe train``, each Tune trial) holds three things: its Train workers (a placement group Ray Train
makes), its data CPUs (a placement group of our own that the run's Ray Data tasks are scheduled into) and, in
Tune, the trial's own function. The data CPUs are reserved because Ray Data's read tasks take one whole CPU each:
left to whatever CPU happened to be free, they starved behind the workers and anything else holding CPUs (a
previous trial's placement group not yet removed, another job) while the workers waited for them, forever
(issue 20). Reserved with the training, a run either gets everything it needs or does not start.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass

from pipeline.spec import JobSpec

log = logging.getLogger(__name__)

TRIAL_CPU = 0.01  # a Tune trial's function only waits on fit(); Tune refuses 0
MIN_CPUS_PER_WORKER = 0.1  # fitting workers below this share leaves nothing to train with: refused instead
# Ray's state API (list_actors, list_placement_groups) for the best-effort sweeps: its own default is 30 s, which a
# terminal Ctrl-C (that also stops the dashboard serving the API) spent in full before the command could exit.
STATE_API_TIMEOUT_S = 5
MAX_SHARE_CUT = 0.05  # how much of the workers' requested share the default trial count may take to fit one more
RESERVE_TIMEOUT_S = 120.0  # how long a train run waits for its data CPUs before saying who holds them
# Ray's resource quantities have four decimals: fitted shares are rounded down to them, or a sum like
# 2 x 0.495 + 1.01 could come out above the cluster's 2.0 and never be placed.
_QUANTUM = 1e-4


class PlanError(RuntimeError):
    """The run cannot fit on this cluster; the message says what to change."""


def _floor(x: float) -> float:
    return round(math.floor(x / _QUANTUM + 1e-6) * _QUANTUM, 4)


@dataclass(frozen=True)
class ResourcePlan:
    """One run's resources: ``trials`` trainings side by side, each ``workers`` x ``cpus_per_worker`` (+
    ``gpus_per_worker`` with ``use_gpu``), ``data_cpus`` for its data tasks and ``trial_cpu`` for its Tune
    function."""
    cluster_cpus: float
    cluster_gpus: float
    workers: int
    cpus_per_worker: float
    use_gpu: bool
    data_cpus: int
    trials: int = 1
    trial_cpu: float = 0.0
    gpus_per_worker: float = 1.0

    @property
    def per_training(self) -> float:
        return self.workers * self.cpus_per_worker + self.data_cpus + self.trial_cpu

    def worker_resources(self) -> dict:
        return {"CPU": self.cpus_per_worker, **({"GPU": self.gpus_per_worker} if self.use_gpu else {})}

    def trial_bundles(self) -> list[dict]:
        """A Tune trial's placement group: its function, then its data CPUs (``DATA_BUNDLE``)."""
        return [{"CPU": self.trial_cpu}, {"CPU": self.data_cpus}]

    def describe(self) -> str:
        trials = f"{self.trials} trial{'s' if self.trials > 1 else ''} x (" if self.trial_cpu else "("
        trial = f" + {self.trial_cpu:g} trial" if self.trial_cpu else ""
        cpus = f"{self.cluster_cpus:g} CPU{'' if self.cluster_cpus == 1 else 's'}"
        return (f"{cpus}: {trials}{self.workers} workers x {self.cpus_per_worker:g} CPU + {self.data_cpus} data "
                f"CPU{trial})")


DATA_BUNDLE = 1  # index of the data CPUs in a trial's placement group


def cluster_capacity() -> tuple[float, float]:
    """(CPUs, GPUs) of the Ray cluster this process is connected to."""
    import ray

    total = ray.cluster_resources()
    return float(total.get("CPU", 0.0)), float(total.get("GPU", 0.0))


def plan_resources(spec: JobSpec, cpus: float, gpus: float = 0.0, tune: bool = False) -> ResourcePlan:
    """Fit ``spec.scaling`` (and, with ``tune``, the trials side by side) on ``cpus``/``gpus``.

    Trials default to as many as fit at the requested CPUs per worker (at least one); the workers' share is then
    lowered, with a warning, to what fits beside the data CPUs. A plan that needs workers below
    MIN_CPUS_PER_WORKER, more GPUs than there are, or data CPUs the cluster lacks is refused (PlanError)."""
    s = spec.scaling
    overhead = TRIAL_CPU if tune else 0.0
    gpus_per_training = s.num_workers * s.gpus_per_worker if s.use_gpu else 0
    if s.use_gpu and gpus <= 0:
        raise PlanError("scaling.use_gpu needs GPUs; the cluster has none: set scaling.use_gpu=false")
    if s.use_gpu and s.gpus_per_worker < 1 and s.num_workers > 1:
        raise PlanError(f"scaling.gpus_per_worker={s.gpus_per_worker:g} with {s.num_workers} workers could put two "
                        "ranks of one training on one GPU, which NCCL refuses: set scaling.num_workers=1 (trials "
                        "side by side share the GPUs) or scaling.gpus_per_worker=1")
    if gpus_per_training > gpus + 1e-9:
        raise PlanError(f"scaling.use_gpu with {s.num_workers} workers x {s.gpus_per_worker:g} GPU needs "
                        f"{gpus_per_training:g} GPUs; the cluster has {gpus:g}: set "
                        f"scaling.num_workers={max(1, int(gpus // s.gpus_per_worker))} or scaling.use_gpu=false")
    requested = s.num_workers * s.cpus_per_worker + s.data_cpus + overhead
    trials = 1
    if tune:
        if spec.tune.max_concurrent_trials:
            trials = spec.tune.max_concurrent_trials
        else:
            trials = max(1, int(math.floor(cpus / requested + 1e-9)))
            # One trial more when the workers lose at most MAX_SHARE_CUT of their share to fit it (the trials'
            # own 0.01 CPU each): on 4 CPUs two trials at 0.495 CPU per worker, not one at 0.5 and 2 CPUs idle.
            share = _floor((cpus / (trials + 1) - s.data_cpus - overhead) / s.num_workers)
            if share >= max(MIN_CPUS_PER_WORKER, (1 - MAX_SHARE_CUT) * s.cpus_per_worker):
                trials += 1
            if gpus_per_training:
                trials = min(trials, int(gpus / gpus_per_training + 1e-9))
        if gpus_per_training * trials > gpus + 1e-9:
            raise PlanError(f"{trials} trials side by side need {gpus_per_training * trials:g} GPUs; the cluster "
                            f"has {gpus:g}: set tune.max_concurrent_trials="
                            f"{max(1, int(gpus / gpus_per_training + 1e-9))}"
                            + ("" if s.gpus_per_worker < 1 or s.num_workers > 1 else
                               " (or scaling.gpus_per_worker below 1: small models share a GPU)"))
    per_worker = min(s.cpus_per_worker, _floor((cpus / trials - s.data_cpus - overhead) / s.num_workers))
    plan = ResourcePlan(cpus, gpus, s.num_workers, per_worker, s.use_gpu, s.data_cpus, trials, overhead,
                        s.gpus_per_worker)
    if per_worker < MIN_CPUS_PER_WORKER:
        raise PlanError(_refusal(spec, plan, cpus, overhead, tune))
    if per_worker < s.cpus_per_worker:
        # a cut within MAX_SHARE_CUT is the plan's own rounding (the trials' 0.01 CPU each): not worth a warning
        cut_much = per_worker < (1 - MAX_SHARE_CUT) * s.cpus_per_worker
        (log.warning if cut_much else log.info)(
            "scaling: %s: %d workers x %g CPU would not fit beside the data CPUs; using %g CPU per worker",
            plan.describe(), s.num_workers, s.cpus_per_worker, per_worker)
    return plan


def _refusal(spec: JobSpec, plan: ResourcePlan, cpus: float, overhead: float, tune: bool) -> str:
    """Why the plan cannot fit and what would."""
    s = spec.scaling
    want = ResourcePlan(cpus, plan.cluster_gpus, s.num_workers, s.cpus_per_worker, s.use_gpu, s.data_cpus,
                        plan.trials, overhead, s.gpus_per_worker)
    fixes = []
    if tune and plan.trials > 1:
        fitting = int(math.floor(cpus / (s.num_workers * MIN_CPUS_PER_WORKER + s.data_cpus + overhead) + 1e-9))
        if fitting >= 1:
            fixes.append(f"tune.max_concurrent_trials={min(fitting, plan.trials - 1)}")
    share = _floor((cpus / plan.trials - s.data_cpus - overhead) / s.num_workers)
    if share >= MIN_CPUS_PER_WORKER:
        fixes.append(f"scaling.cpus_per_worker={share:g}")
    workers = int(math.floor((cpus / plan.trials - s.data_cpus - overhead) / max(s.cpus_per_worker,
                                                                                   MIN_CPUS_PER_WORKER) + 1e-9))
    if 1 <= workers < s.num_workers:
        fixes.append(f"scaling.num_workers={workers}")
    if s.data_cpus > 1:
        fixes.append("scaling.data_cpus=1")
    total = f"{want.trials * want.per_training:g}" if want.trials > 1 else f"{want.per_training:g}"
    return (f"the run does not fit: {want.describe()} = {total} CPUs, and Ray Data's read tasks need "
            f"{s.data_cpus} whole CPU{'s' if s.data_cpus > 1 else ''} per training beside workers of at least "
            f"{MIN_CPUS_PER_WORKER:g} CPU; " + (f"set {' or '.join(fixes)}" if fixes else
                                               "run on a cluster with more CPUs"))


def check_predict(actors: int, use_gpu: bool, cpus: float, gpus: float) -> None:
    """Prediction: ``actors`` model replicas (one CPU each, or one GPU each) beside one CPU for the read tasks."""
    if use_gpu and actors > gpus:
        raise PlanError(f"--actors {actors} with --gpu needs {actors} GPUs; the cluster has {gpus:g}: "
                        f"set --actors {max(1, int(gpus))}" if gpus >= 1 else
                        "--gpu needs GPUs; the cluster has none: leave out --gpu")
    if not use_gpu and actors + 1 > cpus:
        raise PlanError(f"{cpus:g} CPUs: {actors} model replicas x 1 CPU + 1 CPU for reading = {actors + 1}: "
                        f"set --actors {max(1, int(cpus) - 1)}" if cpus >= 2 else
                        f"{cpus:g} CPU: prediction needs one CPU for a model replica and one for reading")


# ---------------------------------------------------------------------------------------- the data CPUs


def data_strategy(placement_group, bundle_index: int):
    """Ray scheduling into ``bundle_index`` of ``placement_group`` (and everything those tasks start)."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return PlacementGroupSchedulingStrategy(placement_group=placement_group, placement_group_bundle_index=bundle_index,
                                            placement_group_capture_child_tasks=True)


def orphaned_groups(before: set[str]) -> list:
    """Placement groups of this job made since ``before`` (ids) that no live Ray Train controller of this job can
    still remove: Ray Train's cleaner misses a worker group still pending when its controller died (issue 20:
    such a group held the CPUs of every later trial)."""
    import ray
    from ray.util.state import list_actors, list_placement_groups

    from pipeline.watchdog import state_address

    job = ray.get_runtime_context().get_job_id()
    address = state_address()
    if list_actors(address=address, filters=[("class_name", "=", "TrainController"), ("state", "=", "ALIVE"),
                                             ("job_id", "=", job)], timeout=STATE_API_TIMEOUT_S,
                   raise_on_missing_output=False):
        return []
    return [g for g in list_placement_groups(address=address, filters=[("creator_job_id", "=", job)],
                                             timeout=STATE_API_TIMEOUT_S, raise_on_missing_output=False)
            if g.placement_group_id not in before and g.state in ("CREATED", "PENDING", "RESCHEDULING")
            and g.name != DATA_GROUP]


def group_ids() -> set[str]:
    from ray.util.state import list_placement_groups

    from pipeline.watchdog import state_address

    return {g.placement_group_id for g in list_placement_groups(address=state_address(), limit=10_000,
                                                                timeout=STATE_API_TIMEOUT_S,
                                                                raise_on_missing_output=False)}


@contextlib.contextmanager
def no_orphaned_groups():
    """Remove, after the block, the placement groups it left with no owner to remove them (best effort)."""
    import ray
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    try:
        before = group_ids()
    except Exception:  # noqa: BLE001  (no state API: nothing to sweep with)
        before = None
    try:
        yield
    except (KeyboardInterrupt, SystemExit):  # the command is ending: Ray removes its job's groups with it
        before = None
        raise
    finally:
        if before is not None:
            try:
                for g in orphaned_groups(before):
                    # routine after a trial's Train controller ends: the log file's business, not the terminal's
                    log.info("removing placement group %s left by an ended training", g.placement_group_id)
                    remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(g.placement_group_id))))
            except Exception as e:  # noqa: BLE001
                log.warning("could not sweep leftover placement groups: %s", e)


def groups_of_dead_creators() -> list:
    """This job's live placement groups whose creating actor has died (``PlacementGroupTableData`` from the GCS).
    Ray removes a group only when both its creator actor and its job are gone, so a Train worker group whose
    controller died (a killed Tune trial takes its controller with it) holds its CPUs until the driver exits, and
    the same trial run again waits for them for good (found by tests/test_chaos.py). Groups made by the driver
    (Tune's trial groups, ``mmpipe-data``) have no creator actor and are never listed."""
    import ray
    from ray._private.state import state  # Ray internals (2.60): the GCS table keeps the creator's fate
    from ray.core.generated import gcs_pb2

    table = gcs_pb2.PlacementGroupTableData
    live = (table.PENDING, table.PREPARED, table.CREATED, table.RESCHEDULING)
    job = ray.get_runtime_context().get_job_id()
    nil = ray.ActorID.nil().binary()
    found = []
    for raw in state._connect_and_get_accessor().get_placement_group_table():
        g = table.FromString(raw)
        made_by_an_actor = g.creator_actor_id and g.creator_actor_id != nil  # the GCS marks a driver's "dead"
        if (g.state in live and made_by_an_actor and g.creator_actor_dead and not g.is_detached
                and g.creator_job_id.hex() == job):
            found.append(ray.PlacementGroupID(g.placement_group_id))
    return found


def remove_groups_of_dead_creators() -> int:
    """Remove ``groups_of_dead_creators`` (best effort: an error is logged, never raised); how many."""
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    try:
        groups = groups_of_dead_creators()
        for group_id in groups:
            log.info("removing placement group %s: the actor that made it died", group_id.hex())
            remove_placement_group(PlacementGroup(group_id))
        return len(groups)
    except Exception as e:  # noqa: BLE001  (internals moved in another Ray version: only the sweep is lost)
        log.debug("could not sweep placement groups of dead actors: %s", e)
        return 0


DATA_GROUP = "mmpipe-data"


@contextlib.contextmanager
def data_reservation(cpus: int, timeout_s: float = RESERVE_TIMEOUT_S):
    """A placement group of ``cpus`` CPUs for a train run's data tasks, held for the ``with`` block and removed
    after it (also on failure); yields the scheduling strategy into it. Raises PlanError, with what holds the
    cluster's CPUs, when it cannot be reserved within ``timeout_s``."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    pg = placement_group([{"CPU": cpus}], name=DATA_GROUP)
    try:
        ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
        if not ready:
            from pipeline.watchdog import cluster_state

            raise PlanError(f"could not reserve {cpus} CPU for the data pipeline within {timeout_s:.0f} s: other "
                            f"work holds the cluster's CPUs.\n{cluster_state()}")
        yield data_strategy(pg, 0)
    finally:
        remove_placement_group(pg)
