"""Start or join Ray once per process."""

from __future__ import annotations

import logging
import os
import sys


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join ``address`` (or RAY_ADDRESS, as inside a Ray job) if given, else start a local instance."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    # The dashboard (bound to 127.0.0.1) serves the state API, which Ray Train's placement-group cleaner polls.
    kwargs = dict(include_dashboard=True, num_cpus=num_cpus) if not address else {}
    # No address: a local instance of our own ("local"), never whichever `ray start` cluster happens to run on
    # this machine (Ray's default). RAY_ADDRESS=auto attaches to that cluster on purpose; Ray sets RAY_ADDRESS
    # for job drivers, so submitted runs join their cluster.
    ray.init(address=address or "local", logging_level=logging.WARNING, **kwargs)
    data_progress(sys.stderr.isatty())


def data_progress(show: bool) -> None:
    """Ray Data progress bars on a terminal only; its per-dataset INFO lines never (they flood logs and CI)."""
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = show
    logging.getLogger("ray.data").setLevel(logging.WARNING)
