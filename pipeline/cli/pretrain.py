"""``mmpipe pretrain``: self-supervised contrastive pretraining of the encoders (docs/pretraining.md)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

import typer

from pipeline.cli.common import (FAILED, SetOption, console, data_plan, exits_on_error, load_spec, resume_hint,
                                 says_how_to_continue)

app = typer.Typer()


@app.command()
def pretrain(
    spec: Path = typer.Argument(..., help="Job spec YAML (its train split is read; labels are ignored)"),
    set_: Optional[list[str]] = SetOption,
    out: Optional[Path] = typer.Option(None, help="Run directory (default: runs/<spec name>-pretrain); re-running "
                                                  "the same directory resumes from its latest checkpoint"),
    fresh: bool = typer.Option(False, help="Discard the run directory's earlier pretraining state first"),
) -> None:
    """Pretrain the spec's encoders by aligning the modalities of each sample (contrastive, no labels); start a
    model from them with model.init_from: RUN_DIR."""
    job = load_spec(spec, set_)
    run_dir = out or Path("runs") / f"{job.name}-pretrain"
    if fresh:
        shutil.rmtree(run_dir / "ray", ignore_errors=True)
    from pipeline.ray_runtime import ensure_ray
    from pipeline.train.pretrain import run_pretraining

    with exits_on_error(FAILED), says_how_to_continue("pretraining", resume_hint(run_dir)):
        data = data_plan(job)
        ensure_ray()
        result = run_pretraining(job, run_dir, data_plan=data)
    last = result.history[-1]
    console.print(f"pretrained {last['epoch']} epochs: contrastive loss {last['train.loss']:.3f}, "
                  f"temperature {last['temperature']:.3f}")
    console.print(f"encoders: {result.pretrained} (train from them: --set model.init_from={result.run_dir})\n"
                  f"run directory: {result.run_dir} (epochs.csv, curves.png, spec.yaml)", soft_wrap=True)
