"""Run-directory mechanics without Ray: scratch folders, atomic commit, completion markers."""

from pipeline.workflow.rundir import RunDir


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
