"""The ``mmpipe`` command: parse, load the spec, call. No pipeline logic lives here."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="mmpipe: multimodal (image, text, audio) data and training pipelines on Ray.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
console = Console()
err = Console(stderr=True)

SetOption = typer.Option(None, "--set", help="Override a spec field: --set train.lr=0.01 (repeatable).")


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _load(spec_path: Path, overrides: Optional[list[str]]):
    from pipeline.spec import SpecError, spec_warnings
    from pipeline.spec_checks import load_job as load_spec

    try:
        spec = load_spec(spec_path, overrides or [])
    except SpecError as e:
        _fail(str(e))
    for warning in spec_warnings(spec):
        err.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    return spec


@app.command()
def pack(
    manifest: Path = typer.Argument(..., help="CSV or JSONL manifest: image, text|text_path, audio, label, split…"),
    out_dir: Path = typer.Argument(..., help="Folder for OUT_DIR/<split>/<split>-NNNNNN.tar and manifest.json"),
    classes: Optional[str] = typer.Option(None, help="Comma-separated class names, in index order "
                                                     "(default: the labels found, sorted)"),
    shard_mb: float = typer.Option(256.0, help="Start a new shard past this many MiB"),
    shard_samples: Optional[int] = typer.Option(None, help="…or past this many samples"),
    overwrite: bool = typer.Option(False, help="Replace a dataset already in OUT_DIR"),
    shuffle_seed: Optional[int] = typer.Option(0, help="Write rows in this seeded random order (shards of one "
                                                       "class starve training of mixed batches)"),
    keep_order: bool = typer.Option(False, help="Keep the manifest's row order instead of shuffling"),
) -> None:
    """Pack media files listed in a manifest into WebDataset shards per split, with manifest.json."""
    from pipeline.data.tools.pack import ManifestError, pack_manifest

    try:
        result = pack_manifest(manifest, out_dir, [c.strip() for c in classes.split(",")] if classes else None,
                               int(shard_mb * 1024 ** 2), shard_samples, progress=sys.stderr.isatty(),
                               overwrite=overwrite, shuffle_seed=None if keep_order else shuffle_seed)
    except (ManifestError, FileExistsError) as e:
        _fail(str(e))
    for s in result.skipped:
        err.print(f"[yellow]skipped[/] {manifest}:{s['line']}: {s['reason']}", highlight=False, soft_wrap=True)
    for w in result.warnings:
        err.print(f"[yellow]warning:[/] {w}", highlight=False, soft_wrap=True)
    m = result.manifest
    per_split = ", ".join(f"{name}: {split['samples']}" for name, split in m["splits"].items())
    console.print(f"wrote {m['samples']} samples in "
                  f"{sum(len(s['shards']) for s in m['splits'].values())} shards to {out_dir} "
                  f"({per_split}); "
                  f"{len(result.skipped)} row(s) skipped")


@app.command("demo-data")
def demo_data(
    out_dir: Path = typer.Argument(..., help="Folder to write the demo dataset into"),
    seed: int = typer.Option(0, help="Same seed, same shards"),
    scale: float = typer.Option(1.0, help="Multiply the number of samples (0.1 for a tiny set)"),
    overwrite: bool = typer.Option(False, help="Replace a dataset already in OUT_DIR"),
) -> None:
    """Write a synthetic long-tailed image+text+audio dataset (with planted bad samples) and its spec.yaml."""
    from pipeline.data.tools.demo import write_demo

    try:
        m = write_demo(out_dir, seed=seed, scale=scale, overwrite=overwrite)
    except FileExistsError as e:
        _fail(str(e))
    planted = sum(n for split in m["planted"].values() for n in split.values())
    console.print(f"wrote {m['samples']} samples ({planted} deliberately bad) to {out_dir}; "
                  f"next: mmpipe validate {out_dir}/spec.yaml")


@app.command()
def validate(
    spec: Path = typer.Argument(..., help="Job spec YAML"),
    set_: Optional[list[str]] = SetOption,
    out: Optional[Path] = typer.Option(None, help="Also write the data report as JSON here"),
    split: Optional[list[str]] = typer.Option(None, help="Only these splits (repeatable)"),
) -> None:
    """Run read → clean → align over every split and print the data report."""
    job = _load(spec, set_)
    from pipeline.data.streaming.split import DataError, validate_splits
    from pipeline.data.tools.plots import plot_class_distribution
    from pipeline.data.shards.check import ShardError
    from pipeline.ray_runtime import ensure_ray

    if not job.data.splits:
        _fail(f"{spec}: data.splits lists no splits to validate")
    try:
        resolve_classes_first(job)
    except DataError as e:
        _fail(str(e))
    ensure_ray()
    try:
        report = validate_splits(job, split)
    except (DataError, ShardError) as e:
        _fail(str(e))
    report.print(console)
    if out:
        report.write_json(out)
        console.print(f"report written to {out}")
        if report.rebalance:
            r = report.rebalance
            png = plot_class_distribution(report.classes, list(r["before"].values()),
                                          list(r["expected_after"].values()),
                                          f"train classes, rebalance: {r['strategy']}",
                                          out.with_name(out.stem + "_classes.png"))
            console.print(f"class distribution plot written to {png}")
    if any(s.rows_kept == 0 for s in report.splits.values()):
        _fail("a split kept no rows", code=1)


@app.command()
def inspect(
    path: str = typer.Argument(..., help="A dataset folder (with or without manifest.json) or a shard pattern"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables"),
) -> None:
    """Counts per class, modality coverage and shard sizes of a dataset."""
    from pipeline.data.tools.inspect import inspect_path
    from pipeline.data.shards.check import ShardError

    try:
        info = inspect_path(path)
    except ShardError as e:
        _fail(str(e))
    if as_json:
        console.print_json(json.dumps(info, ensure_ascii=False))
        return
    console.print(f"{path} (from {info['source']})")
    for name, split in info["splits"].items():
        console.print(f"[bold]{name}[/]: {split['samples']} samples in {len(split['shards'])} shard(s)")
        table = Table()
        table.add_column("class")
        table.add_column("samples", justify="right")
        for cls, n in split["class_histogram"].items():
            table.add_row(cls, str(n))
        console.print(table)
        console.print("  coverage: " + ", ".join(f"{r} {v:.0%}" for r, v in split["modality_coverage"].items()))
        sizes = [s.get("bytes", 0) for s in split["shards"]]
        console.print(f"  shard sizes: min {min(sizes, default=0) / 1e6:.1f} MB, max {max(sizes, default=0) / 1e6:.1f}"
                      f" MB, total {sum(sizes) / 1e6:.1f} MB")
        for s in split["shards"]:
            if "error" in s:
                console.print(f"  [red]unreadable[/] {s['path']}: {s['error']}")


@app.command("preview-augment")
def preview_augment(
    spec: Path = typer.Argument(..., help="Job spec YAML with an augment section"),
    set_: Optional[list[str]] = SetOption,
    n: int = typer.Option(8, "--n", min=1, max=64, help="Samples to show"),
    out: Path = typer.Option(..., help="Folder for augment_preview.png and augment_preview.json"),
    epoch: int = typer.Option(0, help="Epoch whose augmentation to show (each epoch differs)"),
) -> None:
    """Write a PNG sheet of train samples before and after augmentation (images, spectrograms, text)."""
    job = _load(spec, set_)
    from pipeline.data.stages.augment.stage import augment_batch
    from pipeline.data.streaming.split import DataError, build_split, resolve_classes
    from pipeline.data.tools.plots import augment_sheet
    from pipeline.data.shards.check import ShardError
    from pipeline.io import atomic_write_text
    from pipeline.ray_runtime import ensure_ray

    if not (job.augment.image or job.augment.text or job.augment.audio):
        _fail("the spec lists no augment.image, augment.text or augment.audio transforms")
    ensure_ray()
    try:
        classes = resolve_classes(job)
        before = build_split(job, "train", classes).kept().take_batch(n, batch_format="numpy")
    except (DataError, ShardError) as e:
        _fail(str(e))
    after = augment_batch(before, job.augment, job.modalities, epoch)
    out.mkdir(parents=True, exist_ok=True)
    roles = [m for m in job.modalities.enabled() if getattr(job.augment, m)]
    png = augment_sheet(before, after, roles, out / "augment_preview.png")
    texts = [{"key": str(k), "before": str(b), "after": str(a)}
             for k, b, a in zip(before["__key__"], before.get("text_raw", []), after.get("text_raw", []))]
    atomic_write_text(out / "augment_preview.json", json.dumps(texts, indent=2, ensure_ascii=False))
    console.print(f"wrote {png} and {out / 'augment_preview.json'}")


@app.command()
def train(
    spec: Path = typer.Argument(..., help="Job spec YAML"),
    set_: Optional[list[str]] = SetOption,
    out: Optional[Path] = typer.Option(None, help="Run directory (default: runs/<spec name>); re-running the "
                                                  "same directory resumes from its latest checkpoint"),
    fresh: bool = typer.Option(False, help="Discard the run directory's earlier training state first"),
) -> None:
    """Train the spec's model on Ray Train, evaluate on test, and write the run's artifacts."""
    job = _load(spec, set_)
    run_dir = out or Path("runs") / job.name
    if fresh:
        shutil.rmtree(run_dir / "ray", ignore_errors=True)
    _train_and_summarise(job, run_dir)


def _train_and_summarise(job, run_dir: Path) -> None:
    from pipeline.data.streaming.split import DataError
    from pipeline.data.shards.check import ShardError
    from pipeline.ray_runtime import ensure_ray
    from pipeline.train.trainer import TrainError, run_training

    ensure_ray()
    try:
        result = run_training(job, run_dir)
    except (DataError, ShardError, TrainError) as e:
        _fail(str(e), code=1)
    _print_summary(result)


def _print_summary(result) -> None:
    m, classes = result.metrics, result.metrics["classes"]
    split = "test" if "test.accuracy" in m else "val"
    console.print(f"[bold]{split} metrics[/] of the best epoch ({m['best_epoch'] + 1} of {m['epochs_run']})")
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
                  "confusion.png, data_report.json, spec.yaml)", soft_wrap=True)


@app.command()
def tune(
    spec: Path = typer.Argument(..., help="Job spec YAML with a tune.search_space"),
    set_: Optional[list[str]] = SetOption,
    out: Optional[Path] = typer.Option(None, help="Experiment folder (default: runs/<spec name>-tune); running "
                                                  "again with the same folder continues the experiment"),
) -> None:
    """Search fusion and optimizer settings with Ray Tune; export the best configuration as a job spec."""
    job = _load(spec, set_)
    from pipeline.data.streaming.split import DataError
    from pipeline.data.shards.check import ShardError
    from pipeline.ray_runtime import ensure_ray
    from pipeline.tune.runner import TuneError, run_tune

    try:
        resolve_classes_first(job)
        ensure_ray()
        result = run_tune(job, out or Path("runs") / f"{job.name}-tune")
    except (DataError, ShardError, TuneError) as e:
        _fail(str(e), code=1)
    console.print(f"{result.trials} trials; best {job.tune.metric} = {result.best_metric:.4f} with "
                  f"{result.best_config}", soft_wrap=True)
    console.print(f"best spec: {result.best_spec_path} (run it: mmpipe train {result.best_spec_path})\n"
                  f"best checkpoint: {result.best_checkpoint}\nresults: {result.out_dir}/trials.csv, "
                  "trials_curves.png, best_by_choice.png", soft_wrap=True)


def resolve_classes_first(job) -> None:
    """Configuration problems (no class names) surface before Ray starts."""
    from pipeline.data.streaming.split import resolve_classes

    resolve_classes(job)


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Folder for the demo data (OUT/data) and run (OUT/run)"),
    seed: int = typer.Option(0, help="Seed of the demo data"),
    set_: Optional[list[str]] = SetOption,
) -> None:
    """Make the demo dataset, train the default fusion model on it, evaluate, and print a summary."""
    from pipeline.data.tools.demo import write_demo

    data = out / "data"
    write_demo(data, seed=seed, overwrite=True)
    console.print(f"demo data written to {data}")
    job = _load(data / "spec.yaml", set_)
    shutil.rmtree(out / "run", ignore_errors=True)  # a fresh run, not a resume of an earlier demo
    _train_and_summarise(job, out / "run")


@app.command("prepare-digits")
def prepare_digits(
    recordings: Path = typer.Argument(..., help="Folder of FSDD-style recordings {digit}_{speaker}_{index}.wav"),
    out_dir: Path = typer.Argument(..., help="Folder for images/ and manifest.csv (then: mmpipe pack)"),
    split: str = typer.Option("index", help="index: takes 0-4 test, 5-9 val; speaker: hold out speakers"),
    test_speaker: Optional[str] = typer.Option(None, help="With --split speaker: the held-out test speaker"),
    text_informative: float = typer.Option(0.4, min=0.0, max=1.0, help="Share of captions naming the digit"),
) -> None:
    """Real-data example: pair spoken digits with handwritten digits of the same class (writes a pack manifest)."""
    from pipeline.examples.av_digits import PrepareError, prepare

    if split not in ("index", "speaker"):
        _fail(f"--split must be index or speaker, got {split!r}")
    try:
        manifest = prepare(recordings, out_dir, split, test_speaker, text_informative)
    except PrepareError as e:
        _fail(str(e))
    console.print(f"wrote {manifest}; next: mmpipe pack {manifest} SHARDS_DIR", soft_wrap=True)


@app.command("show-spec")
def show_spec(spec: Path = typer.Argument(..., help="Job spec YAML"), set_: Optional[list[str]] = SetOption) -> None:
    """Print the spec with every default filled in and overrides applied (the resolved spec)."""
    from pipeline.spec import dump_spec

    console.print(dump_spec(_load(spec, set_)), highlight=False, markup=False)


# ---------------------------------------------------------------- command groups, one module each
# (each module defines register(app) adding its commands; keep one line per module here)
from pipeline.workflow.cli import register as _register_workflow  # noqa: E402
_register_workflow(app)
from pipeline.cluster.cli import register as _register_cluster  # noqa: E402
_register_cluster(app)
from pipeline.schedule.cli import register as _register_schedule  # noqa: E402
_register_schedule(app)


if __name__ == "__main__":
    app()
