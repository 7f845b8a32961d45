"""Data commands: ``mmpipe pack``, ``demo-data``, ``inspect``, ``validate``, ``preview-augment``, ``prepare-digits``
and ``show-spec``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from pipeline.cli.common import (BAD_INPUT, SetOption, VerboseOption, console, err, exits_on_error, fail, header,
                                 load_spec, data_plan, start_console, warn)

app = typer.Typer()


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
    allow_outside: bool = typer.Option(False, help="Also read media outside the manifest's folder (absolute "
                                                   "paths, '..', symlinks leading out); off so a packed dataset "
                                                   "cannot carry files it was not meant to"),
) -> None:
    """Pack media files listed in a manifest into WebDataset shards per split, with manifest.json."""
    from pipeline.data.tools.pack import pack_manifest, skip_counts

    with start_console("pack"):
        header(f"pack {manifest}", {
            "output": out_dir,
            "shards": f"up to {shard_mb:g} MiB" + (f" or {shard_samples} samples" if shard_samples else "")
                      + " each, per split",
            "order": "the manifest's" if keep_order or shuffle_seed is None else f"shuffled, seed {shuffle_seed}",
            "classes": classes or "the labels found, sorted"})
        with exits_on_error(BAD_INPUT, FileExistsError):
            result = pack_manifest(manifest, out_dir, [c.strip() for c in classes.split(",")] if classes else None,
                                   int(shard_mb * 1024 ** 2), shard_samples, overwrite=overwrite,
                                   shuffle_seed=None if keep_order else shuffle_seed, allow_outside=allow_outside)
    for s in result.skipped:
        err.print(f"[yellow]skipped[/] {manifest}:{s['line']}: {s['reason']}", highlight=False, soft_wrap=True)
    for w in result.warnings:
        warn(w)
    m = result.manifest
    per_split = ", ".join(f"{name}: {split['samples']}" for name, split in m["splits"].items())
    console.print(f"wrote {m['samples']} samples in "
                  f"{sum(len(s['shards']) for s in m['splits'].values())} shards to {out_dir} "
                  f"({per_split}); "
                  f"{len(result.skipped)} row(s) skipped"
                  + (" (" + ", ".join(f"{n} {kind}" for kind, n in skip_counts(result.skipped).items()) + ")"
                     if result.skipped else ""), soft_wrap=True)


@app.command("demo-data")
def demo_data(
    out_dir: Path = typer.Argument(..., help="Folder to write the demo dataset into"),
    seed: int = typer.Option(0, help="Same seed, same shards"),
    scale: float = typer.Option(1.0, help="Multiply the number of samples (0.1 for a tiny set)"),
    overwrite: bool = typer.Option(False, help="Replace a dataset already in OUT_DIR"),
) -> None:
    """Write a synthetic long-tailed image+text+audio dataset (with planted bad samples) and its spec.yaml."""
    from pipeline.data.tools.demo import write_demo

    with exits_on_error(BAD_INPUT, FileExistsError):
        m = write_demo(out_dir, seed=seed, scale=scale, overwrite=overwrite)
    planted = sum(n for split in m["planted"].values() for n in split.values())
    console.print(f"wrote {m['samples']} samples ({planted} deliberately bad) to {out_dir}; "
                  f"next: mmpipe validate {out_dir}/spec.yaml")


@app.command()
def validate(
    spec: Path = typer.Argument(..., help="Job spec YAML"),
    set_: Optional[list[str]] = SetOption,
    out: Optional[Path] = typer.Option(None, help="Also write the data report as JSON here"),
    split: Optional[list[str]] = typer.Option(None, help="Only these splits (repeatable)"),
    verbose: bool = VerboseOption,
) -> None:
    """Run read → clean → align over every split and print the data report."""
    job = load_spec(spec, set_)
    from pipeline.console import log_file_for, log_to
    from pipeline.data.tools.plots import plot_rebalance
    from pipeline.ray_runtime import ensure_ray

    if not job.data.splits:
        fail(f"{spec}: data.splits lists no splits to validate")
    with start_console("validate", None, verbose):
        header(f"validate: job {job.name}", {
            "spec": spec,
            "data": "; ".join(f"{name} {', '.join(p)}" for name, p in job.data.splits.items()
                              if not split or name in split),
            "reads": f"one task (1 CPU) per shard, {job.scaling.stall_timeout_s:g} s stall timeout",
            "report": out or "-",
            "logs": log_to(log_file_for(None, "validate"))})  # Ray starts below: its log file, chosen now
        with exits_on_error(BAD_INPUT):
            data = data_plan(job)
        ensure_ray()
        with exits_on_error(BAD_INPUT):
            report = data.validate(split)
    report.print(console)
    if out:
        report.write_json(out)
        console.print(f"report written to {out}")
        if report.rebalance:  # the rebalanced task's classes (rebalance.task), not always the primary's
            png = plot_rebalance(report.rebalance, out.with_name(out.stem + "_classes.png"))
            console.print(f"class distribution plot written to {png}")
    if any(s.rows_kept == 0 for s in report.splits.values()):
        fail("a split kept no rows", code=1)


@app.command()
def inspect(
    path: str = typer.Argument(..., help="A dataset folder (with or without manifest.json) or a shard pattern"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables"),
) -> None:
    """Counts per class, modality coverage and shard sizes of a dataset."""
    from pipeline.data.tools.inspect import inspect_path

    with exits_on_error(BAD_INPUT):
        info = inspect_path(path)
    if as_json:
        console.print_json(json.dumps(info, ensure_ascii=False))
        return
    console.print(f"{path} (from {info['source']}"
                  + (f", classes from {info['classes_from']}" if info.get("classes_from") else "") + ")",
                  soft_wrap=True, highlight=False)
    for name, split in info["splits"].items():
        console.print(f"[bold]{name}[/]: {split['samples']} samples in {len(split['shards'])} shard(s)")
        table = Table()
        table.add_column("class")
        table.add_column("samples", justify="right")
        for cls, n in split["class_histogram"].items():
            table.add_row(cls, str(n))
        console.print(table)
        if split.get("labels_unusable"):
            console.print("  labels no class matches: " + ", ".join(f"{label!r} ({n})" for label, n in
                                                                   split["labels_unusable"].items()),
                          soft_wrap=True, highlight=False)
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
    job = load_spec(spec, set_)
    from pipeline.data.stages.augment.stage import augment_batch
    from pipeline.data.tools.plots import augment_sheet
    from pipeline.io import atomic_write_text
    from pipeline.ray_runtime import ensure_ray

    if not (job.augment.image or job.augment.text or job.augment.audio):
        fail("the spec lists no augment.image, augment.text or augment.audio transforms")
    ensure_ray()
    with exits_on_error(BAD_INPUT):
        before = data_plan(job).eval_dataset("train").take_batch(n, batch_format="numpy")
    after = augment_batch(before, job.augment, job.modalities, epoch)
    out.mkdir(parents=True, exist_ok=True)
    roles = [m for m in job.modalities.enabled() if getattr(job.augment, m)]
    png = augment_sheet(before, after, roles, out / "augment_preview.png")
    texts = [{"key": str(k), "before": str(b), "after": str(a)}
             for k, b, a in zip(before["__key__"], before.get("text_raw", []), after.get("text_raw", []))]
    atomic_write_text(out / "augment_preview.json", json.dumps(texts, indent=2, ensure_ascii=False))
    console.print(f"wrote {png} and {out / 'augment_preview.json'}")


@app.command("prepare-digits")
def prepare_digits(
    recordings: Path = typer.Argument(..., help="Folder of FSDD-style recordings {digit}_{speaker}_{index}.wav"),
    out_dir: Path = typer.Argument(..., help="Folder for images/ and manifest.csv (then: mmpipe pack)"),
    split: str = typer.Option("index", help="index: takes 0-4 test, 5-9 val; speaker: hold out a test speaker"),
    test_speaker: Optional[str] = typer.Option(None, help="With --split speaker: the held-out test speaker"),
    val_speaker: Optional[str] = typer.Option(
        None, help="With --split speaker: this speaker's recordings are val (default: the other speakers' takes 5-9)"),
    text_informative: float = typer.Option(0.4, min=0.0, max=1.0, help="Share of captions naming the digit"),
) -> None:
    """Real-data example: pair spoken digits with handwritten digits of the same class (writes a pack manifest)."""
    from pipeline.examples.av_digits import prepare

    if split not in ("index", "speaker"):
        fail(f"--split must be index or speaker, got {split!r}")
    with exits_on_error(BAD_INPUT):
        manifest = prepare(recordings, out_dir, split, test_speaker, text_informative, val_speaker)
    console.print(f"wrote {manifest}; next: mmpipe pack {manifest} SHARDS_DIR", soft_wrap=True)


@app.command("show-spec")
def show_spec(spec: Path = typer.Argument(..., help="Job spec YAML"), set_: Optional[list[str]] = SetOption) -> None:
    """Print the spec with every default filled in and overrides applied (the resolved spec)."""
    from pipeline.spec import dump_spec

    console.print(dump_spec(load_spec(spec, set_)), highlight=False, markup=False)
