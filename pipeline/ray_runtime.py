"""Start or join Ray once per process."""

from __future__ import annotations

import logging
import os
import sys

from pipeline.console import quiet_ray, verbose

# Idle workers beyond Ray's soft limit (the CPU count; Ray Train's and Ray Data's actors alone exceed it on a small
# machine) are killed after 1 s by default: every training epoch's read tasks then met cold workers that imported
# Ray Data and the augmentation libraries again (a demo epoch took 17.5 s instead of 4 s), and workers warmed for
# the first epoch (pipeline/data/streaming/warmup.py) were gone before it began. Our local instance keeps idle workers for a
# minute; cluster.yaml starts Ray with the same setting.
IDLE_WORKER_KILL_MS = 60_000

# Settings for the processes of our own local instance only (a cluster's operator decides its own). Ray Train starts
# a PreemptionWatcher actor per worker group to hear of spot nodes being drained; a single-machine instance has no
# node to lose, and the actor is one more Ray worker process (~2 s of CPU) per training and per Tune trial. Ray
# Train's controller polls its workers every 2 s by default, and a run's start, its checkpoints and its end each
# wait for a poll; every 0.5 s costs a few tiny calls a second and took 2-7 s off a 2-epoch demo run here.
LOCAL_WORKER_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}

_started_here = False
log = logging.getLogger("pipeline")


def _start_local(**kwargs) -> None:
    """A local instance whose services (GCS, raylet, agents, workers) listen on 127.0.0.1 only.

    Ray binds its gRPC servers to loopback only when the node's IP is 127.0.0.1, but ``ray.init`` turns
    ``_node_ip_address="127.0.0.1"`` into the machine's routable address (services.resolve_ip_for_localhost) and
    has no bind option. The node IP comes from services.get_node_ip_address, which answers loopback when
    ray_constants.ENABLE_RAY_CLUSTER is off (Ray's own setting for Windows and macOS, where clusters are
    unsupported): switched off for the start only. tests/test_trust.py checks the listening sockets.
    """
    import ray
    from ray._private import ray_constants

    before = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    # The raylet started here inherits this process's environment and hands it to every worker it starts; set only
    # for the start, so a later join to a cluster from this process does not carry it there. A value the user set
    # wins.
    ours = {k: v for k, v in LOCAL_WORKER_ENV.items() if k not in os.environ}
    os.environ.update(ours)
    try:
        ray.init(address="local", **kwargs)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before
        for key in ours:
            os.environ.pop(key, None)


def _warn_if_unauthenticated(address: str) -> None:
    """Ray sends its token only in token mode (set from RAY_AUTH_MODE, or by ray.init when a token file exists):
    a cluster that let us join without one lets anyone who reaches its ports run code on it."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        log.warning("joined the Ray cluster at %s without an authentication token: it does not require one, so "
                    "anyone who can reach its ports can run code on it. Start it with token authentication "
                    "(RAY_AUTH_MODE=token) or keep it on a private network.", address)


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join ``address`` (or RAY_ADDRESS, as inside a Ray job) if given, else start a local instance."""
    global _started_here
    import ray

    if ray.is_initialized():
        return
    quiet_ray()  # importing ray put its handler on the terminal: ray.init's own warnings go to the log file too
    address = address or os.environ.get("RAY_ADDRESS")
    # No address: a local instance of our own ("local"), never whichever `ray start` cluster happens to run on
    # this machine (Ray's default). RAY_ADDRESS=auto attaches to that cluster on purpose; Ray sets RAY_ADDRESS
    # for job drivers, so submitted runs join their cluster.
    # Workers' output (Ray Train's, Ray Data's, raylet notes, every print) stays in Ray's session folder unless -v:
    # the driver's console shows progress the workers send through their heartbeat (pipeline/progress.py).
    quiet = {"logging_level": logging.WARNING, "log_to_driver": verbose()}
    if address:
        ray.init(address=address, **quiet)
        _warn_if_unauthenticated(address)
    else:  # the dashboard (bound to 127.0.0.1) serves the state API, which Ray Train's placement-group cleaner polls
        _start_local(**quiet, include_dashboard=True, num_cpus=num_cpus,
                     _system_config={"idle_worker_killing_time_threshold_ms": IDLE_WORKER_KILL_MS})
    _started_here = not address
    data_progress(sys.stderr.isatty())
    quiet_ray()  # after ray.init and ray.data: both set up their loggers on the terminal
    if not verbose():
        _driver_messages_to_log()


def _driver_messages_to_log() -> None:
    """Ray prints the messages the cluster publishes to a driver (the raylet's "N PYTHON worker processes have
    been started" notes, worker deaths) straight to stdout, log_to_driver or not; they go to the log file instead.
    Their printer is looked up as a module global by Ray's listener thread on every message, so replacing it here
    takes effect for the running thread. A failed run's error says what failed; the details stay in the log."""
    from ray._private import worker

    if getattr(worker.print_to_stdstream, "_to_log", False):
        return
    messages = logging.getLogger("ray.driver_messages")  # under "ray": quiet_ray sent its lines to the log file

    def to_log(data, ignore_prefix: bool = False) -> None:
        for line in data.get("lines", []):
            messages.warning("(%s) %s", data.get("pid", "ray"), line)

    to_log._to_log = True  # type: ignore[attr-defined]
    worker.print_to_stdstream = to_log


def started_here() -> bool:
    """Whether this process started the Ray instance it uses (a local one, with our settings)."""
    return _started_here


def data_progress(show: bool) -> None:
    """Ray Data progress bars on a terminal only; its per-dataset INFO lines never (they flood logs and CI)."""
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = show
    logging.getLogger("ray.data").setLevel(logging.WARNING)
