"""Rebalancing: factors per strategy, seeded realised histograms within the stated tolerance (losses: test_losses)."""

import numpy as np
import pytest

from pipeline.data.stages.rebalance import RebalanceError, expected_histogram, rebalance_batch, sampling_factors, tolerance
from pipeline.spec import RebalanceSpec, spec_from_dict, spec_warnings

CLASSES = ["a", "b", "c", "d"]
COUNTS = np.array([1000, 300, 90, 25])


def factors(strategy, **kw):
    return sampling_factors(COUNTS, RebalanceSpec(strategy=strategy, **kw), CLASSES)


def test_expected_histograms_per_strategy():
    assert np.allclose(expected_histogram(COUNTS, factors("none")), COUNTS)
    assert np.allclose(expected_histogram(COUNTS, factors("oversample")), 1000)
    assert np.allclose(expected_histogram(COUNTS, factors("undersample")), 25)
    sq = expected_histogram(COUNTS, factors("sqrt"))
    assert np.isclose(sq.sum(), COUNTS.sum()) and np.allclose(sq / sq.sum(), np.sqrt(COUNTS) / np.sqrt(COUNTS).sum())
    tg = expected_histogram(COUNTS, factors("target", target={"a": 1, "b": 1, "c": 2}))
    assert np.allclose(tg, COUNTS.sum() * np.array([0.25, 0.25, 0.5, 0.0]))


def test_target_errors_name_the_classes():
    with pytest.raises(RebalanceError, match=r"unknown class\(es\) \['zz'\]"):
        factors("target", target={"zz": 1.0})
    with pytest.raises(RebalanceError, match="no training rows"):
        sampling_factors(np.array([5, 0, 5, 5]), RebalanceSpec(strategy="target", target={"b": 1}), CLASSES)


def stream(strategy, seed=0, epoch=0, batch=97, **kw):
    """Run the rebalance stage over a label stream in batches, as Ray would; return the realised histogram."""
    f = factors(strategy, **kw)
    labels = np.repeat(np.arange(4), COUNTS)
    keys = np.array([f"s{i}" for i in range(len(labels))], dtype=object)
    hist = np.zeros(4, dtype=np.int64)
    for start in range(0, len(labels), batch):
        out = rebalance_batch({"__key__": keys[start:start + batch], "label": labels[start:start + batch]},
                              f, seed, epoch)
        hist += np.bincount(out["label"], minlength=4)
    return hist, f


@pytest.mark.parametrize("strategy, kw", [("none", {}), ("oversample", {}), ("undersample", {}), ("sqrt", {}),
                                          ("target", {"target": {"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4}})])
def test_realised_histogram_within_tolerance(strategy, kw):
    hist, f = stream(strategy, **kw)
    expected = expected_histogram(COUNTS, f)
    for c in range(4):
        assert abs(hist[c] - expected[c]) <= tolerance(expected[c], f[c]), (strategy, hist, expected)


def test_seeded_reproducible_and_epochs_differ():
    a, _ = stream("sqrt", seed=1, epoch=0)
    b, _ = stream("sqrt", seed=1, epoch=0)
    c, _ = stream("sqrt", seed=1, epoch=1)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_copies_are_numbered():
    out = rebalance_batch({"__key__": np.array(["x", "y"], dtype=object), "label": np.array([0, 1])},
                          np.array([3.0, 1.0]), 0, 0)
    assert out["label"].tolist() == [0, 0, 0, 1] and out["copy"].tolist() == [0, 1, 2, 0]


def test_warn_when_resampling_and_reweighting_are_stacked():
    stacked = spec_from_dict({"rebalance": {"strategy": "oversample"}, "train": {"loss": "weighted_ce"}})
    assert "boosted twice" in spec_warnings(stacked)[0]
    assert spec_warnings(spec_from_dict({"rebalance": {"strategy": "oversample"},
                                         "train": {"loss": "logit_adjusted"}})) == []
    assert spec_warnings(spec_from_dict({"train": {"loss": "weighted_ce"}})) == []


def test_same_key_in_different_shards_draws_independently():
    keys = np.array(["000001"] * 200, dtype=object)
    urls = np.array([f"/data/shard-{i:03d}.tar" for i in range(200)], dtype=object)
    out = rebalance_batch({"__key__": keys, "__url__": urls, "label": np.zeros(200, dtype=np.int64)},
                          np.array([0.5]), 0, 0)
    assert 60 < len(out["label"]) < 140  # not all kept or all dropped together
    moved = rebalance_batch({"__key__": keys, "__url__": np.array([u.replace("/data", "/elsewhere") for u in urls],
                                                                  dtype=object),
                             "label": np.zeros(200, dtype=np.int64)}, np.array([0.5]), 0, 0)
    assert len(moved["label"]) == len(out["label"])  # moving the folder does not change the draws
