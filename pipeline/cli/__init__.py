"""The ``mmpipe`` command: parse, load the spec, call. No pipeline logic lives here.

One module per command group, each a module-level Typer app: plain commands are merged into the root, groups that
are sub-commands (``registry``, ``jobs``, ``schedule``) are added under their name. Shared helpers: ``common``."""

from __future__ import annotations

import typer

from pipeline.cli import cluster, common, data, pretrain, registry, report, schedule, train, workflow
from pipeline.console import log_by_default, set_verbose

app = typer.Typer(help="mmpipe: multimodal (image, text, audio) data and training pipelines on Ray.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)


@app.callback()
def _root(ctx: typer.Context, verbose: bool = common.VerboseOption) -> None:
    """Quiet by default: Ray's and the workers' log lines go to a log file; -v shows them too."""
    set_verbose(verbose)
    log_by_default(ctx.invoked_subcommand or "mmpipe")


for commands in (data.app, train.app, pretrain.app, workflow.app, cluster.app, report.app):
    app.add_typer(commands)
app.add_typer(registry.app, name="registry")
app.add_typer(cluster.jobs_app, name="jobs")
app.add_typer(schedule.app, name="schedule")
