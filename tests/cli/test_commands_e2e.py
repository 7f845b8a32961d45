"""The main commands end to end through the real CLI, each in its own process as a user runs it, on tiny data.

`prepare-digits` and `pack` need no Ray (fast). The Ray commands share one sequence (module fixture, each process
starting its own Ray: cluster), all on tiny data (`--scale 0.1`): `demo` (1 epoch), `train` again into its run
directory (resumes), `train --fresh` (starts over), `run jobs/tune.yaml` (validate-data, tune, train the best,
evaluate, register, promote) on `demo-data --scale 0.1`, the same `run` again (nothing to do: no Ray), then
`predict` with the model that run registered. `tune` on its own runs end to end in
tests/train/test_resume.py (interrupted, then continued).
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from support.runs import assert_not_resumed, assert_resumed, epoch_rows
import support

ROOT = support.ROOT
FSDD = support.FIXTURES / "fsdd"
SMALL = ["train.batch_size=16", "model.hidden=32", "augment.enabled=false"]


def mmpipe(*args: str, cwd: Path | None = None, timeout: int = 600, env: dict | None = None,
           stderr: list | None = None) -> str:
    """One command in its own process; its standard output when it succeeds (its stderr appended to ``stderr``)."""
    base = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env={**base, "NO_COLOR": "1", "COLUMNS": "200", **(env or {})})
    assert done.returncode == 0, f"mmpipe {' '.join(args)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    if stderr is not None:
        stderr.append(done.stderr)
    return done.stdout


def sets(*values: str) -> list[str]:
    return [a for v in values for a in ("--set", v)]


def test_prepare_digits_then_pack(tmp_path):
    out = mmpipe("prepare-digits", str(FSDD), str(tmp_path / "raw"))
    with (tmp_path / "raw" / "manifest.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 36 and "manifest.csv" in out
    errors: list[str] = []  # piped, and 40 columns: nothing may wrap there
    said = mmpipe("pack", str(tmp_path / "raw" / "manifest.csv"), str(tmp_path / "packed"), env={"COLUMNS": "40"},
                  stderr=errors)
    lines = said.splitlines()
    assert lines[:2] == [f"pack {tmp_path / 'raw' / 'manifest.csv'}", f"  output: {tmp_path / 'packed'}"], said
    assert "  order: shuffled, seed 0" in lines
    assert [line for line in lines if line.startswith("packing")] == [lines[5]], said  # one line for the pass
    assert re.fullmatch(r"packing: 36 rows in \d+\.\d s, [\d,]+ rows/s", lines[5]), said
    assert lines[6].startswith(f"wrote 36 samples in 3 shards to {tmp_path / 'packed'} (") and len(lines) == 7
    assert "\x1b[" not in said + errors[0] and errors[0] == "", errors  # no colour codes, no bar, no noise
    manifest = json.loads((tmp_path / "packed" / "manifest.json").read_text(encoding="utf-8"))
    by_split = {s: sum(1 for r in rows if r["split"] == s) for s in {r["split"] for r in rows}}
    assert {s: m["samples"] for s, m in manifest["splits"].items()} == by_split
    for split in by_split:
        assert list((tmp_path / "packed" / split).glob("*.tar"))
    info = json.loads(mmpipe("inspect", str(tmp_path / "packed"), "--json"))
    assert {s: v["samples"] for s, v in info["splits"].items()} == by_split


@pytest.fixture(scope="module")
def cli_runs(tiny_demo, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    demo = root / "demo"
    said = {"demo_err": [], "resumed_err": []}  # the console tests read both streams of these two
    said["demo"] = mmpipe("demo", "--out", str(demo), "--scale", "0.1", *sets("train.epochs=1", *SMALL),
                          stderr=said["demo_err"])
    first = epoch_rows(demo / "run")
    spec = str(demo / "data" / "spec.yaml")
    said["resumed"] = mmpipe("-v", "train", spec, "--out", str(demo / "run"), *sets("train.epochs=2", *SMALL),
                             stderr=said["resumed_err"])  # -v: Ray's and the workers' lines too
    resumed = epoch_rows(demo / "run")
    said["fresh"] = mmpipe("train", spec, "--out", str(demo / "run"), "--fresh", *sets("train.epochs=1", *SMALL))
    fresh = epoch_rows(demo / "run")

    data = tiny_demo
    registry, workflow = root / "registry", root / "workflow"
    run = ["run", str(ROOT / "jobs" / "tune.yaml"), "--run-dir", str(workflow), *sets(
        *[f"data.splits.{s}={data / s}/*.tar" for s in ("train", "val", "test")], f"registry.uri={registry}",
        "train.epochs=1", "train.batch_size=16", "model.hidden=32", "augment.enabled=false", "tune.num_samples=1",
        "tune.search_space={model.fusion: {grid: [sum]}}", "tune.scheduler=fifo")]  # not the default (concat)
    said["run"] = mmpipe(*run)
    # The same run again has nothing to do: it must answer at once, without Ray (an unreachable RAY_ADDRESS would
    # fail any attempt to start or join one)
    start = time.monotonic()
    said["run_again"] = mmpipe(*run, env={"RAY_ADDRESS": "127.0.0.1:9"}, timeout=120)
    said["run_again_s"] = time.monotonic() - start
    said["predict"] = mmpipe("predict", f"{data}/test/*.tar", "--model", f"{registry}@champion",
                             "--out", str(root / "pred.parquet"))
    return {"root": root, "said": said, "first": first, "resumed": resumed, "fresh": fresh, "data": data,
            "registry": registry, "workflow": workflow}


@pytest.mark.cluster
def test_demo_trains_and_summarises(cli_runs):
    run = cli_runs["root"] / "demo" / "run"
    assert "test metrics" in cli_runs["said"]["demo"] and "macro_f1" in cli_runs["said"]["demo"]
    assert [int(r["epoch"]) for r in cli_runs["first"]] == [1]
    for name in ("best.pt", "metrics.json", "curves.png", "confusion.png", "data_report.json", "spec.yaml"):
        assert (run / name).stat().st_size > 0, name


@pytest.mark.cluster
def test_train_again_into_the_same_out_resumes(cli_runs):
    rows = cli_runs["resumed"]
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for column in ("optimizer_steps", "weights"):  # epoch 1 is the demo's, carried in the checkpoint
        assert rows[0][column] == cli_runs["first"][0][column]
    assert_resumed(rows, from_epoch=1)
    assert "of 2)" in cli_runs["said"]["resumed"]  # "best epoch (k of 2)"


@pytest.mark.cluster
def test_train_fresh_starts_over(cli_runs):
    rows = cli_runs["fresh"]
    assert [int(r["epoch"]) for r in rows] == [1]
    assert_not_resumed(rows, first_epoch_steps=int(cli_runs["first"][0]["optimizer_steps"]))


@pytest.mark.cluster
def test_the_tune_workflow_trains_the_best_trial_and_registers_it(cli_runs):
    """jobs/tune.yaml: the train step trains tune's best_spec.yaml, and that model is registered and promoted."""
    workflow, said = cli_runs["workflow"], cli_runs["said"]["run"]
    run = json.loads((workflow / "run.json").read_text())
    assert run["status"] == "succeeded"
    assert [s["name"] for s in run["steps"]] == ["validate-data", "tune", "train", "evaluate", "register", "promote"]
    best = (workflow / "tune" / "best_spec.yaml").read_text(encoding="utf-8")
    tune = json.loads((workflow / "steps" / "tune.json").read_text())
    assert tune["summary"]["trials"] == 1 and tune["summary"]["best_config"]["model.fusion"] == "sum"
    trained = (workflow / "train" / "spec.yaml").read_text(encoding="utf-8")
    # one trial is enough to tell: the spec's fusion is concat, only tune's best_spec.yaml says sum
    assert "fusion: sum" in best and "fusion: sum" in trained
    train = json.loads((workflow / "steps" / "train.json").read_text())
    assert train["inputs"]["tune.outputs"] == tune["outputs_sha256"]  # train reads tune's outputs
    assert run["outcome"]["version"] == 1 and run["outcome"]["promoted"] is True
    assert "register" in said and "promote" in said


