"""The ``mmpipe`` command: parse, load the spec, call. No pipeline logic lives here.

One module per command group, each a module-level Typer app: plain commands are merged into the root, groups that
are sub-commands (``registry``, ``jobs``, ``schedule``) are added under their name. Shared helpers: ``common``."""

from __future__ import annotations

import typer

from pipeline.cli import cluster, data, registry, schedule, train, workflow

app = typer.Typer(help="mmpipe: multimodal (image, text, audio) data and training pipelines on Ray.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)

for commands in (data.app, train.app, workflow.app, cluster.app):
    app.add_typer(commands)
app.add_typer(registry.app, name="registry")
app.add_typer(cluster.jobs_app, name="jobs")
app.add_typer(schedule.app, name="schedule")
