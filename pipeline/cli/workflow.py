"""Workflow commands: ``mmpipe run`` (the spec's steps, resumable) and ``mmpipe predict`` (batch inference)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pipeline.cli.common import (BAD_INPUT, FAILED, SetOption, VerboseOption, console, err, exits_on_error, fail,
                                 header, load_spec, data_plan, says_how_to_continue, start_console)
from pipeline.spec import PredictSpec

PREDICT_DEFAULTS = PredictSpec()  # the options' defaults are the spec's

app = typer.Typer()


@app.command()
def run(
    spec: Path = typer.Argument(..., help="Job spec YAML; its workflow.steps say what runs"),
    set_: Optional[list[str]] = SetOption,
    run_dir: Optional[str] = typer.Option(None, help="Run directory, local path or fsspec URI (default: "
                                                     "workflow.run_dir, else runs/<spec name>). Running "
                                                     "again resumes at the first incomplete step"),
    verbose: bool = VerboseOption,
) -> None:
    """Run the spec's workflow (validate-data → (tune) → train → evaluate → register → promote, or predict)."""
    job = load_spec(spec, set_)
    from pipeline.workflow.run import WorkflowFailed, default_run_dir, run_workflow

    def prepare():  # only when a step has work to do: a run whose steps are all done starts no Ray
        from pipeline.ray_runtime import ensure_ray

        data = None
        if job.data.splits:
            with exits_on_error(BAD_INPUT):
                data = data_plan(job)
        ensure_ray()
        return data

    from pipeline.console import current, log_file

    target = run_dir or default_run_dir(job)
    with start_console("run", target, verbose):
        console.print(f"run directory: {target} (steps: {', '.join(job.steps())})", soft_wrap=True)
        console.print(f"logs: {log_file() or 'in a temp file once Ray starts'}", soft_wrap=True, highlight=False)
        try:
            with exits_on_error(FAILED), says_how_to_continue(  # step lines go through the view, above a live bar
                    "workflow", f"mmpipe run again into {target} resumes it from the step that stopped."):
                record = run_workflow(job, target, say=lambda m: current().line(m), prepare=prepare)
        except WorkflowFailed as e:  # not the guard: the message adds where the details are
            fail(f"{e}\n(details: {target}/steps/{e.step}.json; run again to resume)", code=FAILED)
    outcome = record["outcome"] or {}
    if outcome.get("version") is not None:
        console.print(f"registered version {outcome['version']} in {outcome['registry']}; "
                      f"{'promoted to champion' if outcome['promoted'] else 'not promoted'}"
                      f"{': ' + outcome['decision']['reason'] if outcome.get('decision') else ''}",
                      soft_wrap=True, highlight=False)
    console.print(f"run {record['status']}: {target}/run.json", soft_wrap=True)


@app.command()
def predict(
    shards: list[str] = typer.Argument(..., help="Shard paths, globs or URIs"),
    model: str = typer.Option(..., "--model", help="REGISTRY[:VERSION|@ALIAS]; a bare REGISTRY is @champion"),
    out: str = typer.Option(..., "--out", help="Output .parquet file (a .report.json is written beside it)"),
    batch_size: int = typer.Option(PREDICT_DEFAULTS.batch_size, min=1),
    actors: int = typer.Option(PREDICT_DEFAULTS.actors, min=1, help="Model replicas; each loads the model once"),
    gpu: bool = typer.Option(PREDICT_DEFAULTS.use_gpu, help="One GPU per replica"),
    dedupe: bool = typer.Option(False, help="Mark exact duplicates instead of predicting them again"),
    verbose: bool = VerboseOption,
) -> None:
    """Batch inference over shards with a registered model: one row per sample, bad samples with reasons."""
    from pipeline.console import log_file_for, log_to
    from pipeline.predict import predict as run_predict

    with start_console("predict", None, verbose):
        header(f"predict with {model}", {
            "data": ", ".join(shards) if len(shards) <= 3 else  # a shell-expanded glob: not hundreds of paths
                    f"{len(shards)} paths: {shards[0]}, {shards[1]}, …, {shards[-1]}",
            "replicas": f"{actors}{' x 1 GPU' if gpu else ''}, batches of {batch_size}"
                        + (", exact duplicates marked" if dedupe else ""),
            "output": f"{out} (and its .report.json)",
            "logs": log_to(log_file_for(None, "predict"))})  # Ray starts in predict: its log file, chosen now
        with exits_on_error(FAILED):  # the model reference is resolved before Ray starts (predict does both)
            result = run_predict(model, shards, out, batch_size, actors, gpu, dedupe)
    r = result.report
    console.print(f"{result.rows} samples, {result.predicted} predicted with version {result.version}, "
                  f"{result.rows - result.predicted} not predicted"
                  + (f" ({', '.join(f'{k}: {v}' for k, v in r.dropped.items())})" if r.dropped else "")
                  + f" → {result.out}", soft_wrap=True, highlight=False)
    for bad in r.bad_shards:
        err.print(f"[red]bad shard[/] {bad['path']}: {bad['error']}", highlight=False, soft_wrap=True)
    for reason, examples in r.examples.items():
        for ex in examples[:3]:
            err.print(f"[yellow]{reason}[/] {ex['shard']} {ex['key']}: {ex['detail']}", highlight=False,
                      soft_wrap=True)
