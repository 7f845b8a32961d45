"""Training commands: ``mmpipe train``, ``tune`` and ``demo``."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from pipeline.cli.common import (FAILED, SetOption, VerboseOption, console, data_plan, exits_on_error, header,
                                 load_spec, resume_hint, says_how_to_continue, start_console)

app = typer.Typer()


@app.command()
def train(
    spec: Path = typer.Argument(..., help="Job spec YAML"),
    set_: Optional[list[str]] = SetOption,
    out: Optional[Path] = typer.Option(None, help="Run directory (default: runs/<spec name>); re-running the "
                                                  "same directory resumes from its latest checkpoint"),
    fresh: bool = typer.Option(False, help="Discard the run directory's earlier training state first"),
    verbose: bool = VerboseOption,
) -> None:
    """Train the spec's model on Ray Train, evaluate on test, and write the run's artifacts."""
    job = load_spec(spec, set_)
    run_dir = out or Path("runs") / job.name
    if fresh:
        shutil.rmtree(run_dir / "ray", ignore_errors=True)
    _train_and_summarise(job, run_dir, spec, verbose)


def job_header(title: str, job, spec_path: Path, run_dir: Path, log: Path | None) -> None:
    """spec, data, workers, run directory and log file: what a training run opens with."""
    s = job.scaling
    header(f"{title}: job {job.name}", {
        "spec": spec_path,
        "data": "; ".join(f"{split} {', '.join(p)}" for split, p in job.data.splits.items()),
        "model": f"{job.model.fusion} fusion of {', '.join(job.modalities.enabled())}; {job.train.optimizer} "
                 f"lr {job.train.lr:g}, {job.train.epochs} epochs of batch {job.train.batch_size}",
        "workers": f"{s.num_workers} x {s.cpus_per_worker:g} CPU{f' + {s.gpus_per_worker:g} GPU' if s.use_gpu else ''}, "
                   f"{s.data_cpus} data CPU(s)",
        "run directory": run_dir,
        "logs": log or "-"})


def _train_and_summarise(job, run_dir: Path, spec_path: Path, verbose: bool, title: str = "train") -> None:
    from pipeline.console import log_file
    from pipeline.ray_runtime import ensure_ray
    from pipeline.train.trainer import run_training

    with start_console("train", run_dir, verbose):
        job_header(title, job, spec_path, run_dir, log_file())
        with exits_on_error(FAILED), says_how_to_continue("training", resume_hint(run_dir)):
            data = data_plan(job)
            ensure_ray()
            result = run_training(job, run_dir, data_plan=data)
    _print_summary(result)


def _print_summary(result) -> None:
    m, classes = result.metrics, result.metrics["classes"]
    split = "test" if "test.accuracy" in m else "val"
    console.print(f"[bold]{split} metrics[/] of the best epoch ({m['best_epoch']} of {m['epochs_run']})")
    table = Table()
    for col in ("metric", "value"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for name in ("accuracy", "balanced_accuracy", "macro_f1", "auc", "loss"):
        value = m.get(f"{split}.{name}")
        table.add_row(name, "n/a" if value is None else f"{value:.3f}")
    console.print(table)
    per_class = Table()
    for col in ("class", "precision", "recall"):
        per_class.add_column(col, justify="left" if col == "class" else "right")
    for c in classes:
        per_class.add_row(c, f"{m[f'{split}.precision.{c}']:.3f}", f"{m[f'{split}.recall.{c}']:.3f}")
    console.print(per_class)
    console.print(f"run directory: {result.run_dir} (best.pt, metrics.json, epochs.csv, curves.png, "
                  "confusion.png, data_report.json, spec.yaml, tensorboard/)", soft_wrap=True)
    if (result.run_dir / "report.html").is_file():
        console.print(f"report: {result.run_dir / 'report.html'} (open it in a browser)", soft_wrap=True)


@app.command()
def tune(
    spec: Path = typer.Argument(..., help="Job spec YAML (tune.search_space optional: a default search)"),
    set_: Optional[list[str]] = SetOption,
    out: Optional[Path] = typer.Option(None, help="Experiment folder (default: runs/<spec name>-tune); running "
                                                  "again with the same folder continues the experiment"),
    verbose: bool = VerboseOption,
) -> None:
    """Search fusion and optimizer settings with Ray Tune; export the best configuration as a job spec.
    Without tune.search_space: the default search over fusion, optimizer and learning rate."""
    job = load_spec(spec, set_)
    from pipeline.console import log_file
    from pipeline.ray_runtime import ensure_ray
    from pipeline.tune.runner import run_tune
    from pipeline.tune.space import describe, searched_space

    out_dir = out or Path("runs") / f"{job.name}-tune"
    space, default = searched_space(job)
    with start_console("tune", out_dir, verbose):
        job_header("tune", job, spec, out_dir, log_file())
        console.print(("no tune.search_space in the spec: searching the default space\n  " if default else
                       "search space: ") + describe(space)
                      + f"\n  {job.tune.num_samples} sample(s), {job.tune.scheduler} scheduler, best by "
                        f"{job.tune.metric} ({job.tune.mode})", highlight=False, soft_wrap=True, markup=False)
        with exits_on_error(FAILED), says_how_to_continue(
                "tune", f"The same command again continues the experiment in {out_dir}."):
            data = data_plan(job)
            ensure_ray()
            result = run_tune(job, out_dir, data_plan=data)
    console.print(f"{result.trials} trials; best {job.tune.metric} = {result.best_metric:.4f} with "
                  f"{result.best_config}", soft_wrap=True)
    console.print(f"best spec: {result.best_spec_path} (run it: mmpipe train {result.best_spec_path})\n"
                  f"best checkpoint: {result.best_checkpoint}\nresults: {result.out_dir}/trials.csv, "
                  "trials_curves.png, best_by_choice.png, tensorboard/, report.html", soft_wrap=True)


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Folder for the demo data (OUT/data) and run (OUT/run)"),
    seed: int = typer.Option(0, help="Seed of the demo data"),
    scale: float = typer.Option(1.0, min=0.05, help="Multiply the number of samples (0.1: a quick look)"),
    set_: Optional[list[str]] = SetOption,
    verbose: bool = VerboseOption,
) -> None:
    """Make the demo dataset, train the default fusion model on it, evaluate, and print a summary."""
    from pipeline.data.tools.demo import write_demo

    data = out / "data"
    write_demo(data, seed=seed, scale=scale, overwrite=True)
    console.print(f"demo data written to {data}")
    job = load_spec(data / "spec.yaml", set_)
    shutil.rmtree(out / "run", ignore_errors=True)  # a fresh run, not a resume of an earlier demo
    _train_and_summarise(job, out / "run", data / "spec.yaml", verbose, title="demo")
