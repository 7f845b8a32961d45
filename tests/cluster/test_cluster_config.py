"""cluster.yaml and docs/cluster-aws.yaml pass the installed ray's schema and Ray's own config validation, offline."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml

from pipeline.cluster.config import check_cluster_config, placeholders, ray_schema
import support

ROOT = support.ROOT
CONFIGS = [ROOT / "cluster.yaml", ROOT / "docs" / "cluster-aws.yaml"]


def _raw(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_passes_schema_and_ray_validation(path):
    prepared = check_cluster_config(path)
    assert prepared["head_node_type"] in prepared["available_node_types"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_head_binds_dashboard_locally_with_token_auth(path):
    raw = _raw(path)
    head_start = " ".join(raw["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [c for c in raw[key] if "ray start" in c]
        assert start and all("RAY_AUTH_MODE=token" in c for c in start), key
    # Every node gets the same token and installs this project.
    assert raw["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert raw["file_mounts"]["~/mmpipe"] == "."
    assert any("pip install ~/mmpipe" in c for c in raw["setup_commands"])


def test_on_prem_placeholders_are_marked():
    found = placeholders(_raw(ROOT / "cluster.yaml"))
    assert {"provider.head_ip", "provider.worker_ips[0]", "auth.ssh_user"} <= set(found)
    text = (ROOT / "cluster.yaml").read_text()
    assert text.count("REPLACE_ME") >= len(found)  # the comments point at each of them too


def test_aws_placeholders_are_marked():
    found = placeholders(_raw(ROOT / "docs" / "cluster-aws.yaml"))
    assert any(p.endswith("ImageId") for p in found) and any(p.endswith("Arn") for p in found)


def test_schema_rejects_an_unknown_top_level_key():
    raw = _raw(ROOT / "cluster.yaml")
    raw["setup_comands"] = []
    with pytest.raises(jsonschema.ValidationError, match="setup_comands"):
        jsonschema.validate(raw, ray_schema())


def test_ray_validation_rejects_a_head_type_not_among_node_types(tmp_path):
    raw = copy.deepcopy(_raw(ROOT / "docs" / "cluster-aws.yaml"))
    raw["head_node_type"] = "no_such_type"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match="head_node_type"):
        check_cluster_config(bad)


# Not about cluster.yaml: kept here because this file needs no Ray cluster (test_cluster_jobs.py starts one).
@pytest.mark.parametrize("error", ["aiohttp", "timeout"])
def test_log_stream_connection_errors_read_as_unreachable(error):
    """`mmpipe jobs logs --follow` streams over aiohttp (ws_connect): its errors are one ClusterError, no traceback."""
    import asyncio

    import aiohttp

    from pipeline.cluster import ClusterError
    from pipeline.cluster.auth import Token
    from pipeline.cluster.jobs import _cluster_errors

    raised = aiohttp.ClientConnectionError("Cannot connect to host head:8265") if error == "aiohttp" \
        else asyncio.TimeoutError()
    with pytest.raises(ClusterError, match="cannot reach the Ray dashboard at http://head:8265"):
        with _cluster_errors("http://head:8265", Token(), "raysubmit_1"):
            raise raised


def test_an_unknown_job_id_is_no_such_job():
    from pipeline.cluster import NoSuchJob
    from pipeline.cluster.auth import Token
    from pipeline.cluster.jobs import _cluster_errors

    with pytest.raises(NoSuchJob, match="no job 'raysubmit_1'"):
        with _cluster_errors("http://head:8265", Token(), "raysubmit_1"):
            raise RuntimeError("Request failed with status code 404: Job raysubmit_1 does not exist.")