@pytest.mark.cluster
def test_a_run_with_nothing_to_do_answers_at_once_without_ray(cli_runs):
    said = cli_runs["said"]["run_again"]
    assert said.count("done in an earlier attempt, skipped") == 6, said
    assert "run succeeded" in said and "registered version 1" in said
    assert cli_runs["said"]["run_again_s"] < 10, cli_runs["said"]["run_again_s"]  # was ~28 s (Ray, torch)


@pytest.mark.cluster
def test_predict_with_the_registered_champion(cli_runs):
    table = pq.read_table(cli_runs["root"] / "pred.parquet").to_pandas()
    report = json.loads((cli_runs["root"] / "pred.report.json").read_text(encoding="utf-8"))
    manifest = json.loads((cli_runs["data"] / "manifest.json").read_text(encoding="utf-8"))
    assert len(table) == manifest["splits"]["test"]["samples"]  # one row per sample, bad ones included
    assert report["version"] == 1
    said = cli_runs["said"]["predict"].splitlines()  # piped: the header, then one line for the pass
    assert said[0] == f"predict with {cli_runs['registry']}@champion", said
    assert f"  data: {cli_runs['data']}/test/*.tar" in said
    passes = [line for line in said if line.startswith("predict: ")]
    assert len(passes) == 1 and passes[0].startswith(
        f"predict: {len(table):,} rows ({report['predicted']:,} predicted) in "), said
    ok = table[table.status == "ok"]
    assert len(ok) > 0 and ok.pred_class.notna().all()


