"""The ``mmpipe`` command: parse, load the spec, call. No pipeline logic lives here."""

from __future__ import annotations

import json
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
    from pipeline.spec import SpecError, load_spec

    try:
        return load_spec(spec_path, overrides or [])
    except SpecError as e:
        _fail(str(e))


@app.command()
def pack(
    manifest: Path = typer.Argument(..., help="CSV or JSONL manifest: image, text|text_path, audio, label, split…"),
    out_dir: Path = typer.Argument(..., help="Folder for OUT_DIR/<split>/<split>-NNNNNN.tar and manifest.json"),
    classes: Optional[str] = typer.Option(None, help="Comma-separated class names, in index order "
                                                     "(default: the labels found, sorted)"),
    shard_mb: float = typer.Option(256.0, help="Start a new shard past this many MiB"),
    shard_samples: Optional[int] = typer.Option(None, help="…or past this many samples"),
    overwrite: bool = typer.Option(False, help="Replace a dataset already in OUT_DIR"),
) -> None:
    """Pack media files listed in a manifest into WebDataset shards per split, with manifest.json."""
    from pipeline.data.pack import ManifestError, pack_manifest

    try:
        result = pack_manifest(manifest, out_dir, classes.split(",") if classes else None,
                               int(shard_mb * 1024 ** 2), shard_samples, progress=sys.stderr.isatty(),
                               overwrite=overwrite)
    except (ManifestError, FileExistsError) as e:
        _fail(str(e))
    for s in result.skipped:
        err.print(f"[yellow]skipped[/] {manifest}:{s['line']}: {s['reason']}", highlight=False, soft_wrap=True)
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
    from pipeline.data.demo import write_demo

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
    from pipeline.data.dataset import DataError, validate_splits
    from pipeline.data.shards import ShardError
    from pipeline.ray_runtime import ensure_ray

    ensure_ray()
    try:
        report = validate_splits(job, split)
    except (DataError, ShardError) as e:
        _fail(str(e))
    report.print(console)
    if out:
        report.write_json(out)
        console.print(f"report written to {out}")
    if any(s.rows_kept == 0 for s in report.splits.values()):
        _fail("a split kept no rows", code=1)


@app.command()
def inspect(
    path: str = typer.Argument(..., help="A dataset folder (with or without manifest.json) or a shard pattern"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables"),
) -> None:
    """Counts per class, modality coverage and shard sizes of a dataset."""
    from pipeline.data.inspect import inspect_path
    from pipeline.data.shards import ShardError

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


@app.command("show-spec")
def show_spec(spec: Path = typer.Argument(..., help="Job spec YAML"), set_: Optional[list[str]] = SetOption) -> None:
    """Print the spec with every default filled in and overrides applied (the resolved spec)."""
    from pipeline.spec import dump_spec

    console.print(dump_spec(_load(spec, set_)), highlight=False, markup=False)


if __name__ == "__main__":
    app()
