"""Shared fixtures: one local Ray instance per test session, small demo data, raw-batch builders."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest

from pipeline.data.tools.demo import write_demo


@pytest.fixture(scope="session")
def ray_session():
    import ray

    # address="local": never attach to a `ray start` cluster that happens to run on this machine (cluster tests).
    from pipeline.ray_runtime import IDLE_WORKER_KILL_MS

    # As ensure_ray starts it: the dashboard's state API (Ray Train) and idle workers kept between epochs.
    ray.init(address="local", num_cpus=2, include_dashboard=True, logging_level="ERROR",
             _system_config={"idle_worker_killing_time_threshold_ms": IDLE_WORKER_KILL_MS})
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    write_demo(out, seed=1, scale=0.25)
    return out


def raw_batch(samples: list[dict[str, bytes]], url: str = "shard-000.tar") -> dict[str, np.ndarray]:
    """What read_webdataset(decoder=None) yields: one object column per member extension, None where absent."""
    columns = sorted({c for s in samples for c in s if c != "__key__"})
    batch = {"__key__": np.array([s.get("__key__", f"s{i:04d}") for i, s in enumerate(samples)], dtype=object),
             "__url__": np.array([url] * len(samples), dtype=object)}
    for c in columns:
        col = np.empty(len(samples), dtype=object)
        col[:] = [s.get(c) for s in samples]
        batch[c] = col
    return batch


def write_tar(path, members: list[tuple[str, bytes]], mode: str = "w") -> None:
    with tarfile.open(path, mode) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
