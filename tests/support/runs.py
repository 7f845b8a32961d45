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


def assert_resumed(rows: list[dict], from_epoch: int | None = None) -> int:
    """The epoch after the checkpoint it resumed from (``from_epoch``, or whichever there is one of) started from
    exactly the state that checkpoint saved: the same weights and optimizer step count, and went on counting. A
    restart from scratch has no resumed row, a resume that lost the weights or the optimizer/schedule state has
    other values. Returns the epoch resumed from."""
    found = resumed_rows(rows)
    assert len(found) == 1, f"{len(found)} epochs resumed from a checkpoint, not one (a restart has none): {rows}"
    resumed = found[0]
    by_epoch = {int(r["epoch"]): r for r in rows}
    start = int(resumed["resumed_from_epoch"])
    assert from_epoch is None or start == from_epoch, rows
    saved, after = by_epoch[start], by_epoch[start + 1]
    assert resumed is after, rows
    assert after["resumed_weights"] == saved["weights"], "resumed with other weights than the checkpoint's"
    assert int(after["resumed_steps"]) == int(saved["optimizer_steps"]) > 0, "the step count did not carry over"
    assert int(after["optimizer_steps"]) > int(saved["optimizer_steps"])  # and training went on from there
    assert after["weights"] != saved["weights"]
    return start


def assert_not_resumed(rows: list[dict], first_epoch_steps: int) -> None:
    """A run trained from scratch: no resumed row, and its first epoch counted ``first_epoch_steps`` from zero."""
    assert not resumed_rows(rows), rows
    assert int(rows[0]["optimizer_steps"]) == first_epoch_steps, rows


RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's record of the checkpoints it registered


def committed_checkpoint(ray_dir: Path) -> str | None:
    """The latest checkpoint Ray Train has registered under ``ray_dir`` (its ``storage_path``), by folder name.
    A ``state.pt`` on disk is not yet one: the workers write it, and the controller registers it (writing the
    snapshot) only when it next polls them, up to seconds later. A run killed in between has no checkpoint to
    resume from, and starting over is then right."""
    import json

    for snapshot in Path(ray_dir).glob(f"*/{RAY_SNAPSHOT}"):
        try:
            latest = json.loads(snapshot.read_text(encoding="utf-8")).get("latest_checkpoint_result")
        except ValueError:  # being written
            continue
        if latest and (snapshot.parent / latest["checkpoint_dir_name"] / "state.pt").exists():
            return latest["checkpoint_dir_name"]
    return None


def history_rows(state_file: Path) -> list[dict]:
    """A checkpoint's history (state.pt), as epochs.csv would hold it (values as strings)."""
    import torch

    state = torch.load(state_file, map_location="cpu", weights_only=True)
    return [{k: str(v) for k, v in row.items()} for row in state["history"]]
