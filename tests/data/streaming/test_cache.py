"""data.cache: the train split's cleaned and aligned rows kept after one pass; only the per-epoch stages run again.
The cached dataset gives exactly the rows of the streaming one, epoch by epoch, without reading the tars again."""

import gc
import shutil
import time

import numpy as np
import pytest

from pipeline.data.streaming import cache
from pipeline.data.streaming import plan as plan_module
from pipeline.data.streaming.epoch import EpochClock
from pipeline.data.streaming.plan import DataPlan
from pipeline.spec import load_spec

# every per-epoch stage: rebalancing draws, augmentation of each modality, tokenize
PER_EPOCH = ["augment.image=[{name: HorizontalFlip, p: 0.5}, {name: ColorJitter, p: 0.5}]",
             "augment.audio=[{name: Gain, p: 0.5}]", "augment.text=[{name: RandomCharAug, p: 0.5}]",
             "rebalance.strategy=sqrt", "rebalance.seed=3",
             # which of two equal samples is kept depends on which read task claims first: two datasets (cached
             # and streamed) may keep different ones, one dataset keeps the same every epoch (idempotent claims)
             "clean.dedupe=false"]
COLUMNS = ["__key__", "copy", "image", "audio", "text", "label"]


def rows(ds):
    """Every row of one pass, in (key, copy) order."""
    return ds.to_pandas().sort_values(["__key__", "copy"]).reset_index(drop=True)


def assert_same_rows(a, b):
    assert list(a["__key__"]) == list(b["__key__"]) and list(a["copy"]) == list(b["copy"])
    for column in ("image", "audio", "text", "label"):
        assert np.array_equal(np.stack(a[column].to_numpy()), np.stack(b[column].to_numpy())), column


def epochs(spec, n=2, plan=None):
    """Every row of epochs 0..n-1 of one train dataset (built once, as training does)."""
    clock = EpochClock(0)
    ds = (plan or DataPlan(spec)).train_dataset(epoch=clock, columns=COLUMNS)
    out = []
    for epoch in range(n):
        clock.set(epoch)
        out.append(rows(ds))
    return out


@pytest.mark.fast
def test_a_cache_over_its_share_of_the_object_store_is_refused():
    assert cache.check_cache_fits(1000, 744, store_bytes=4e6) == 1000 * (744 + cache.CACHE_STRING_BYTES)
    with pytest.raises(cache.CacheError, match=r"data\.cache.*1,000 aligned rows x 3 concurrent trials") as e:
        cache.check_cache_fits(1000, 744, store_bytes=4e6, copies=3)
    assert "data.cache=false" in str(e.value) and f"{cache.CACHE_STORE_FRACTION:.0%}" in str(e.value)


@pytest.mark.ray
def test_cached_epochs_are_the_streamed_epochs(ray_session, demo_dir):
    """Same keys, copies and augmented values per (seed, epoch, key, copy); the rebalancing draw changes per epoch."""
    streamed = epochs(load_spec(demo_dir / "spec.yaml", PER_EPOCH))
    cached = epochs(load_spec(demo_dir / "spec.yaml", PER_EPOCH + ["data.cache=true"]))
    for a, b in zip(streamed, cached):
        assert_same_rows(a, b)
    draws = [sorted(zip(e["__key__"], e["copy"])) for e in cached]
    assert draws[0] != draws[1]


