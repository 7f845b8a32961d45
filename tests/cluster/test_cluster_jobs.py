"""Submitting runs to a real `ray start` cluster that this module starts, with token authentication on.

The cluster runs in its own session (its own temp dir, ports and token file) and teardown stops only that
session's processes: a bare `ray stop` would also kill the other Ray instances on this machine.
One head node only: a second node would need CPUs that 2 cores do not have to spare.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.cluster import ClusterError
from pipeline.cluster import jobs as J
from pipeline.cluster.auth import find_token
from pipeline.cluster.workdir import SHIPPED_SPEC, stage_working_dir
from pipeline.data.tools.demo import write_demo
import support

ROOT = support.ROOT
FAST = ["train.epochs=1", "scaling.num_workers=1", "scaling.cpus_per_worker=0.5", "augment.enabled=false"]


# ---------------------------------------------------------------- offline: token lookup, address, the plan

@pytest.fixture
def no_auth_env(monkeypatch, tmp_path):
    for var in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.ray/auth_token
    return tmp_path


def test_token_found_in_rays_order(no_auth_env, monkeypatch):
    assert not find_token().value
    default = no_auth_env / "home" / ".ray" / "auth_token"
    default.parent.mkdir(parents=True)
    default.write_text("from-home\n")
    assert find_token().value == "from-home"
    (no_auth_env / "tok").write_text("  from-path \n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(no_auth_env / "tok"))
    assert find_token().value == "from-path"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    token = find_token()
    assert token.value == "from-env" and "from-env" not in repr(token)
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    (no_auth_env / "tok").write_text("")
    with pytest.raises(ClusterError, match="is empty"):  # like Ray: a bad token file is an error, not skipped
        find_token()


def test_address_comes_from_option_spec_or_http_ray_address(no_auth_env, monkeypatch):
    with pytest.raises(ClusterError, match="--address"):
        J.resolve_address(None)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")  # a GCS address (as inside a job) is not a dashboard URL
    with pytest.raises(ClusterError, match="no cluster address"):
        J.resolve_address(None)
    monkeypatch.setenv("RAY_ADDRESS", "http://10.0.0.5:8265/")
    assert J.resolve_address(None) == "http://10.0.0.5:8265"
    assert J.resolve_address(None, "http://head:8265") == "http://head:8265"
    with pytest.raises(ClusterError, match="e.g. http://127.0.0.1:8265"):
        J.resolve_address("head:8265")


def test_plan_ships_the_resolved_spec_and_warns_about_local_storage(tmp_path):
    write_demo(tmp_path / "data", seed=1, scale=0.05)
    spec = tmp_path / "data" / "spec.yaml"
    local = J.plan_submission(spec, "http://127.0.0.1:8265", FAST, str(tmp_path / "run"))
    shipped = yaml.safe_load(local.spec_yaml)
    assert shipped["train"]["epochs"] == 1
    assert all(Path(p).is_absolute() for paths in shipped["data"]["splits"].values() for p in paths)
    assert local.entrypoint == f"python -m pipeline.cli run {SHIPPED_SPEC} --run-dir {tmp_path / 'run'}"
    assert local.resources["entrypoint_num_cpus"] == 0 and not local.warnings
    remote = J.plan_submission(spec, "http://10.1.2.3:8265", FAST, "runs/x")
    assert Path(remote.run_dir).is_absolute()
    assert any(w.startswith("run_dir is a local path") for w in remote.warnings)
    assert any("data.splits.train" in w for w in remote.warnings)
    assert not any("run_dir" in w for w in J.plan_submission(spec, "http://10.1.2.3:8265", FAST, "s3://b/r").warnings)


def test_working_dir_holds_code_and_spec_only(tmp_path):
    (ROOT / "pipeline" / "__pycache__").mkdir(exist_ok=True)
    staged = stage_working_dir(tmp_path / "wd", "name: x\n", ["pipeline/examples/"])
    names = {p.relative_to(staged).as_posix() for p in staged.rglob("*")}
    assert {"pipeline/cli/__init__.py", "pipeline/cli/__main__.py", "pipeline/spec.py", SHIPPED_SPEC} <= names
    assert not any("__pycache__" in n or n.endswith((".tar", ".pyc")) or n.startswith(("runs", "tests", ".git"))
                   for n in names)


def test_unreachable_address_is_one_clear_error(no_auth_env):
    with pytest.raises(ClusterError, match=r"cannot reach the Ray dashboard at http://127.0.0.1:\d+"):
        J.job_status(f"http://127.0.0.1:{_free_port()}", "raysubmit_x")


# ---------------------------------------------------------------- a real cluster

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _session_pids(sid: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True, check=True).stdout
    return [int(pid) for pid, s in (line.split() for line in out.splitlines()) if int(s) == sid]


def _pids_mentioning(text: str) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True, check=True).stdout
    return [int(line.split(None, 1)[0]) for line in out.splitlines() if text in line]


def _stop_cluster(leader: subprocess.Popen, temp_dir: str) -> None:
    """SIGTERM `ray start --block` alone (it drains, then stops its node's processes), then SIGKILL whatever is
    left in its session. Only pids of this session (or naming this cluster's temp dir) are signalled."""
    with _ignoring(ProcessLookupError):
        leader.send_signal(signal.SIGTERM)
    try:
        leader.wait(timeout=40)
    except subprocess.TimeoutExpired:
        pass
    for _ in range(3):
        left = set(_session_pids(leader.pid)) | set(_pids_mentioning(temp_dir))
        if not left:
            break
        for pid in left:
            with _ignoring(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(1)
    leader.poll()


class _ignoring:
    def __init__(self, *exc):
        self.exc = exc

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        return kind is not None and issubclass(kind, self.exc)


@pytest.fixture(scope="module")
def cluster():
    temp_dir = tempfile.mkdtemp(prefix="mmc-", dir="/tmp")  # Ray's unix socket paths must stay short
    token_file = Path(temp_dir) / "token"
    token_file.write_text(secrets.token_hex(24))
    token_file.chmod(0o600)
    port, dash, agent, client = (_free_port() for _ in range(4))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file),
               RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0")  # 2.60 drains 30 s on SIGTERM by default
    log = open(f"{temp_dir}/ray-start.log", "w")  # noqa: SIM115 (closed in the finally below)
    leader = subprocess.Popen(
        ["ray", "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--dashboard-agent-listen-port",
         str(agent), "--ray-client-server-port", str(client), "--num-cpus", "2", "--temp-dir", f"{temp_dir}/r",
         "--disable-usage-stats", "--block"],
        env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert leader.poll() is None, Path(f"{temp_dir}/ray-start.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the cluster's dashboard did not come up in 90 s"
            with _ignoring(requests.RequestException):
                if requests.get(f"{url}/api/version", timeout=2).status_code == 401:  # up, and wants a token
                    break
            time.sleep(0.5)
        yield {"url": url, "token_file": token_file, "token": token_file.read_text(), "temp_dir": temp_dir}
    finally:
        _stop_cluster(leader, temp_dir)
        log.close()
        left = set(_session_pids(leader.pid)) | set(_pids_mentioning(temp_dir))
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not left, f"cluster processes left behind: {sorted(left)}"


@pytest.fixture
def authed(cluster, no_auth_env, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(cluster["token_file"]))
    return cluster


@pytest.mark.cluster
def test_demo_run_succeeds_and_a_broken_one_fails_with_its_error(authed, tmp_path):
    url, token = authed["url"], authed["token"]
    data = tmp_path / "data"
    write_demo(data, seed=1, scale=0.1)
    # Submitted first, so it fails while the good run trains: train shards that do not exist.
    missing = tmp_path / "gone" / "train-*.tar"
    bad_id = J.submit_run(data / "spec.yaml", url, FAST + [f"data.splits.train={missing}"], str(tmp_path / "bad"))

    # The good run through the CLI, in a process of its own, token in RAY_AUTH_TOKEN: it must never be shown.
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_TOKEN_PATH"}
    env["RAY_AUTH_TOKEN"] = token
    run_dir = tmp_path / "run"
    sets = [a for s in FAST + ["train.batch_size=16", "model.hidden=32"] for a in ("--set", s)]
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "submit", str(data / "spec.yaml"), *sets,
                           "--address", url, "--run-dir", str(run_dir), "--follow"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    output = proc.stdout + proc.stderr
    assert token not in output
    assert proc.returncode == 0, output[-4000:]
    job_id = output.split("submitted ", 1)[1].split()[0]
    assert f"{url}/#/jobs/{job_id}" in output and "SUCCEEDED" in output

    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "succeeded", run
    assert list(run_dir.rglob("best.pt")) and list(run_dir.rglob("metrics.json"))
    info = J.job_info(url, job_id)
    assert info.driver_info is not None  # the driver joined this cluster (ensure_ray used RAY_ADDRESS)
    assert info.metadata["mmpipe.run_dir"] == str(run_dir)
    assert token not in J.job_logs(url, job_id)

    assert J.wait_for(J.connect(url), bad_id, timeout_s=120) == "FAILED"
    assert J.job_status(url, bad_id) == "FAILED"
    assert str(missing.parent) in J.job_logs(url, bad_id)
    assert str(missing.parent) in J.job_info(url, bad_id).message  # the error text, as `jobs status` shows it


@pytest.mark.cluster
def test_stop_unknown_id_and_cli_exit_codes(authed, tmp_path):
    url = authed["url"]
    write_demo(tmp_path / "data", seed=1, scale=0.05)
    job_id = J.submit_run(tmp_path / "data" / "spec.yaml", url, FAST, str(tmp_path / "run"), submission_id=
                          f"mmpipe-stop-{secrets.token_hex(3)}")
    assert J.stop_job(url, job_id) is True
    runner = CliRunner()
    followed = runner.invoke(app, ["jobs", "logs", job_id, "--follow", "--address", url])
    assert followed.exit_code == 1 and "STOPPED" in followed.output  # a followed job that did not succeed
    assert J.job_status(url, job_id) == "STOPPED"

    listed = runner.invoke(app, ["jobs", "list", "--address", url])
    assert listed.exit_code == 0 and job_id in listed.output
    with pytest.raises(ClusterError, match="no job 'raysubmit_nope'"):
        J.job_status(url, "raysubmit_nope")
    unknown = runner.invoke(app, ["jobs", "status", "raysubmit_nope", "--address", url])
    assert unknown.exit_code == 1 and "no job 'raysubmit_nope'" in unknown.output


@pytest.mark.cluster
def test_missing_or_wrong_token_is_one_clear_message(cluster, no_auth_env, monkeypatch):
    with pytest.raises(ClusterError) as missing:
        J.job_status(cluster["url"], "raysubmit_x")
    assert "requires an authentication token" in str(missing.value)
    assert "RAY_AUTH_TOKEN_PATH" in str(missing.value) and "\n" not in str(missing.value)

    wrong = "not-the-token-" + secrets.token_hex(8)
    monkeypatch.setenv("RAY_AUTH_TOKEN", wrong)
    with pytest.raises(ClusterError, match="rejected the token from RAY_AUTH_TOKEN") as rejected:
        J.list_jobs(cluster["url"])
    assert wrong not in str(rejected.value)
    result = CliRunner().invoke(app, ["jobs", "list", "--address", cluster["url"]])
    assert result.exit_code == 1 and "rejected the token" in result.output and wrong not in result.output
