"""The main commands end to end through the real CLI, each in its own process as a user runs it, on tiny data.

`prepare-digits` and `pack` need no Ray (fast). The Ray commands share one sequence (module fixture, each process
starting its own Ray: cluster): `demo` (1 epoch), `train` again into its run directory (resumes), `train --fresh`
(starts over), `run jobs/tune.yaml` (validate-data, tune, train the best, evaluate, register, promote) on
`demo-data --scale 0.1`, then `predict` with the model that run registered. `tune` on its own runs end to end in
tests/train/test_resume.py (interrupted, then continued).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from support.runs import assert_not_resumed, assert_resumed, epoch_rows
import support

ROOT = support.ROOT
FSDD = support.FIXTURES / "fsdd"
SMALL = ["train.batch_size=32", "model.hidden=32", "augment.enabled=false"]


def mmpipe(*args: str, cwd: Path | None = None, timeout: int = 600) -> str:
    """One command in its own process; its standard output when it succeeds."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env={**env, "NO_COLOR": "1", "COLUMNS": "200"})
    assert done.returncode == 0, f"mmpipe {' '.join(args)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def sets(*values: str) -> list[str]:
    return [a for v in values for a in ("--set", v)]


def test_prepare_digits_then_pack(tmp_path):
    out = mmpipe("prepare-digits", str(FSDD), str(tmp_path / "raw"))
    with (tmp_path / "raw" / "manifest.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 36 and "manifest.csv" in out
    mmpipe("pack", str(tmp_path / "raw" / "manifest.csv"), str(tmp_path / "packed"))
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
    said = {"demo": mmpipe("demo", "--out", str(demo), *sets("train.epochs=1", *SMALL))}
    first = epoch_rows(demo / "run")
    spec = str(demo / "data" / "spec.yaml")
    said["resumed"] = mmpipe("train", spec, "--out", str(demo / "run"), *sets("train.epochs=2", *SMALL))
    resumed = epoch_rows(demo / "run")
    said["fresh"] = mmpipe("train", spec, "--out", str(demo / "run"), "--fresh", *sets("train.epochs=1", *SMALL))
    fresh = epoch_rows(demo / "run")

    data = tiny_demo
    registry, workflow = root / "registry", root / "workflow"
    said["run"] = mmpipe("run", str(ROOT / "jobs" / "tune.yaml"), "--run-dir", str(workflow), *sets(
        *[f"data.splits.{s}={data / s}/*.tar" for s in ("train", "val", "test")], f"registry.uri={registry}",
        "train.epochs=1", "train.batch_size=16", "model.hidden=32", "augment.enabled=false", "tune.num_samples=1",
        "tune.search_space={model.fusion: {grid: [concat, sum]}}", "tune.scheduler=fifo"))
    said["predict"] = mmpipe("predict", f"{data}/test/*.tar", "--model", f"{registry}@champion",
                             "--out", str(root / "pred.parquet"))
    return {"root": root, "said": said, "first": first, "resumed": resumed, "fresh": fresh, "data": data,
            "registry": registry, "workflow": workflow}


@pytest.mark.cluster
def test_demo_trains_and_summarises(cli_runs):
    run = cli_runs["root"] / "demo" / "run"
    assert "test metrics" in cli_runs["said"]["demo"] and "macro_f1" in cli_runs["said"]["demo"]
    assert [int(r["epoch"]) for r in cli_runs["first"]] == [0]
    for name in ("best.pt", "metrics.json", "curves.png", "confusion.png", "data_report.json", "spec.yaml"):
        assert (run / name).stat().st_size > 0, name


@pytest.mark.cluster
def test_train_again_into_the_same_out_resumes(cli_runs):
    rows = cli_runs["resumed"]
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    for column in ("optimizer_steps", "weights"):  # epoch 0 is the demo's, carried in the checkpoint
        assert rows[0][column] == cli_runs["first"][0][column]
    assert_resumed(rows, from_epoch=0)
    assert "of 2)" in cli_runs["said"]["resumed"]  # "best epoch (k of 2)"


@pytest.mark.cluster
def test_train_fresh_starts_over(cli_runs):
    rows = cli_runs["fresh"]
    assert [int(r["epoch"]) for r in rows] == [0]
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
    fusion = tune["summary"]["best_config"]["model.fusion"]
    assert tune["summary"]["trials"] == 2 and fusion in ("concat", "sum")
    trained = (workflow / "train" / "spec.yaml").read_text(encoding="utf-8")
    assert f"fusion: {fusion}" in best and f"fusion: {fusion}" in trained
    train = json.loads((workflow / "steps" / "train.json").read_text())
    assert train["inputs"]["tune.outputs"] == tune["outputs_sha256"]  # train reads tune's outputs
    assert run["outcome"]["version"] == 1 and run["outcome"]["promoted"] is True
    assert "register" in said and "promote" in said


@pytest.mark.cluster
def test_predict_with_the_registered_champion(cli_runs):
    table = pq.read_table(cli_runs["root"] / "pred.parquet").to_pandas()
    report = json.loads((cli_runs["root"] / "pred.report.json").read_text(encoding="utf-8"))
    manifest = json.loads((cli_runs["data"] / "manifest.json").read_text(encoding="utf-8"))
    assert len(table) == manifest["splits"]["test"]["samples"]  # one row per sample, bad ones included
    assert report["version"] == 1
    ok = table[table.status == "ok"]
    assert len(ok) > 0 and ok.pred_class.notna().all()
