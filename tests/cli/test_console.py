"""The console without Ray: plain lines off a terminal, live bars on one, the training feed turning heartbeat reads
into one line per epoch, the tune trial table, and Ray's loggers sent to the log file."""

import io
import logging
import re
import time

import pytest
from rich.console import Console

from pipeline import console as con
from pipeline.progress import TrainingFeed, epoch_line
from pipeline.tune.progress import TrialRows

pytestmark = pytest.mark.fast

ANSI = re.compile(r"\x1b\[")
METRICS = {"train.loss": 1.2, "train.accuracy": 0.5, "val.loss": 1.1, "val.accuracy": 0.6, "val.macro_f1": 0.55}


class Recorder(con.View):
    def __init__(self):
        self.calls = []

    def start(self, label, total):
        self.calls.append(("start", label, total))

    def update(self, done, loss=None, label=None):
        self.calls.append(("update", done, loss, label))

    def done(self, line):
        self.calls.append(("done", line))

    def line(self, text):
        self.calls.append(("line", text))


def plain_console():
    buf = io.StringIO()
    return Console(file=buf, width=con.UNWRAPPED_WIDTH, soft_wrap=True, color_system=None), buf


def test_plain_view_prints_lines_only_no_bars_no_colour():
    c, buf = plain_console()
    view = con.view_for(c)
    assert type(view) is con.PlainView  # a StringIO is not a terminal
    view.header("train demo", {"data": "/a/very/long/path/" * 10 + "train/*.tar", "workers": "2 x 0.5 CPU"})
    view.start("epoch 1/2", 100)
    view.update(50, 1.234)
    view.done("epoch 1/2: train loss 1.234")
    view.close()
    lines = buf.getvalue().splitlines()
    assert lines[0] == "train demo" and lines[1].startswith("  data: /a/very/long/path/")  # one line: no wrap
    assert lines[1].endswith("train/*.tar") and lines[2] == "  workers: 2 x 0.5 CPU"
    assert lines[3:] == ["epoch 1/2: train loss 1.234"]  # nothing from start/update
    assert not ANSI.search(buf.getvalue())


def test_a_long_pass_off_a_terminal_says_how_far_it_is_every_so_often():
    c, buf = plain_console()
    view = con.PlainView(c, every_s=0.2)
    view.start("epoch 1/2", 1000)
    view.update(10, 2.5)  # under every_s since the start: nothing yet
    time.sleep(0.25)
    view.update(400, 1.75)
    view.update(420, 1.7)  # just said: nothing
    time.sleep(0.25)
    view.update(800, None, "validate val")
    view.done("epoch 1/2: train loss 1.600")
    lines = buf.getvalue().splitlines()
    assert len(lines) == 3 and lines[2] == "epoch 1/2: train loss 1.600"
    assert re.fullmatch(r"epoch 1/2: 400 of 1,000 rows so far, [\d,]+ rows/s, loss 1\.750, about [\d,]+ s left",
                        lines[0]), lines[0]
    assert lines[1].startswith("validate val: 800 of 1,000 rows so far") and "loss" not in lines[1]
    view.update(900)  # after done(): no pass, nothing
    assert len(buf.getvalue().splitlines()) == 3


def test_live_view_draws_a_bar_with_rows_speed_eta_and_loss_then_one_line():
    buf = io.StringIO()
    c = Console(file=buf, force_terminal=True, width=140)
    view = con.view_for(c)
    assert isinstance(view, con.LiveView)
    view.start("epoch 1/2", 200)
    view.update(20, 1.5)
    time.sleep(0.05)  # rich's speed (and so the ETA) needs two samples
    view.update(50, 1.2345)
    view.progress.refresh()
    drawn = buf.getvalue()
    assert "epoch 1/2" in drawn and "50/200" in drawn and "rows/s" in drawn and "loss 1.234" in drawn
    assert "ETA" in drawn
    view.done("epoch 1/2: train loss 1.234")
    view.close()
    assert "epoch 1/2: train loss 1.234" in buf.getvalue()


def test_a_pass_is_one_line_off_a_terminal_and_nothing_outside_the_command_line(capsys):
    c, buf = plain_console()
    with con.showing(con.view_for(c)):
        shown = con.PassCount("data report: val", 3000)
        for _ in range(3):
            shown.add(1000)
        line = shown.finish(" (2,900 kept)")
    assert buf.getvalue().splitlines() == [line]  # not a line per batch
    assert re.fullmatch(r"data report: val: 3,000 rows \(2,900 kept\) in \d+\.\d s, [\d,]+ rows/s", line), line
    con.PassCount("packing", 10).finish()  # a library call: the default view shows nothing
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("total", [200, None])
def test_a_pass_on_a_terminal_is_a_bar_with_rows_and_speed_then_one_line(total):
    buf = io.StringIO()
    with con.showing(con.view_for(Console(file=buf, force_terminal=True, width=140))) as view:
        shown = con.PassCount("predict", total)
        shown.add(20)
        time.sleep(0.05)  # rich's speed needs two samples
        shown.add(30)
        view.progress.refresh()
        drawn = buf.getvalue()
        assert "predict" in drawn and ("50/200" if total else "50/?") in drawn and "rows/s" in drawn, drawn
        assert ("ETA" in drawn) == (total is not None)  # an ETA only when the total is known
        shown.finish(" (50 predicted)")
    assert "predict: 50 rows (50 predicted) in " in buf.getvalue()


