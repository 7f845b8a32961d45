"""Reading a training run's real outputs (epochs.csv, state.pt) to tell a resume from a restart."""

from __future__ import annotations

import csv
from pathlib import Path


def epoch_rows(path: Path) -> list[dict]:
    """epochs.csv of a run directory (or the file itself) as dicts of strings."""
    path = Path(path)
    with (path / "epochs.csv" if path.is_dir() else path).open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


def resumed_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if str(r.get("resumed_from_epoch", "")) not in ("", "None")]


def assert_resumed(rows: list[dict], from_epoch: int) -> None:
    """The epoch after ``from_epoch`` started from exactly the state ``from_epoch``'s checkpoint saved: the same
    weights and optimizer step count, then went on counting steps. A restart from scratch has no resumed row (or
    starts its steps at 0), a resume that lost the weights or the optimizer/schedule state has other values."""
    [resumed] = resumed_rows(rows)
    by_epoch = {int(r["epoch"]): r for r in rows}
    saved, after = by_epoch[from_epoch], by_epoch[from_epoch + 1]
    assert resumed is after and int(after["resumed_from_epoch"]) == from_epoch, rows
    assert after["resumed_weights"] == saved["weights"], "resumed with other weights than the checkpoint's"
    assert int(after["resumed_steps"]) == int(saved["optimizer_steps"]) > 0, "the step count did not carry over"
    assert int(after["optimizer_steps"]) > int(saved["optimizer_steps"])  # and training went on from there
    assert after["weights"] != saved["weights"]


def assert_not_resumed(rows: list[dict]) -> None:
    """A run trained from scratch: no resumed row, and the first epoch's steps counted from zero."""
    assert not resumed_rows(rows), rows
    steps = [int(r["optimizer_steps"]) for r in rows]
    assert steps == sorted(steps) and steps[0] == steps[-1] // len(steps), steps
