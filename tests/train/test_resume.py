"""Resuming is told apart from restarting. Every epoch row of a run (epochs.csv, and the history in each state.pt)
carries the cumulative optimizer step count and a fingerprint of the weights its checkpoint holds; the first epoch
after a resume also says which epoch it resumed from, with the steps and weights it loaded. A restart from scratch
has no such row; a resume that lost the weights or the optimizer state shows other values (support.runs).

The five ways the README promises: a failed worker (tests/train/test_train.py, the DDP run), `mmpipe train` again into the same
`--out` (tests/cli/test_commands_e2e.py, with `--fresh`), an interrupted workflow and a re-run tune (here), a run killed
under the scheduler (tests/schedule/test_schedule_e2e.py); and `mmpipe pretrain` again
(tests/pretrain/test_pretrain_resume.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pipeline.spec import TrainSpec
from pipeline.train.loop import EarlyStopping, checkpoint_state, resume, resume_record, weights_fingerprint
from pipeline.train.optim import apply_gradients, lr_schedule, make_optimizer
from support.runs import assert_not_resumed, assert_resumed, epoch_rows, history_rows


def _run(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 3))
    t = TrainSpec(optimizer="adam", epochs=4)
    optimizer = make_optimizer(t, model.parameters())
    return t, model, optimizer, lr_schedule(t, optimizer, steps_per_epoch=3)


def _step(model, optimizer, scheduler, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)
    apply_gradients(torch.nn.functional.cross_entropy(model(x), y), model, optimizer, scheduler, None)


def test_the_weights_fingerprint_changes_with_any_weight_or_buffer():
    _, model, optimizer, scheduler = _run()
    before = weights_fingerprint(model)
    assert before == weights_fingerprint(_run()[1])  # same seed, same weights
    assert before != weights_fingerprint(_run(seed=1)[1])
    with torch.no_grad():
        model[1].running_mean[0] += 1e-6  # a buffer, by the smallest amount
    assert weights_fingerprint(model) != before


def test_the_resume_record_is_what_the_checkpoint_saved(tmp_path):
    t, model, optimizer, scheduler = _run()
    stopper = EarlyStopping(t.early_stopping_metric, None)
    for i in range(3):
        _step(model, optimizer, scheduler, i)
    saved = {"epoch": 1, "optimizer_steps": scheduler.last_epoch, "weights": weights_fingerprint(model)}  # 1-based
    torch.save(checkpoint_state(model, optimizer, scheduler, stopper, 0, [saved], False), tmp_path / "state.pt")

    _, model2, optimizer2, scheduler2 = _run(seed=5)  # a fresh worker
    state = torch.load(tmp_path / "state.pt", map_location="cpu", weights_only=True)
    start, history = resume(state, model2, optimizer2, scheduler2, EarlyStopping(t.early_stopping_metric, None),
                            t.epochs)
    record = resume_record(model2, scheduler2, state)
    assert start == 1 and record == {"resumed_from_epoch": 1, "resumed_steps": 3, "resumed_weights": saved["weights"]}
    _step(model2, optimizer2, scheduler2, 3)
    rows = [{k: str(v) for k, v in r.items()} for r in history + [
        {"epoch": 2, "optimizer_steps": scheduler2.last_epoch, "weights": weights_fingerprint(model2), **record}]]
    assert assert_resumed(rows, 1) == 1


def _rows(steps: list[int], weights: list[str], resumed: dict | None = None) -> list[dict]:
    rows = [{"epoch": str(e), "optimizer_steps": str(s), "weights": w, "resumed_from_epoch": "",
             "resumed_steps": "", "resumed_weights": ""} for e, (s, w) in enumerate(zip(steps, weights))]
    if resumed:
        rows[resumed.pop("at")].update({k: str(v) for k, v in resumed.items()})
    return rows


@pytest.mark.parametrize("rows, message", [
    (_rows([3, 6], ["a", "b"]), "a restart has none"),  # a restart: no resumed row at all
    (_rows([3, 3], ["a", "b"], {"at": 1, "resumed_from_epoch": 0, "resumed_steps": 0, "resumed_weights": "a"}),
     "step count"),  # the optimizer/schedule state was not restored
    (_rows([3, 6], ["a", "b"], {"at": 1, "resumed_from_epoch": 0, "resumed_steps": 3, "resumed_weights": "x"}),
     "other weights"),  # the weights were not restored
])
def test_the_resume_check_fails_on_a_restart_or_a_lost_state(rows, message):
    with pytest.raises(AssertionError, match=message):
        assert_resumed(rows, 0)


def test_a_fresh_run_is_told_from_a_resumed_one():
    assert_not_resumed(_rows([3, 6], ["a", "b"]), first_epoch_steps=3)
    with pytest.raises(AssertionError):
        assert_not_resumed(_rows([3, 6], ["a", "b"], {"at": 1, "resumed_from_epoch": 0, "resumed_steps": 3,
                                                    "resumed_weights": "a"}), first_epoch_steps=3)


# ---------------------------------------------------------------- an interrupted workflow, in process

FAST = ["train.batch_size=16", "model.hidden=32", "augment.enabled=false", "scaling.max_failures=0",
        "scaling.num_workers=1"]  # one worker (its failure is injected on the last rank): the workflow is tested


@pytest.mark.slow
def test_an_interrupted_workflow_resumes_its_training(ray_session, demo_dir, tmp_path, monkeypatch):
    """The train step fails after epoch 0's checkpoint (a worker dies, no retries left); `mmpipe run` again with
    the same inputs resumes that training from its checkpoint instead of training again."""
    from pipeline.spec_checks import load_job
    from pipeline.train import trainer
    from pipeline.workflow.run import WorkflowFailed, run_workflow

    spec = load_job(demo_dir / "spec.yaml", FAST + ["train.epochs=2", "workflow.steps=[validate-data, train]"])
    run_training = trainer.run_training
    with monkeypatch.context() as patch:
        patch.setattr(trainer, "run_training", lambda *a, **kw: run_training(
            *a, **kw, inject_failure={"epoch": 1, "marker": str(tmp_path / "failed-once")}))
        with pytest.raises(WorkflowFailed, match="step train failed"):
            run_workflow(spec, str(tmp_path / "run"), say=lambda m: None)
    assert (tmp_path / "failed-once").exists()
    run = run_workflow(spec, str(tmp_path / "run"), say=lambda m: None)
    assert run["status"] == "succeeded" and run["attempt"] == 2
    assert [s["status"] for s in run["steps"]] == ["skipped (done earlier)", "succeeded"]
    assert_resumed(epoch_rows(tmp_path / "run" / "train"), from_epoch=1)


# ---------------------------------------------------------------- a tune experiment interrupted, then run again

# No tune.search_space: the default search (3 fusions, each with a drawn optimizer and lr); one worker a trial (DDP
# trials run in tests/cli/test_commands_e2e.py and tests/test_liveness.py). What is checked is the search, its
# outputs and its continuation, not a score.
TUNE = ["tune.num_samples=1", "tune.scheduler=fifo", "train.epochs=4", "train.batch_size=16", "model.hidden=32",
        "augment.enabled=false", "scaling.num_workers=1"]


def _mmpipe(*args: str, **kw) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], env={**env, "NO_COLOR": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


@pytest.mark.cluster
@pytest.mark.slow
def test_a_tune_run_again_after_ctrl_c_resumes_its_unfinished_trial_and_finishes_the_search(tiny_demo, tmp_path):
    """Ctrl-C after the first trial's first checkpoint: Tune saves the experiment and stops. `mmpipe tune` again
    with the same --out continues it: that trial's training resumes from its own checkpoint, the other trials run,
    and the outputs are complete. A third call finds the experiment finished and trains nothing more."""
    from pipeline.spec_checks import load_job
    from pipeline.tune.space import DEFAULT_SEARCH_SPACE

    out = tmp_path / "tune"
    args = ["tune", str(tiny_demo / "spec.yaml"), "--out", str(out), *[a for s in TUNE for a in ("--set", s)]]
    first = _mmpipe(*args)
    deadline = time.monotonic() + 300
    while not list(out.glob("trials/train_*/checkpoint_*/state.pt")):
        assert first.poll() is None, first.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "no trial checkpoint within 300 s"
        time.sleep(0.5)
    first.send_signal(signal.SIGINT)
    log = first.communicate(timeout=300)[0]
    [checkpoints] = {p.parent.parent for p in out.glob("trials/train_*/checkpoint_*/state.pt")}  # one trial

    again = _mmpipe(*args)
    log2 = again.communicate(timeout=600)[0]
    assert again.returncode == 0, log[-2000:] + log2[-3000:]
    latest = max(checkpoints.glob("checkpoint_*/state.pt"), key=lambda p: torch.load(
        p, map_location="cpu", weights_only=True)["epoch"])
    rows = history_rows(latest)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert_resumed(rows)

    fusions = DEFAULT_SEARCH_SPACE["model.fusion"]["grid"]
    assert f"{len(fusions)} trials; best val.macro_f1 = " in log2, log2[-3000:]
    csv_text = (out / "trials.csv").read_text()
    assert csv_text.count("\n") == len(fusions) + 1 and "val.macro_f1" in csv_text
    # the trial table, piped: a line as each trial ends, with what it searched (the first trial's in either run)
    ended = [line for line in (log + log2).splitlines() if " TERMINATED " in line]
    assert {line.split("fusion=")[1].split()[0] for line in ended} == set(fusions), log2[-3000:]
    assert all("optimizer=" in line and "lr=" in line and "best val.macro_f1=" in line
               and "best val.macro_f1=- " not in line for line in ended)
    for name in ("trials_curves.png", "best_by_choice.png", "best_spec.yaml", "data_report.json"):
        assert (out / name).stat().st_size > 0
    best = load_job(out / "best_spec.yaml")  # a complete job spec that trains (tune -> train: test_commands_e2e)
    assert best.model.fusion in fusions and f"'model.fusion': '{best.model.fusion}'" in log2
    assert f"'train.optimizer': '{best.train.optimizer}'" in log2

    spec_text, saved = (out / "best_spec.yaml").read_text(), sorted(out.glob("trials/*/checkpoint_*"))
    third = _mmpipe(*args)  # a finished experiment is continued, not started over
    log3 = third.communicate(timeout=300)[0]
    assert third.returncode == 0, log3[-3000:]
    assert f"{len(fusions)} trials; best val.macro_f1 = " in log3
    assert sorted(out.glob("trials/*/checkpoint_*")) == saved  # no trial trained again
    assert (out / "best_spec.yaml").read_text() == spec_text