@pytest.mark.ray
def test_the_cache_reads_the_tars_once(ray_session, demo_dir, tmp_path):
    """Epochs after the first run without the tars: deleted once the cache holds the rows, training goes on."""
    for split in ("train", "val", "test"):
        shutil.copytree(demo_dir / split, tmp_path / split)
    shutil.copy(demo_dir / "manifest.json", tmp_path / "manifest.json")
    overrides = [f"data.splits.{s}={tmp_path}/{s}/*.tar" for s in ("train", "val", "test")]
    streaming = DataPlan(load_spec(demo_dir / "spec.yaml", PER_EPOCH + overrides))
    streamed = epochs(streaming.spec, plan=streaming)
    clock = EpochClock(0)
    cached = DataPlan(load_spec(demo_dir / "spec.yaml", PER_EPOCH + overrides + ["data.cache=true"])) \
        .train_dataset(epoch=clock, columns=COLUMNS)
    shutil.rmtree(tmp_path / "train")  # the cache pass ran in train_dataset
    for epoch in (0, 1):
        clock.set(epoch)
        assert_same_rows(rows(cached), streamed[epoch])
    with pytest.raises(Exception, match=r"train/train-0+\.tar"):  # the streaming dataset reads them again: fails
        rows(streaming.train_dataset(columns=COLUMNS))


@pytest.mark.ray
def test_blocks_come_in_a_new_order_each_epoch(ray_session, demo_dir, monkeypatch):
    from pipeline.data.streaming import source

    monkeypatch.setattr(plan_module, "PREPARE_BATCH_SIZE", 16)  # ~16 blocks: the same order twice is unlikely
    monkeypatch.setattr(source, "MIN_BLOCK_BYTES", 1)  # source.sized_blocks sizes the cached blocks too
    spec = load_spec(demo_dir / "spec.yaml", ["data.cache=true"])
    ds = DataPlan(spec).train_dataset(columns=["__key__"])
    orders = [list(ds.to_pandas()["__key__"]) for _ in range(3)]
    assert sorted(orders[0]) == sorted(orders[1]) == sorted(orders[2])
    assert orders[0] != orders[1] and orders[1] != orders[2]


@pytest.mark.ray
def test_a_cache_too_large_for_the_object_store_is_refused_before_reading(ray_session, demo_dir, monkeypatch):
    monkeypatch.setattr(cache, "CACHE_STORE_FRACTION", 1e-6)
    monkeypatch.setattr(plan_module, "cache_pass", lambda *a, **kw: pytest.fail("read despite the refusal"))
    with pytest.raises(cache.CacheError, match=r"data\.cache: the train split's \d+ aligned rows"):
        DataPlan(load_spec(demo_dir / "spec.yaml", ["data.cache=true"])).train_dataset()


@pytest.mark.ray
def test_the_cache_runs_in_the_runs_reservation_and_is_freed_with_it(ray_session, demo_dir):
    """Every task (the cache pass and each epoch's) inside the run's data CPUs: with the rest of the 2 CPUs held
    by another job, a task outside them would wait forever (the watch turns that into a StallError). The blocks
    are gone once the datasets holding them are."""
    from support.actors import cpus_held_by_another_job

    from pipeline.resources import data_reservation
    from pipeline.watchdog import watch

    spec = load_spec(demo_dir / "spec.yaml", PER_EPOCH + ["data.cache=true"])
    before = settled_store_bytes()
    with cpus_held_by_another_job(1), data_reservation(1) as strategy, watch("cached epochs", 60):
        ds = DataPlan(spec).train_dataset(epoch=1, columns=COLUMNS, scheduling_strategy=strategy)
        held = store_bytes_used()
        assert len(rows(ds)) > 0
    assert held - before > 200 * 64 * 64 * 3  # the demo's ~260 kept rows, 64x64 images and 1 s of audio each
    del ds
    assert settled_store_bytes() - before < (held - before) / 10


def store_bytes_used() -> int:
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address

    from pipeline.watchdog import state_address

    return get_memory_info_reply(get_state_from_address(state_address())).store_stats.object_store_bytes_used


def settled_store_bytes(timeout_s: float = 30.0) -> int:
    """Object store bytes in use once what is no longer referenced is gone (Ray frees asynchronously)."""
    deadline, last = time.monotonic() + timeout_s, None
    while True:
        gc.collect()
        now = store_bytes_used()
        if now == last or time.monotonic() > deadline:
            return now
        last = now
        time.sleep(1)
