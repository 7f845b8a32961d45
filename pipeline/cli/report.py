"""``mmpipe report RUN_DIR``: (re)build a run's self-contained HTML report from the files the run wrote."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pipeline.cli.common import FAILED, console, exits_on_error, fail

app = typer.Typer()


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="A train run (--out of mmpipe train/demo), a tune folder or a "
                                             "workflow run directory (mmpipe run --run-dir)"),
    mlflow: Optional[str] = typer.Option(None, "--mlflow", help="Also log the run to this MLflow tracking URI "
                                                                  "(its spec.yaml as params; needs mmpipe[mlflow])"),
) -> None:
    """Write RUN_DIR/report.html: data report, rebalancing, curves, confusion matrix, per-class scores, spec,
    environment; the trials for tune, the steps and promotion decision for a workflow. Works on old runs too."""
    from pipeline.report import write_report

    with exits_on_error():
        path = write_report(run_dir)
    console.print(f"wrote {path}", soft_wrap=True)
    if mlflow:
        from pipeline.spec import load_spec
        from pipeline.tracking.mlflow_log import log_run

        spec_file = next((f for f in (run_dir / "spec.yaml", run_dir / "best_spec.yaml", run_dir / "train" /
                                      "spec.yaml") if f.is_file()), None)
        if spec_file is None:
            fail(f"{run_dir}: no spec.yaml to log as params")
        with exits_on_error(FAILED):
            spec = load_spec(spec_file, [f"tracking.mlflow_uri={mlflow}"])
            run_id = log_run(run_dir, spec)
        console.print(f"logged to MLflow run {run_id} at {mlflow}", soft_wrap=True)
