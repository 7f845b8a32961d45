"""Shared fixtures and the test lanes.

Markers come from what a test uses (pyproject lists them): ``ray`` for tests on the session's shared local Ray
instance (the ``ray_session`` fixture, also through other fixtures), ``cluster`` (set by hand) for tests that start
their own Ray, ``fast`` for everything else, and ``slow`` for tests that train through SLOW_FIXTURES. Cluster tests
run last, and the shared instance is shut down before each, so at most one Ray instance runs at a time on the
machine; a ray test after them starts it again. A fast test that starts Ray fails.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pipeline.data.tools.demo import write_demo

# Fixtures that train (or run a whole workflow) before their tests: every test using one is slow.
SLOW_FIXTURES = {"workflows", "cli_runs", "resumed_runs", "invalidated"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "ray_session" in item.fixturenames and not item.get_closest_marker("ray"):
            item.add_marker(pytest.mark.ray)
        if item.get_closest_marker("cluster") and item.get_closest_marker("ray"):
            raise pytest.UsageError(f"{item.nodeid}: a test is ray (the shared instance) or cluster (its own), "
                                    "not both")
        if not (item.get_closest_marker("ray") or item.get_closest_marker("cluster")):
            item.add_marker(pytest.mark.fast)
        if SLOW_FIXTURES & set(item.fixturenames) and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)
    # stable: fast tests first (no Ray alive in the process), then the shared instance's, then cluster tests
    items.sort(key=lambda item: 2 if item.get_closest_marker("cluster") else 1 if item.get_closest_marker("ray") else 0)
    if "chaos" not in config.option.markexpr:  # chaos tests run only when asked for by name (-m chaos)
        chaos = [item for item in items if item.get_closest_marker("chaos")]
        if chaos:
            config.hook.pytest_deselected(items=chaos)
            items[:] = [item for item in items if not item.get_closest_marker("chaos")]
    if " ".join(config.option.markexpr.split()) == "not ray":
        # The lane before `fast` existed: it meant "no Ray at all", so it leaves out the cluster tests too.
        cluster = [item for item in items if item.get_closest_marker("cluster")]
        if cluster:
            config.hook.pytest_deselected(items=cluster)
            items[:] = [item for item in items if not item.get_closest_marker("cluster")]


def _ray_initialized() -> bool:
    ray = sys.modules.get("ray")  # not imported: certainly not started
    return ray is not None and ray.is_initialized()


def _start_shared_ray():
    import ray

    from pipeline.ray_runtime import ensure_ray

    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("RAY_ADDRESS", raising=False)  # always a local instance of our own, never a cluster's
        ensure_ray(num_cpus=2)
    return ray


@pytest.fixture(scope="session")
def ray_session():
    """The local instance exactly as the CLI starts it (``ensure_ray``), so in-process training also warms data
    workers; shared by the whole session."""
    ray = _start_shared_ray()
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True)
def _one_ray_at_a_time(request):
    """Cluster tests get the machine to themselves; a ray test after one finds the shared instance again; a fast
    test must not start Ray."""
    if request.node.get_closest_marker("cluster"):
        if _ray_initialized():
            sys.modules["ray"].shutdown()
    elif request.node.get_closest_marker("ray") and not _ray_initialized():
        _start_shared_ray()
    before = _ray_initialized()
    yield
    if request.node.get_closest_marker("fast") and not before and _ray_initialized():
        sys.modules["ray"].shutdown()
        pytest.fail("a fast test started Ray: mark it ray (use the ray_session fixture) or cluster")


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    write_demo(out, seed=1, scale=0.25)
    return out


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory):
    """The smallest demo data, made by the real command (``mmpipe demo-data --scale 0.1``); shared by the
    end-to-end tests."""
    out = tmp_path_factory.mktemp("tiny") / "data"
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "demo-data", str(out), "--scale", "0.1"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "NO_COLOR": "1"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return out
