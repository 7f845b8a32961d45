"""The trials of a running ``mmpipe tune`` on the driver's console: a live table on a terminal (state, fusion,
optimizer, lr, best metric, epochs), one plain line per trial that starts, finishes or fails anywhere else. Tune's
own status tables are switched off (``tune.RunConfig(verbose=0)``) unless ``-v``.

``TrialRows`` holds the table and is testable without Ray; ``trial_table_callback`` wraps it in a Tune callback.
Tune pickles its callbacks with the experiment: they keep plain data, and find the console at call time
(``console.current()``)."""

from __future__ import annotations

import math
from typing import Any

from pipeline.console import LiveView, current

COLUMNS = ("trial", "state", "fusion", "optimizer", "lr", "best", "epochs")
KEYS = {"fusion": "model.fusion", "optimizer": "train.optimizer", "lr": "train.lr"}
FINAL = ("TERMINATED", "ERROR")


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "-" if value is None else str(value)


class TrialRows:
    """One row per trial: what was drawn for it, its state and the best value of ``metric`` so far."""

    def __init__(self, metric: str, mode: str, base: dict[str, Any]) -> None:
        self.metric, self.mode = metric, mode
        self.base = base  # {column: the spec's value}, for columns the search does not vary
        self.rows: dict[str, dict[str, Any]] = {}

    def _row(self, trial_id: str, config: dict) -> dict[str, Any]:
        if trial_id not in self.rows:
            self.rows[trial_id] = {"trial": trial_id, "state": "PENDING", "best": None, "epochs": 0,
                                   **{col: config.get(key, self.base.get(col)) for col, key in KEYS.items()}}
        return self.rows[trial_id]

    def started(self, trial_id: str, config: dict) -> dict:
        row = self._row(trial_id, config)
        row["state"] = "RUNNING"
        return row

    def result(self, trial_id: str, config: dict, result: dict) -> dict:
        row = self._row(trial_id, config)
        row["state"] = "RUNNING"
        row["epochs"] = int(result.get("training_iteration", row["epochs"]))
        value = result.get(self.metric)
        if isinstance(value, (int, float)) and not math.isnan(value):
            better = max if self.mode == "max" else min
            row["best"] = value if row["best"] is None else better(row["best"], value)
        return row

    def ended(self, trial_id: str, config: dict, state: str) -> dict:
        row = self._row(trial_id, config)
        row["state"] = state
        return row

    def line(self, row: dict) -> str:
        """``trial 9a1f_00002 TERMINATED fusion=late optimizer=adamw lr=0.0012 best val.macro_f1=0.81 epochs=3``"""
        return (f"trial {row['trial']} {row['state']} fusion={row['fusion']} optimizer={row['optimizer']} "
                f"lr={_short(row['lr'])} best {self.metric}={_short(row['best'])} epochs={row['epochs']}")

    def table(self):
        from rich.table import Table

        table = Table(title=f"trials (best {self.metric})", title_justify="left")
        for col in COLUMNS:
            table.add_column(col, justify="right" if col in ("lr", "best", "epochs") else "left")
        for row in self.rows.values():
            table.add_row(*(_short(row[col]) for col in COLUMNS))
        return table


def trial_table_callback(metric: str, mode: str, base: dict[str, Any]):
    """A Tune callback drawing ``TrialRows`` on ``console.current()``: live on a terminal, lines elsewhere."""
    from ray.tune import Callback

    class TrialTable(Callback):
        def __init__(self) -> None:
            self.rows = TrialRows(metric, mode, base)
            self._live = None

        def __getstate__(self):  # the live display stays with this process
            return {**self.__dict__, "_live": None}

        def _show(self, row: dict, changed: bool) -> None:
            view = current()
            if isinstance(view, LiveView):
                from rich.live import Live

                if self._live is None:
                    self._live = Live(self.rows.table(), console=view.console, refresh_per_second=2)
                    self._live.start()
                self._live.update(self.rows.table())
            elif changed:
                view.line(self.rows.line(row))

        def on_trial_start(self, iteration, trials, trial, **info):
            self._show(self.rows.started(trial.trial_id, trial.config), True)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self._show(self.rows.result(trial.trial_id, trial.config, result), False)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._show(self.rows.ended(trial.trial_id, trial.config, "TERMINATED"), True)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._show(self.rows.ended(trial.trial_id, trial.config, "ERROR"), True)

        def on_experiment_end(self, trials, **info):
            if self._live is not None:
                self._live.update(self.rows.table())
                self._live.stop()  # the last table stays on the terminal
                self._live = None

    return TrialTable()
