"""What a run ran on, and how long its phases took: ``environment.json`` in the run directory.

Written when a run finishes (``pipeline.report.publish_run``); the phase timings come from files the run already
writes (per-epoch seconds in epochs.csv, per-step seconds in steps/*.json, per-trial seconds in trials.csv), so a
report of an old run directory shows what can still be known.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from pipeline.io import atomic_write_text

ENVIRONMENT_FILE = "environment.json"
PACKAGES = ("mmpipe", "ray", "torch", "numpy", "pyarrow", "albumentations", "nlpaug", "audiomentations",
            "tensorboardX", "mlflow-skinny", "mlflow")


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _gpus() -> list[str]:
    if "torch" not in sys.modules:  # importing torch only to say "no GPU" would cost seconds
        return []
    import torch

    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() \
        else []


def _ray_resources() -> dict | None:
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    return {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU", "memory", "object_store_memory")}


def describe(started: float | None = None, ended: float | None = None) -> dict:
    """Versions, machine and cluster of this process, and when the run started and ended (unix seconds)."""
    return {"python": platform.python_version(), "platform": platform.platform(), "host": platform.node(),
            "cpus": os.cpu_count(), "gpus": _gpus(), "ray_cluster": _ray_resources(),
            "packages": {n: v for n in PACKAGES if (v := _version(n))},
            "started": started, "ended": ended,
            "written": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def write_environment(run_dir: Path, started: float | None = None, ended: float | None = None) -> dict:
    env = describe(started, ended)
    atomic_write_text(run_dir / ENVIRONMENT_FILE, json.dumps(env, indent=2, ensure_ascii=False))
    return env
