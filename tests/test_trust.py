"""What mmpipe trusts: folders it would unpickle from, the cluster token's file, the sockets of a local Ray, and
checkpoints whose stored spec names things this installation does not have."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from pipeline.trust import UntrustedPath, check_private_dir, private_group, readable_by_others

posix_only = pytest.mark.skipif(os.name != "posix", reason="file modes and owners are POSIX")


def experiment(tmp_path):
    """A run directory holding a Tune experiment as Tune leaves it: pickles in the experiment and trial folders."""
    run = tmp_path / "run"
    exp = run / "tune.partial" / "experiment"
    (exp / "trial_0").mkdir(parents=True)
    (exp / "tuner.pkl").write_bytes(b"\x80\x04N.")
    (exp / "trial_0" / "params.pkl").write_bytes(b"\x80\x04N.")
    for p in (run, run / "tune.partial", exp, exp / "trial_0"):
        p.chmod(0o755)
    return run, exp


@posix_only
def test_a_private_experiment_is_trusted_and_a_shared_parent_outside_the_run_is_not_our_business(tmp_path):
    run, exp = experiment(tmp_path)
    tmp_path.chmod(0o777)  # above the run directory: not checked
    try:
        check_private_dir(exp, "the tune experiment to resume", root=run)
    finally:
        tmp_path.chmod(0o755)


def shared_group(path) -> None:
    """Give ``path`` a group other users are in (not the user's private group, whose write bit is harmless)."""
    if private_group(path.stat().st_gid):
        if os.geteuid() != 0:
            pytest.skip("files get this user's private group, and only root can give them another")
        os.chown(path, -1, 65534)


@posix_only
@pytest.mark.parametrize("where, mode, who", [("run", 0o775, "group"), ("experiment", 0o757, "others"),
                                              ("pickle", 0o666, "group and others")])
def test_anything_others_can_write_is_refused_with_the_path_and_the_fix(tmp_path, where, mode, who):
    run, exp = experiment(tmp_path)
    target = {"run": run, "experiment": exp, "pickle": exp / "trial_0" / "params.pkl"}[where]
    shared_group(target)
    target.chmod(mode)
    with pytest.raises(UntrustedPath) as e:
        check_private_dir(exp, "the tune experiment to resume", root=run)
    message = str(e.value)
    assert message.startswith("the tune experiment to resume: refusing to resume from")
    assert f"{target} is writable by {who} (mode " in message and f"chmod -R go-w {run}" in message
    assert "another --out" in message


@posix_only
def test_group_write_is_fine_in_the_users_private_group(tmp_path):
    run, exp = experiment(tmp_path)
    if not private_group(run.stat().st_gid):
        pytest.skip("this user's files do not get a private group")
    for p in (run, exp, exp / "tuner.pkl"):  # as a umask of 002 leaves them
        p.chmod(p.stat().st_mode | 0o020)
    check_private_dir(exp, "the tune experiment to resume", root=run)


@posix_only
@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="giving a file away needs root")
def test_a_file_of_another_user_is_refused_even_when_nobody_else_can_write_it(tmp_path):
    run, exp = experiment(tmp_path)
    os.chown(exp / "tuner.pkl", 65534, 65534)
    with pytest.raises(UntrustedPath, match=r"tuner.pkl belongs to .*uid 65534.*, not to you"):
        check_private_dir(exp, "the tune experiment to resume", root=run)


def test_the_folder_must_lie_inside_its_run_directory(tmp_path):
    with pytest.raises(ValueError, match="is not inside"):
        check_private_dir(tmp_path / "a", "x", root=tmp_path / "b")


@posix_only
def test_a_token_file_others_can_read_is_warned_about(tmp_path, monkeypatch, caplog):
    from pipeline.cluster.auth import find_token

    token = tmp_path / "token"
    token.write_text("s3cr3t\n")
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    token.chmod(0o644)  # what `ray get-auth-token --generate` leaves under a usual umask
    with caplog.at_level(logging.WARNING, logger="pipeline.cluster"):
        assert find_token().value == "s3cr3t"
    assert f"the token file {token} is readable by group and others (mode -rw-r--r--)" in caplog.text
    assert f"chmod 600 {token}" in caplog.text and "s3cr3t" not in caplog.text
    caplog.clear()
    token.chmod(0o600)
    with caplog.at_level(logging.WARNING, logger="pipeline.cluster"):
        find_token()
    assert caplog.text == "" and readable_by_others(token) is None


