"""train.label_fraction: a seeded, per-key fraction of each class keeps its label; the rest become -1."""

import numpy as np
import pytest

from pipeline.data.stages.label_fraction import UNLABELLED, label_fraction_batch, labelled_mask
from pipeline.data.stages.path import sample_path
from pipeline.data.stages.config import StageConfig
from pipeline.spec import spec_from_dict


def _batch(n_per_class=(400, 200, 100), url="train-000.tar"):
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(n_per_class)]).astype(np.int64)
    keys = np.array([f"数据/样本-{i:05d}-é" for i in range(len(labels))], dtype=object)  # unicode keys
    return {"__key__": keys, "__url__": np.array([url] * len(labels), dtype=object), "label": labels,
            "x": np.arange(len(labels))}


@pytest.mark.parametrize("fraction", [0.1, 0.5])
def test_each_class_keeps_about_the_fraction(fraction):
    batch = _batch()
    out = label_fraction_batch(batch, fraction, seed=0)
    for c, n in enumerate((400, 200, 100)):
        kept = int(((out["label"] == c)).sum())
        assert (out["label"][batch["label"] == c] != c).sum() == n - kept  # the rest are exactly -1
        # stratified: each class thinned at the same rate (4 binomial standard deviations)
        assert abs(kept - n * fraction) <= 4 * np.sqrt(n * fraction * (1 - fraction)), (c, kept)
    assert set(np.unique(out["label"])) <= {UNLABELLED, 0, 1, 2}
    assert np.array_equal(out["x"], batch["x"])  # other columns untouched


def test_same_rows_every_time_whatever_the_batching():
    batch = _batch()
    whole = label_fraction_batch(batch, 0.2, seed=3)["label"]
    halves = np.concatenate([label_fraction_batch({k: v[s] for k, v in batch.items()}, 0.2, seed=3)["label"]
                             for s in (slice(0, 333), slice(333, None))])
    assert np.array_equal(whole, halves)
    assert np.array_equal(whole, label_fraction_batch(batch, 0.2, seed=3)["label"])
    assert not np.array_equal(whole, label_fraction_batch(batch, 0.2, seed=4)["label"])  # the seed matters


def test_a_larger_fraction_keeps_a_superset():
    keys = [f"k{i}" for i in range(500)]
    small, large = labelled_mask(keys, 0.1, 0), labelled_mask(keys, 0.3, 0)
    assert small.sum() < large.sum() and not (small & ~large).any()


def test_the_stage_runs_in_the_train_path_only_when_asked():
    spec = spec_from_dict({"train": {"label_fraction": 0.1}})
    cfg = StageConfig.from_spec(spec, ["a", "b"])
    assert "label fraction" in [s.name for s in sample_path(spec, cfg, "train")]
    assert "label fraction" not in [s.name for s in sample_path(spec, cfg, "eval")]
    plain = spec_from_dict({})
    assert "label fraction" not in [s.name for s in sample_path(plain, StageConfig.from_spec(plain, ["a", "b"]),
                                                                "train")]