def test_the_off_terminal_console_does_not_wrap_or_colour(capsys):
    c = con.make_console()  # pytest's captured stdout is not a terminal
    path = "/tmp/" + "x" * 150 + "/spec.yaml"
    c.print(f"[red]next:[/] mmpipe validate {path}")
    out = capsys.readouterr().out
    assert out == f"next: mmpipe validate {path}\n"


def test_feed_one_bar_and_one_line_per_epoch_whatever_the_reads_repeat(caplog):
    rec = Recorder()
    feed = TrainingFeed(rec, epochs=2, rows_per_epoch=100.0)
    status = lambda epoch, phase, rows, loss=None: {  # noqa: E731
        r: {"rank": r, "epoch": epoch, "phase": phase, "rows": rows, "loss": loss} for r in (0, 1)}
    with caplog.at_level(logging.INFO, logger="pipeline.progress"):
        feed.feed(1, [{"kind": "first_batch", "time": 123.5}], status(0, "train", 16, 2.0))
    feed.feed(1, [], status(0, "train", 32, 1.0))
    feed.feed(1, [], status(0, "val", 8))
    epoch0 = {"kind": "epoch", "epoch": 0, "epochs": 2, "metrics": METRICS, "seconds": 3.0}
    feed.feed(2, [epoch0], status(0, "val", 16))  # the status still says epoch 0: no new bar for it
    feed.feed(2, [epoch0], {})  # the same event read twice: one line
    feed.feed(3, [], status(1, "train", 10, 0.5))
    starts = [c for c in rec.calls if c[0] == "start"]
    dones = [c for c in rec.calls if c[0] == "done"]
    assert starts == [("start", "epoch 1/2", 100.0), ("start", "epoch 2/2", 100.0)]
    assert dones == [("done", epoch_line(epoch0))]
    updates = [c for c in rec.calls if c[0] == "update"]
    assert updates[0] == ("update", 32, 2.0, "epoch 1/2")  # rows summed over ranks, loss averaged
    assert ("update", 100.0, None, "epoch 1/2 validating") in updates
    assert "first training batch at unix time 123.500" in caplog.text  # benchmarks/first_batch.py reads it
    assert epoch_line(epoch0) == ("epoch 1/2: train loss 1.200 acc 0.500 | val loss 1.100 acc 0.600 "
                                  "macro-F1 0.550 (3.0 s)")



def test_feed_keeps_a_validating_rank_s_trained_rows_in_the_bar():
    """Ranks leave training at different times: the bar must not fall back when one starts validating."""
    rec = Recorder()
    feed = TrainingFeed(rec, epochs=1, rows_per_epoch=64.0)
    feed.feed(1, [], {0: {"epoch": 0, "phase": "train", "rows": 32}, 1: {"epoch": 0, "phase": "train", "rows": 24}})
    feed.feed(2, [], {0: {"epoch": 0, "phase": "val", "rows": 8}, 1: {"epoch": 0, "phase": "train", "rows": 32}})
    assert [c[1] for c in rec.calls if c[0] == "update"] == [56, 64]

def test_trial_rows_line_and_table():
    rows = TrialRows("val.macro_f1", "max", {"fusion": "concat", "optimizer": "adamw", "lr": 0.001})
    rows.started("a_00000", {"model.fusion": "late"})
    rows.result("a_00000", {"model.fusion": "late"}, {"training_iteration": 1, "val.macro_f1": 0.4})
    rows.result("a_00000", {"model.fusion": "late"}, {"training_iteration": 2, "val.macro_f1": 0.3})
    row = rows.ended("a_00000", {"model.fusion": "late"}, "TERMINATED")
    assert rows.line(row) == ("trial a_00000 TERMINATED fusion=late optimizer=adamw lr=0.001 "
                              "best val.macro_f1=0.4 epochs=2")
    buf = io.StringIO()
    Console(file=buf, width=200).print(rows.table())
    assert all(col in buf.getvalue() for col in ("state", "fusion", "optimizer", "lr", "best", "epochs"))
    assert "TERMINATED" in buf.getvalue() and "late" in buf.getvalue()


def test_ray_loggers_go_to_the_log_file_not_the_terminal(tmp_path, monkeypatch):
    monkeypatch.delenv(con.VERBOSE_ENV, raising=False)
    noisy = logging.getLogger("ray.mmpipe_test")
    loud = io.StringIO()
    noisy.addHandler(logging.StreamHandler(loud))
    noisy.propagate = False
    root_before = list(logging.getLogger().handlers)
    try:
        path = con.log_to(tmp_path / "logs" / con.LOG_FILE)
        noisy.warning("Execution plan of Dataset val_1")
        logging.getLogger("pipeline.test").info("ours")
        assert loud.getvalue() == ""
        text = path.read_text(encoding="utf-8")
        assert "Execution plan of Dataset val_1" in text and "ours" in text
    finally:
        con.end_logging()
        assert logging.getLogger().handlers == root_before
        noisy.handlers.clear()


def test_log_file_is_in_the_run_directory_or_a_temp_file(tmp_path):
    assert con.log_file_for(tmp_path / "run", "train") == tmp_path / "run" / "logs" / "mmpipe.log"
    assert con.log_file_for("s3://bucket/run", "run").name.startswith("run-")
    assert con.log_file_for(None, "validate").parent.name == "mmpipe-logs"