def test_joining_a_cluster_without_a_token_is_warned_about(monkeypatch, caplog):
    from pipeline.ray_runtime import _warn_if_unauthenticated

    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # Ray sets this when it found a token to send
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        _warn_if_unauthenticated("10.0.0.5:6379")
    assert caplog.text == ""
    monkeypatch.delenv("RAY_AUTH_MODE")
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        _warn_if_unauthenticated("10.0.0.5:6379")
    assert "joined the Ray cluster at 10.0.0.5:6379 without an authentication token" in caplog.text


LISTENERS = textwrap.dedent("""
    import json
    from pipeline.ray_runtime import ensure_ray
    ensure_ray(num_cpus=1)
    import psutil  # Ray ships it (ray/thirdparty_files, on sys.path once ray is imported)
    import ray

    ray.get(ray.remote(lambda: 1).remote())  # a worker process too
    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            found += [[p.name(), c.laddr.ip, c.laddr.port] for c in p.net_connections("inet")
                      if c.status == psutil.CONN_LISTEN]
        except psutil.Error:
            pass
    print(json.dumps({"gcs": ray.get_runtime_context().gcs_address, "node": ray.nodes()[0]["NodeManagerAddress"],
                      "listening": found}))
    ray.shutdown()
""")


@pytest.mark.cluster
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the listening sockets are read on Linux")
def test_a_local_ray_listens_on_loopback_only(tmp_path):
    """In its own process, as `mmpipe` starts it (ensure_ray), looking at every socket that process tree holds."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-c", LISTENERS], capture_output=True, text=True, timeout=300, env=env,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["node"] == "127.0.0.1" and seen["gcs"].startswith("127.0.0.1:")
    ports = {port for _, _, port in seen["listening"]}
    assert int(seen["gcs"].rsplit(":", 1)[1]) in ports  # the GCS itself was among the sockets looked at
    assert {name for name, _, _ in seen["listening"]} >= {"gcs_server", "raylet"}
    exposed = [s for s in seen["listening"] if s[1] not in ("127.0.0.1", "::1", "::ffff:127.0.0.1")]
    assert not exposed, f"listening beyond loopback: {exposed}"


def test_a_checkpoint_naming_an_unknown_augmentation_still_loads(tmp_path):
    """Loading a model reads its stored spec's schema only: transforms are never built (nor looked up), so a
    checkpoint from another installation with other augmentation libraries loads; the full checks would refuse."""
    from pipeline.model.checkpoint import load_model
    from pipeline.model.classifier import MultimodalClassifier
    from pipeline.registry import Registry
    from pipeline.spec import SpecError, spec_from_dict
    from pipeline.spec_checks import job_from_dict

    raw = {"name": "tiny", "modalities": {"image": {"size": [16, 16]}, "text": None, "audio": None},
           "label": {"classes": ["sun", "moon"]}, "model": {"hidden": 8, "image_width": 4},
           "augment": {"image": [{"name": "NoSuchTransform", "params": {"anything": 1}}]}}
    with pytest.raises(SpecError, match="NoSuchTransform"):
        job_from_dict(raw)  # what a training entry point would say about this spec
    spec = spec_from_dict(raw)
    buf = io.BytesIO()
    torch.save({"model": MultimodalClassifier(spec, 2).state_dict(), "classes": ["sun", "moon"],
                "spec": spec.model_dump(mode="json"), "epoch": 0, "metrics": {}}, buf)
    model, loaded, classes = load_model(buf.getvalue())
    assert classes == ["sun", "moon"] and loaded.augment.image[0].name == "NoSuchTransform"
    reg = Registry(str(tmp_path / "reg"))
    version = reg.register(buf.getvalue(), "name: tiny\n", {}, "run-1")
    assert reg.load(version).spec.augment.image[0].name == "NoSuchTransform"


@posix_only
def test_a_link_to_a_shared_place_is_judged_by_its_target(tmp_path):
    run, exp = experiment(tmp_path)
    shared = tmp_path / "shared.pkl"
    shared.write_bytes(b"\x80\x04N.")
    shared_group(shared)
    shared.chmod(0o666)
    (exp / "searcher-state.pkl").symlink_to(shared)
    with pytest.raises(UntrustedPath, match="searcher-state.pkl is writable by group and others"):
        check_private_dir(exp, "the tune experiment to resume", root=run)
