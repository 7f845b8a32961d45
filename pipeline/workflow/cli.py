"""Commands: ``mmpipe run``, ``mmpipe predict`` and ``mmpipe registry list|show|promote|rollback``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

registry_app = typer.Typer(help="Model registry: versions, the champion alias, promotion and rollback.",
                           no_args_is_help=True)


def register(app: typer.Typer) -> None:
    from pipeline import cli

    set_option = cli.SetOption

    @app.command()
    def run(
        spec: Path = typer.Argument(..., help="Job spec YAML; its workflow.steps say what runs"),
        set_: Optional[list[str]] = set_option,
        run_dir: Optional[str] = typer.Option(None, help="Run directory, local path or fsspec URI (default: "
                                                         "workflow.run_dir, else runs/<spec name>). Running "
                                                         "again resumes at the first incomplete step"),
    ) -> None:
        """Run the spec's workflow (validate-data → (tune) → train → evaluate → register → promote, or predict)."""
        job = cli._load(spec, set_)
        from pipeline.data.streaming.split import DataError
        from pipeline.ray_runtime import ensure_ray
        from pipeline.workflow.run import WorkflowFailed, default_run_dir, run_workflow

        try:
            cli.resolve_classes_first(job) if job.data.splits else None
        except DataError as e:
            cli._fail(str(e))
        target = run_dir or default_run_dir(job)
        cli.console.print(f"run directory: {target} (steps: {', '.join(job.steps())})", soft_wrap=True)
        ensure_ray()
        try:
            record = run_workflow(job, target, say=lambda m: cli.console.print(m, highlight=False,
                                                                                soft_wrap=True))
        except WorkflowFailed as e:
            cli._fail(f"{e}\n(details: {target}/steps/{e.step}.json; run again to resume)", code=1)
        outcome = record["outcome"] or {}
        if outcome.get("version") is not None:
            cli.console.print(f"registered version {outcome['version']} in {outcome['registry']}; "
                              f"{'promoted to champion' if outcome['promoted'] else 'not promoted'}"
                              f"{': ' + outcome['decision']['reason'] if outcome.get('decision') else ''}",
                              soft_wrap=True, highlight=False)
        cli.console.print(f"run {record['status']}: {target}/run.json", soft_wrap=True)

    @app.command()
    def predict(
        shards: list[str] = typer.Argument(..., help="Shard paths, globs or URIs"),
        model: str = typer.Option(..., "--model", help="REGISTRY[:VERSION|@ALIAS]; a bare REGISTRY is @champion"),
        out: str = typer.Option(..., "--out", help="Output .parquet file (a .report.json is written beside it)"),
        batch_size: int = typer.Option(256, min=1),
        actors: int = typer.Option(1, min=1, help="Model replicas; each loads the model once"),
        gpu: bool = typer.Option(False, help="One GPU per replica"),
        dedupe: bool = typer.Option(False, help="Mark exact duplicates instead of predicting them again"),
    ) -> None:
        """Batch inference over shards with a registered model: one row per sample, bad samples with reasons."""
        from pipeline.data.streaming.split import DataError
        from pipeline.data.shards.check import ShardError
        from pipeline.predict import PredictError
        from pipeline.predict import predict as run_predict
        from pipeline.ray_runtime import ensure_ray
        from pipeline.registry import RegistryError

        try:
            ensure_ray()
            result = run_predict(model, shards, out, batch_size, actors, gpu, dedupe)
        except (RegistryError, PredictError, DataError, ShardError) as e:
            cli._fail(str(e), code=1)
        r = result.report
        cli.console.print(f"{result.rows} samples, {result.predicted} predicted with version {result.version}, "
                          f"{result.rows - result.predicted} not predicted"
                          + (f" ({', '.join(f'{k}: {v}' for k, v in r.dropped.items())})" if r.dropped else "")
                          + f" → {result.out}", soft_wrap=True, highlight=False)
        for bad in r.bad_shards:
            cli.err.print(f"[red]bad shard[/] {bad['path']}: {bad['error']}", highlight=False, soft_wrap=True)
        for reason, examples in r.examples.items():
            for ex in examples[:3]:
                cli.err.print(f"[yellow]{reason}[/] {ex['shard']} {ex['key']}: {ex['detail']}", highlight=False,
                              soft_wrap=True)

    app.add_typer(registry_app, name="registry")


