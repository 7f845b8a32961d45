"""Submit ``mmpipe run SPEC`` to a Ray cluster through the Jobs API, and query, follow and stop jobs.

Every failure a user can fix (no address, cluster unreachable, token missing or wrong, unknown job id) is raised
as one ClusterError whose message says what to do. The token never appears in a message: see auth.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlparse

from pipeline import storage
from pipeline.cluster import ClusterError, NoSuchJob
from pipeline.cluster.auth import HOW_TO_SUPPLY, Token, find_token
from pipeline.cluster.workdir import DEFAULT_EXCLUDES, SHIPPED_SPEC, stage_working_dir

log = logging.getLogger("pipeline.cluster")

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


# ---------------------------------------------------------------- where the cluster is

def resolve_address(address: str | None, spec_address: str | None = None, with_spec: bool = False) -> str:
    """--address, then the spec's submit.address, then RAY_ADDRESS when it is a dashboard URL. ``with_spec``: the
    command read a spec (submit), so its submit.address is one of the ways to give the address."""
    env = os.environ.get("RAY_ADDRESS", "")
    chosen = address or spec_address or (env if env.startswith(("http://", "https://")) else None)
    if not chosen:
        ways = "pass --address http://HEAD:8265 (the dashboard URL), " + \
            ("set submit.address in the spec, " if with_spec else "") + "or export RAY_ADDRESS=http://HEAD:8265"
        raise ClusterError(f"no cluster address: {ways}")
    parsed = urlparse(chosen)
    if parsed.scheme not in ("http", "https") or not parsed.hostname or not parsed.port:
        raise ClusterError(f"cluster address {chosen!r}: expected the dashboard URL with its port, "
                           "e.g. http://127.0.0.1:8265")
    return chosen.rstrip("/")


def is_local(address: str) -> bool:
    return urlparse(address).hostname in LOCAL_HOSTS


def dashboard_url(address: str, job_id: str) -> str:
    return f"{address}/#/jobs/{job_id}"


# ---------------------------------------------------------------- the client, and errors a user can act on

_env_lock = threading.Lock()


@contextlib.contextmanager
def _address_not_overridden() -> Iterator[None]:
    # JobSubmissionClient lets RAY_API_SERVER_ADDRESS / RAY_ADDRESS override its address argument (inside a Ray
    # job RAY_ADDRESS is the GCS address): hide them while the client resolves the address we chose.
    with _env_lock:
        saved = {k: os.environ.pop(k) for k in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS") if k in os.environ}
        try:
            yield
        finally:
            os.environ.update(saved)


@contextlib.contextmanager
def _cluster_errors(address: str, token: Token, job_id: str | None = None) -> Iterator[None]:
    """Ray's exceptions, as one line naming the address, the job and the fix; the token redacted."""
    import aiohttp
    import requests
    from ray.exceptions import AuthenticationError

    try:
        yield
    except AuthenticationError as e:
        # HTTP 403: a token of ours was sent and rejected. Without one of ours, Ray's client may still have sent
        # one it holds from a Ray instance this process started; that is still "no token supplied".
        if "Authentication failed" in str(e) and token.value:
            raise ClusterError(f"the cluster at {address} rejected the token from {token.source}: it is not this "
                               f"cluster's token; {HOW_TO_SUPPLY}") from None
        where = f" ({token.source})" if token.source else ""
        raise ClusterError(f"the cluster at {address} requires an authentication token and none was sent{where}; "
                           f"{HOW_TO_SUPPLY}") from None
    # aiohttp / asyncio.TimeoutError: the log stream of --follow (ws_connect) fails with these, not requests'.
    except (ConnectionError, requests.exceptions.RequestException, aiohttp.ClientError, asyncio.TimeoutError) as e:
        raise ClusterError(f"cannot reach the Ray dashboard at {address} ({type(e).__name__}): is the cluster up, "
                           "and the port forwarded (`ray dashboard cluster.yaml`)?") from None
    except RuntimeError as e:
        text = token.redact(str(e))
        if job_id and "status code 404" in text:
            raise NoSuchJob(f"no job {job_id!r} on the cluster at {address} (see `mmpipe jobs list`)") from None
        raise ClusterError(f"the cluster at {address} refused the request: {text.splitlines()[0]}") from None


@dataclass
class Connection:
    address: str
    token: Token
    client: object  # ray.job_submission.JobSubmissionClient

    def call(self, method: str, *args, job_id: str | None = None, **kwargs):
        with _cluster_errors(self.address, self.token, job_id):
            return getattr(self.client, method)(*args, **kwargs)


def connect(address: str | None, spec_address: str | None = None, with_spec: bool = False) -> Connection:
    from ray.job_submission import JobSubmissionClient

    address = resolve_address(address, spec_address, with_spec)
    token = find_token()
    if token.value and urlparse(address).scheme == "http" and not is_local(address):
        log.warning("the token travels unencrypted over http to %s; prefer an SSH tunnel "
                    "(`ray dashboard cluster.yaml`, then http://127.0.0.1:8265) or https", address)
    with _cluster_errors(address, token), _address_not_overridden():
        client = JobSubmissionClient(address, headers=token.headers())
    return Connection(address, token, client)


# ---------------------------------------------------------------- what gets submitted

@dataclass
class Submission:
    """Everything sent for one run; built without contacting the cluster."""
    spec_yaml: str
    run_dir: str
    entrypoint: str
    runtime_env: dict
    resources: dict
    metadata: dict
    warnings: list[str] = field(default_factory=list)


