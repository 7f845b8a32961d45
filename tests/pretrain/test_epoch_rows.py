"""The epoch a pretraining's learning-rate schedule is sized for: every sample of the train shards, labelled or not,
from the shard checks alone (no Ray, no pass over the data)."""

import pytest

from pipeline.data.streaming.plan import DataPlan
from pipeline.spec import spec_from_dict
from pipeline.train.pretrain import epoch_rows, pretrain_spec
from support import write_tar

pytestmark = pytest.mark.fast


def test_a_pretraining_epoch_counts_unlabelled_samples(tmp_path):
    """Shards without any label member: class counts would be 0 (and the schedule one step per epoch)."""
    for shard, keys in (("a", range(5)), ("b", range(5, 12))):
        write_tar(tmp_path / f"{shard}.tar", [(f"s{k:03d}.txt", f"sample {k} 样本".encode()) for k in keys])
    (tmp_path / "c.tar").write_bytes(b"not a tar at all")  # left out, as a pass would leave it out
    spec = pretrain_spec(spec_from_dict({
        "data": {"splits": {"train": [str(tmp_path / "*.tar")]}},
        "label": {"classes": ["a", "b"], "tasks": {"speaker": {"classes": ["x", "y"]}}},
        "rebalance": {"strategy": "oversample", "task": "speaker"}, "train": {"batch_size": 4}}))
    assert epoch_rows(DataPlan(spec)) == 12.0