def _open(uri: str):
    from pipeline import cli, storage
    from pipeline.registry import Registry

    if not storage.exists(storage.join(uri, "claims")):
        cli._fail(f"{uri}: no registry there (no model was ever registered)")
    return Registry(uri)


def _guard(fn):
    """Registry errors as one clear line, not a traceback."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from pipeline import cli
        from pipeline.registry import RegistryError

        try:
            return fn(*args, **kwargs)
        except RegistryError as e:
            cli._fail(str(e), code=1)
    return wrapper


@registry_app.command("list")
@_guard
def list_versions(registry: str = typer.Argument(..., help="Registry folder or URI")) -> None:
    """Every version with its holdout score and aliases."""
    from pipeline import cli

    reg = _open(registry)
    aliases: dict[int, list[str]] = {}
    for name, version in reg.aliases().items():
        aliases.setdefault(version, []).append(name)
    table = Table(title=f"registry {registry}", title_justify="left")
    for col in ("version", "created", "metrics", "code", "aliases"):
        table.add_column(col)
    for v in reg.versions():
        if "status" in v:
            table.add_row(str(v["version"]), "", v["status"], "", "")
            continue
        m = v.get("metrics", {})
        split = v.get("holdout", "test")
        score = ", ".join(f"{k}={m[f'{split}.{k}']:.3f}" for k in ("accuracy", "macro_f1")
                          if m.get(f"{split}.{k}") is not None)
        table.add_row(str(v["version"]), v.get("created", ""), f"{split}: {score}", v.get("code_version", ""),
                      ", ".join(aliases.get(v["version"], [])))
    cli.console.print(table)


@registry_app.command()
@_guard
def show(ref: str = typer.Argument(..., help="REGISTRY:VERSION or REGISTRY@ALIAS")) -> None:
    """A version's metadata, its promotion decision, and the alias history."""
    from pipeline import cli
    from pipeline.registry import ModelRef

    parsed = ModelRef.parse(ref)
    reg = _open(parsed.registry)
    version = reg.resolve(parsed)
    info = {"meta": reg.meta(version), "decision": reg.decision(version),
            "aliases": {a: v for a, v in reg.aliases().items() if v == version}}
    cli.console.print_json(json.dumps(info, ensure_ascii=False))


@registry_app.command()
@_guard
def promote(
    registry: str = typer.Argument(..., help="Registry folder or URI"),
    version: int = typer.Argument(..., help="The version to point the alias at"),
    alias: str = typer.Option("champion", help="Alias to move"),
    reason: str = typer.Option("promoted by hand", help="Recorded in the alias history"),
) -> None:
    """Point an alias (default champion) at a version, by hand."""
    from pipeline import cli

    reg = _open(registry)
    entry = reg.set_alias(alias, version, expected=reg.alias(alias), reason=reason)
    cli.console.print(f"{alias}: version {entry['previous']} → {entry['version']}")


@registry_app.command()
@_guard
def rollback(
    registry: str = typer.Argument(..., help="Registry folder or URI"),
    alias: str = typer.Option("champion", help="Alias to move back"),
    to: Optional[int] = typer.Option(None, help="Version to go back to (default: the one before the current)"),
) -> None:
    """Move an alias back to the version it held before (or to --to)."""
    from pipeline import cli

    entry = _open(registry).rollback(alias, to)
    cli.console.print(f"{alias}: version {entry['previous']} → {entry['version']} (rollback)")