def entrypoint(run_dir: str) -> str:
    return f"python -m pipeline.cli run {SHIPPED_SPEC} --run-dir {shlex.quote(run_dir)}"


def storage_warnings(spec, run_dir: str, address: str) -> list[str]:
    """Local paths only work when every node sees them; on a remote cluster they must be shared storage."""
    if is_local(address):
        return []
    local = [("run_dir", run_dir), ("registry.uri", spec.registry.uri or "")]
    local += [(f"data.splits.{k}", p) for k, paths in spec.data.splits.items() for p in paths]
    return [f"{what} is a local path ({path}) but the cluster at {address} is not on this machine: every node "
            "must see it at that path (a shared filesystem), or use an s3:// or gs:// URI"
            for what, path in local if path and storage.is_local(path)]


def plan_submission(spec_path: Path, address: str, overrides: list[str], run_dir: str | None = None) -> Submission:
    from pipeline.spec import dump_spec
    from pipeline.spec_checks import load_job as load_spec  # SpecError propagates: the caller reports bad specs

    spec = load_spec(spec_path, overrides)  # paths resolved: absolute or URIs, valid on any node
    run_dir = run_dir or spec.workflow.run_dir or str(Path.cwd() / "runs" / spec.name)
    if storage.is_local(run_dir):
        run_dir = str(storage.local_path(run_dir).expanduser().resolve())
    sub = spec.submit
    return Submission(
        spec_yaml=dump_spec(spec), run_dir=run_dir, entrypoint=entrypoint(run_dir),
        # PYTHONUNBUFFERED: the driver writes to a log file; unbuffered, `--follow` shows lines as they happen.
        runtime_env={"env_vars": {"PYTHONUNBUFFERED": "1", **sub.env_vars},
                     "excludes": DEFAULT_EXCLUDES + sub.excludes},
        resources={"entrypoint_num_cpus": sub.entrypoint_num_cpus, "entrypoint_num_gpus": sub.entrypoint_num_gpus,
                   "entrypoint_memory": sub.entrypoint_memory_mb * 1024 ** 2 if sub.entrypoint_memory_mb else None},
        metadata={"mmpipe.spec": spec.name, "mmpipe.run_dir": run_dir},
        warnings=storage_warnings(spec, run_dir, address))


def send(conn: Connection, plan: Submission, submission_id: str | None = None) -> str:
    with tempfile.TemporaryDirectory(prefix="mmpipe-job-") as tmp:
        runtime_env = {**plan.runtime_env, "working_dir": str(stage_working_dir(Path(tmp), plan.spec_yaml,
                                                                                  plan.runtime_env["excludes"]))}
        return conn.call("submit_job", entrypoint=plan.entrypoint, runtime_env=runtime_env,
                         submission_id=submission_id, metadata=plan.metadata, **plan.resources)


# ---------------------------------------------------------------- the functions the scheduler uses

def submit_run(spec_path: Path, address: str | None, overrides: list[str], run_dir: str | None = None,
               submission_id: str | None = None) -> str:
    """Submit ``mmpipe run`` of the spec; returns the job (submission) id."""
    from pipeline.spec_checks import load_job as load_spec

    spec_address = None if address else load_spec(spec_path, overrides).submit.address
    conn = connect(address, spec_address, with_spec=True)
    plan = plan_submission(Path(spec_path), conn.address, overrides, run_dir)
    for w in plan.warnings:
        log.warning(w)
    return send(conn, plan, submission_id)


def job_status(address: str | None, job_id: str) -> str:
    """PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED."""
    return connect(address).call("get_job_status", job_id, job_id=job_id).value


def job_info(address: str | None, job_id: str):
    """Ray's JobDetails: status, message (a failed job's error and last log lines), metadata, driver_info."""
    return connect(address).call("get_job_info", job_id, job_id=job_id)


def stop_job(address: str | None, job_id: str) -> bool:
    """Ask the job to stop; True if it was still running."""
    return connect(address).call("stop_job", job_id, job_id=job_id)


def job_logs(address: str | None, job_id: str) -> str:
    return connect(address).call("get_job_logs", job_id, job_id=job_id)


def list_jobs(address: str | None) -> list:
    return connect(address).call("list_jobs")


def wait_for(conn: Connection, job_id: str, timeout_s: float | None = None, poll_s: float = 1.0) -> str:
    """Poll until the job ends; returns its final status."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while (status := conn.call("get_job_status", job_id, job_id=job_id).value) not in TERMINAL:
        if deadline is not None and time.monotonic() > deadline:
            raise ClusterError(f"job {job_id} still {status} after {timeout_s:.0f} s")
        time.sleep(poll_s)
    return status


def follow(conn: Connection, job_id: str, write: Callable[[str], object]) -> str:
    """Stream the job's log to ``write`` as it grows, until the job ends; returns the final status."""
    async def tail() -> None:
        async for chunk in conn.client.tail_job_logs(job_id):
            write(chunk)

    conn.call("get_job_status", job_id, job_id=job_id)  # an unknown id fails here, with a clear message
    with _cluster_errors(conn.address, conn.token, job_id):
        try:
            asyncio.run(tail())
        except RuntimeError as e:
            if "closed unexpectedly" not in str(e):  # the stream broke (dashboard restart): fall back to polling
                raise
            log.warning("log stream of %s broke; waiting for the job to end", job_id)
    return wait_for(conn, job_id)
