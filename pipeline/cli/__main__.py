"""``python -m pipeline.cli …``: how launchers start ``mmpipe`` with the same interpreter (no console script needed)."""

from pipeline.cli import app

app()
