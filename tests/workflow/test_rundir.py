"""Run-directory mechanics without Ray: scratch folders, atomic commit, completion markers, one run at a time."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from pipeline.workflow.rundir import LOCK_FILE, RunDir, RunLocked


def test_partial_training_is_kept_only_for_the_same_inputs(tmp_path):
    run = RunDir(str(tmp_path / "run"))
    ws = run.workspace("train", "inputs-a")
    (ws / "ray").mkdir()
    (ws / "ray" / "checkpoint").write_text("epoch 3")
    assert (run.workspace("train", "inputs-a") / "ray" / "checkpoint").exists()  # same inputs: resume
    assert not (run.workspace("train", "inputs-b") / "ray").exists()  # changed spec or data: start over


def test_a_half_done_evaluation_is_never_reused(tmp_path):
    run = RunDir(str(tmp_path / "run"))
    (run.workspace("evaluate", "x") / "evaluation.json").write_text("{")
    assert not (run.workspace("evaluate", "x") / "evaluation.json").exists()


def test_commit_moves_outputs_in_one_step_and_marks_nothing_by_itself(tmp_path):
    run = RunDir(str(tmp_path / "run"))
    ws = run.workspace("evaluate", "x")
    (ws / "evaluation.json").write_text("{}")
    sha = run.commit("evaluate", ws)
    assert (tmp_path / "run" / "evaluate" / "evaluation.json").exists() and not ws.exists()
    assert run.completed("evaluate", "x") is None  # complete only once the manifest says so
    run.write_manifest("evaluate", {"status": "succeeded", "inputs_sha256": "x", "outputs_sha256": sha})
    assert run.completed("evaluate", "x")["outputs_sha256"] == sha
    assert run.completed("evaluate", "y") is None


# ---------------------------------------------------------------- one run at a time
HOLDER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from pipeline.workflow.rundir import RunDir

    uri, cache = sys.argv[1], Path(sys.argv[2])
    with RunDir(uri, cache=cache).lock():
        print("holding", flush=True)
        sys.stdin.read()  # until the test closes our stdin
""")


def hold(uri: str, cache) -> subprocess.Popen:
    """Another process holding ``uri`` (with its own local cache, as on another machine) until its stdin closes."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, uri, str(cache)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "holding"
    return proc


def release(proc: subprocess.Popen) -> None:
    proc.stdin.close()
    assert proc.wait(timeout=60) == 0


@pytest.mark.parametrize("kind", ["local", "uri"])
def test_a_second_run_on_the_same_run_directory_is_refused_while_the_first_holds_it(tmp_path, kind):
    # local:// is an fsspec URI on this disk: the lock-file path, as for s3:// or gs://, shared by two processes.
    uri = str(tmp_path / "run") if kind == "local" else f"local://{tmp_path}/run"
    first = hold(uri, tmp_path / "cache-a")
    try:
        with pytest.raises(RunLocked) as e:
            RunDir(uri, cache=tmp_path / "cache-b").lock()
        message = str(e.value)
        assert f"{uri} is in use by another mmpipe run: pid {first.pid} on {socket.gethostname()}" in message
        assert "another --run-dir" in message
    finally:
        release(first)
    with RunDir(uri, cache=tmp_path / "cache-b").lock():  # free again once the first is done
        pass


def test_a_lock_left_on_a_uri_by_a_dead_process_of_this_machine_is_taken_over(tmp_path):
    uri = f"local://{tmp_path}/run"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = {"pid": int(dead.stdout), "host": socket.gethostname(), "user": "someone", "since": "2026-01-01"}
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / LOCK_FILE).write_text(json.dumps(stale))
    with RunDir(uri, cache=tmp_path / "cache").lock():
        assert json.loads((tmp_path / "run" / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert not (tmp_path / "run" / LOCK_FILE).exists()  # released: removed from the URI
    other_machine = {**stale, "host": "elsewhere.example"}
    (tmp_path / "run" / LOCK_FILE).write_text(json.dumps(other_machine))
    with pytest.raises(RunLocked, match=rf"pid {stale['pid']} on elsewhere.example .*delete {uri}/{LOCK_FILE}"):
        RunDir(uri, cache=tmp_path / "cache").lock()


def test_a_killed_holder_leaves_no_lock_on_a_local_run_directory(tmp_path):
    first = hold(str(tmp_path / "run"), tmp_path / "cache")
    first.kill()
    first.wait(timeout=60)
    with RunDir(str(tmp_path / "run")).lock():  # the kernel released the flock with the process
        pass