# What Ray and the workers say, never on a quiet console (issue 18): Ray Data's plan lines, Train V2's reports, its
# print patch's "(RayTrainWorker pid=…)" prefixes, the raylet's start-up note, C++ core-worker errors, DDP's
# gradient-stride warning, deprecation notes and Ray Data's progress-bar note.
RAY_NOISE = ("Execution plan", "Starting execution", "Reporting training result", "pid=", "(raylet)",
             "PYTHON worker processes", "core_worker", "PreemptionWatcher", "grad strides", "eprecat",
             "Progress bars disabled", "Token authentication")


@pytest.mark.cluster
def test_the_console_is_quiet_one_line_per_epoch_and_v_brings_ray_back(cli_runs):
    said = cli_runs["said"]
    out, err = said["demo"], said["demo_err"][0]
    for noise in RAY_NOISE:
        assert noise not in out + err, noise
    assert "\x1b[" not in out + err  # piped: no colour codes, no bars
    lines = out.splitlines()
    plain = [line for line in lines if line.strip() and line.lstrip()[0] not in "┏┃┡│└━┗"]  # tables aside
    assert len(plain) == len(set(plain)), [line for line in plain if plain.count(line) > 1]
    assert "demo: job demo" in lines and any(line.startswith("  workers: 2 x 0.5 CPU") for line in lines)
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert len(epochs) == 1 and epochs[0].startswith("epoch 1/1: train loss "), epochs
    log = cli_runs["root"] / "demo" / "run" / "logs" / "mmpipe.log"
    assert f"  logs: {log}" in lines
    # the log holds what the terminal does not (the benchmark reads the first batch from it)
    assert "first training batch at unix time" in log.read_text(encoding="utf-8")
    loud = said["resumed"] + said["resumed_err"][0]  # the same command with -v
    assert "pid=" in loud, loud[-3000:]  # the workers' own lines, with Ray's prefix
    resumed_epochs = [line for line in said["resumed"].splitlines() if line.startswith("epoch ")]
    assert len(resumed_epochs) == 1 and resumed_epochs[0].startswith("epoch 2/2: train loss "), resumed_epochs
    # the tune step's trial table, piped: one line as each trial starts, one as it ends
    trials = [line for line in said["run"].splitlines() if line.startswith("trial ")]
    assert len([t for t in trials if " TERMINATED fusion=sum" in t]) == 1, said["run"]  # the one trial
    assert len([t for t in trials if " RUNNING fusion=sum" in t]) == 1, said["run"]
    # the demo's data report pass: one line per split (not one per batch), train last
    passes = [line.split(":")[1].strip() for line in lines if line.startswith("data report: ")]
    assert passes == ["val", "test", "train"], out
