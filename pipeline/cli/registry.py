"""``mmpipe registry list|show|promote|rollback``: read and move a model registry's versions and aliases."""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.table import Table

from pipeline.cli.common import FAILED, console, exits_on_error, fail
from pipeline.cli.tables import print_table
from pipeline.tasks import holdout_metric_name

app = typer.Typer(help="Model registry: versions, the champion alias, promotion and rollback.",
                  no_args_is_help=True)


def _open(uri: str):
    from pipeline import storage
    from pipeline.registry import Registry

    if not storage.exists(storage.join(uri, "claims")):
        fail(f"{uri}: no registry there (no model was ever registered)")
    return Registry(uri)


@app.command("list")
@exits_on_error(FAILED)
def list_versions(registry: str = typer.Argument(..., help="Registry folder or URI")) -> None:
    """Every version with its holdout score and aliases."""
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
        scored = holdout_metric_name(split, v.get("task"))  # label.tasks: the primary task's, "test (task digit)"
        table.add_row(str(v["version"]), v.get("created", ""), f"{scored}: {score}", v.get("code_version", ""),
                      ", ".join(aliases.get(v["version"], [])))
    print_table(table)


@app.command()
@exits_on_error(FAILED)
def show(ref: str = typer.Argument(..., help="REGISTRY:VERSION or REGISTRY@ALIAS")) -> None:
    """A version's metadata, its promotion decision, and the alias history."""
    from pipeline.registry import ModelRef

    parsed = ModelRef.parse(ref)
    reg = _open(parsed.registry)
    version = reg.resolve(parsed)
    current = reg.aliases()
    history = {a: reg.alias_events(a) for a in sorted(current)}
    info = {"meta": reg.meta(version), "decision": reg.decision(version),
            "aliases": {a: v for a, v in current.items() if v == version},
            # every move of each alias this version ever held, oldest first
            "alias_history": {a: events for a, events in history.items()
                              if any(version in (e.get("version"), e.get("previous")) for e in events)}}
    console.print_json(json.dumps(info, ensure_ascii=False))


@app.command()
@exits_on_error(FAILED)
def promote(
    registry: str = typer.Argument(..., help="Registry folder or URI"),
    version: int = typer.Argument(..., help="The version to point the alias at"),
    alias: str = typer.Option("champion", help="Alias to move"),
    reason: str = typer.Option("promoted by hand", help="Recorded in the alias history"),
) -> None:
    """Point an alias (default champion) at a version, by hand."""
    reg = _open(registry)
    entry = reg.set_alias(alias, version, expected=reg.alias(alias), reason=reason)
    console.print(_moved(entry), highlight=False)


@app.command()
@exits_on_error(FAILED)
def rollback(
    registry: str = typer.Argument(..., help="Registry folder or URI"),
    alias: str = typer.Option("champion", help="Alias to move back"),
    to: Optional[int] = typer.Option(None, help="Version to go back to (default: the one before the current)"),
) -> None:
    """Move an alias back to the version it held before (or to --to)."""
    entry = _open(registry).rollback(alias, to)
    console.print(_moved(entry) + " (rollback)", highlight=False)


def _moved(entry: dict) -> str:
    if entry["previous"] is None:
        return f"{entry['alias']}: set to version {entry['version']} (it was not set before)"
    return f"{entry['alias']}: version {entry['previous']} → {entry['version']}"
