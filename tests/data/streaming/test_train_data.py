"""The train split as training will read it (Ray): rebalance + augment, class counts, epochs, val/test untouched."""

import shutil

import numpy as np
import pytest

from pipeline.data.shards.manifest import DataError
from pipeline.data.streaming.epoch import EpochClock
from pipeline.data.streaming.plan import DataPlan, plan_rebalance
from pipeline.data.stages.rebalance import tolerance
from pipeline.spec import load_spec

pytestmark = pytest.mark.ray

AUGMENT = ["augment.image=[{name: HorizontalFlip, p: 0.5}, {name: ColorJitter, p: 0.5}]",
           "augment.audio=[{name: Gain, p: 0.5}]", "augment.text=[{name: RandomCharAug, p: 0.5}]"]


def test_counts_from_manifest_match_a_label_pass(ray_session, demo_dir, tmp_path):
    spec = load_spec(demo_dir / "spec.yaml")
    plan = DataPlan(spec)
    classes = plan.classes
    from_manifest, source = plan.class_counts()
    assert source == "manifest.json"
    # a spec reading only some of the shards cannot use the manifest's counts
    first = sorted((demo_dir / "train").glob("*.tar"))[0]
    partial = load_spec(demo_dir / "spec.yaml", [f"data.splits.train={first}"])
    counts, source = DataPlan(partial, classes).class_counts()
    assert source == "label pass" and counts.sum() < from_manifest.sum()
    (tmp_path / "train").mkdir()
    for shard in (demo_dir / "train").glob("*.tar"):
        shutil.copy(shard, tmp_path / "train" / shard.name)
    copied = load_spec(demo_dir / "spec.yaml", [f"data.splits.train={tmp_path}/train/*.tar"])
    counts, source = DataPlan(copied, classes).class_counts()
    assert source == "label pass" and counts.tolist() == from_manifest.tolist()
    named = load_spec(demo_dir / "spec.yaml", [f"data.manifest={tmp_path}/none.json"])
    with pytest.raises(DataError, match="data.manifest"):
        DataPlan(named, classes).class_counts()


def test_seeded_epoch_histogram_matches_the_plan(ray_session, demo_dir):
    spec = load_spec(demo_dir / "spec.yaml", ["rebalance.strategy=sqrt", "rebalance.seed=3"])
    data = DataPlan(spec)
    classes = data.classes
    kept = data.split("train").report(classes).class_histogram
    plan = plan_rebalance(spec, classes, [kept.get(c, 0) for c in classes], "test")
    labels = np.concatenate([b["label"] for b in data.train_dataset(columns=["label"], rebalance=plan)
                             .iter_batches(batch_format="numpy")])
    realised = np.bincount(labels, minlength=len(classes))
    for c, (got, want, f) in enumerate(zip(realised, plan.expected, plan.factors)):
        assert abs(got - want) <= tolerance(want, f), (classes[c], got, want)
    assert realised[-1] > kept[classes[-1]]  # the rarest class was oversampled


def test_epoch_clock_changes_augmentation_and_val_is_untouched(ray_session, demo_dir):
    spec = load_spec(demo_dir / "spec.yaml", AUGMENT)
    plain = load_spec(demo_dir / "spec.yaml")
    data = DataPlan(spec)
    classes = data.classes
    clock = EpochClock(0)
    ds = data.train_dataset(epoch=clock, columns=["__key__", "image", "audio", "text"])

    def read():
        rows = ds.to_pandas().sort_values("__key__")
        return np.stack(rows["image"].to_numpy()), np.stack(rows["audio"].to_numpy())

    e0, e0_again = read(), read()
    clock.set(1)
    e1 = read()
    assert np.array_equal(e0[0], e0_again[0]) and np.array_equal(e0[1], e0_again[1])
    assert not np.array_equal(e0[0], e1[0]) and not np.array_equal(e0[1], e1[1])

    def val(s):
        return DataPlan(s, classes).eval_dataset("val", columns=["__key__", "image", "audio", "text"]) \
            .to_pandas().sort_values("__key__")
    a, b = val(spec), val(plain)
    for col in ("image", "audio", "text"):
        assert np.array_equal(np.stack(a[col].to_numpy()), np.stack(b[col].to_numpy())), col


def test_prepared_batches_leave_their_read_task_as_they_are_made(ray_session, demo_dir, monkeypatch):
    """A shard's read task hands over blocks of about one prepared batch as it makes them (training's first batch
    does not wait for whole shards); Ray Data's default buffered a shard's whole output into one block at the task's
    end. Sized by what the rows carry at the end of the path: here only the image, as for an image-only model."""
    from pipeline.data.streaming import source as prepared_source
    from pipeline.data.stages.align import aligned_row_bytes
    from pipeline.data.stages.config import StageConfig
    from pipeline.data.stages.path import sample_path

    monkeypatch.setattr(prepared_source, "MIN_BLOCK_BYTES", 1)  # the demo's small batches would not reach 1 MiB
    spec = load_spec(demo_dir / "spec.yaml")
    cfg = StageConfig.from_spec(spec, DataPlan(spec).classes, True)
    batch = 16
    columns = ["image", "present_image", "label", "__url__"]
    shards = sorted(str(p) for p in (demo_dir / "train").glob("*.tar"))[:2]
    ds = prepared_source.read_prepared(shards, sample_path(spec, cfg, "eval", columns=columns), batch,
                                       aligned_row_bytes(cfg.modalities, ["image"])).materialize()
    rows_per_block = [e.metadata.num_rows for bundle in ds.iter_internal_ref_bundles() for e in bundle.blocks]
    assert sum(rows_per_block) == ds.count() > 4 * batch  # several batches per shard, or the test shows nothing
    # a batch short of `batch` rows joins the next one; Ray Data slices what reaches 1.5x the target
    assert max(rows_per_block) <= 1.5 * batch and len(rows_per_block) >= ds.count() // (1.5 * batch)


def test_data_worker_warm_up_imports_and_builds_the_augmenters(ray_session, demo_dir):
    """The warm-up tasks run (imports, the spec's augmenters) in Ray Train's runtime environment, the one Ray Data's
    read tasks get inside training: Ray reuses an idle worker only for tasks of the same environment."""
    from pipeline.data.streaming.warmup import train_runtime_env, warm_data_workers

    spec = load_spec(demo_dir / "spec.yaml", AUGMENT)
    refs = warm_data_workers(spec, count=2)
    assert len(refs) == 2
    ray_session.get(refs, timeout=120)
    assert train_runtime_env()["env_vars"]["RAY_WARN_BLOCKING_GET_INSIDE_ASYNC"] == "0"
