"""TensorBoard event files as the training loop writes them, read back with TensorBoard's own reader."""

from __future__ import annotations

import pytest

from pipeline.tracking.tensorboard import EpochWriter, tag


def test_tags_group_by_split():
    assert tag("val.macro_f1") == "val/macro_f1"
    assert tag("val.precision.山") == "val/precision.山"
    assert tag("lr") == "lr"


def test_epochs_images_and_hparams_read_back(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    from pipeline.train.artifacts import confusion_figure

    writer = EpochWriter(tmp_path / "tb")
    epochs = [{"epoch": e, "lr": 0.01 / e, "val.macro_f1": 0.5 + e / 10, "val.auc": float("nan"), "flag": True}
              for e in (1, 2, 3)]
    for row in epochs:
        writer.epoch(row["epoch"], row, confusion_figure([[3, 1], [0, 4]], ["a", "山"], "val"))
    writer.hparams({"model.fusion": "late", "train.lr": 0.01, "rebalance": None}, epochs[-1])
    writer.close()

    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0, "images": 0}).Reload()
    assert sorted(events.Tags()["scalars"]) == ["lr", "val/macro_f1"]  # NaN, booleans and the epoch left out
    assert [(s.step, s.value) for s in events.Scalars("val/macro_f1")] == [(1, pytest.approx(0.6)),
                                                                          (2, pytest.approx(0.7)),
                                                                          (3, pytest.approx(0.8))]
    assert [i.step for i in events.Images("val/confusion")] == [1, 2, 3]
    assert events.Images("val/confusion")[0].encoded_image_string[:4] == b"\x89PNG"

    hparams = EventAccumulator(str(tmp_path / "tb" / "hparams")).Reload()
    content = hparams.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    assert start.hparams["model.fusion"].string_value == "late"
    assert start.hparams["train.lr"].number_value == pytest.approx(0.01)
    assert start.hparams["rebalance"].string_value == "None"
    assert [s.value for s in hparams.Scalars("hparam/val.macro_f1")] == [pytest.approx(0.8)]


KILLED_AFTER_AN_EPOCH = """
import os, sys
from pipeline.tracking.tensorboard import EpochWriter
from pipeline.train.artifacts import confusion_figure

writer = EpochWriter(sys.argv[1])
writer.epoch(1, {"epoch": 1, "lr": 0.01, "val.macro_f1": 0.5}, confusion_figure([[3, 1], [0, 4]], ["a", "b"], "val"))
os._exit(0)  # killed right after the epoch, as a failed worker is: no close(), no interpreter shutdown
"""


def test_an_epoch_written_is_on_disk_before_the_process_dies(tmp_path):
    """A worker killed after an epoch (its checkpoint about to be saved) must not take that epoch out of TensorBoard:
    a resumed run carries on from the next one. tensorboardX's flush() alone left the queued image behind."""
    import subprocess
    import sys

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    done = subprocess.run([sys.executable, "-c", KILLED_AFTER_AN_EPOCH, str(tmp_path / "tb")], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0, "images": 0}).Reload()
    assert [s.step for s in events.Scalars("val/macro_f1")] == [1]
    assert [i.step for i in events.Images("val/confusion")] == [1]
