"""The same content in two splits: reported per split pair (count, example keys on each side) and, with
clean.cross_split_duplicates: drop_from_train, dropped from train as duplicate_of_eval. The pure parts without
Ray; one Ray test over the demo data with a train shard listed in val too."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from support import raw_batch
from pipeline.data.stages.clean import hash_batch
from pipeline.data.stages.config import StageConfig
from pipeline.data.stages.dedupe import HASH_COLUMN, ContentSet, CrossSplitFinder, DuplicateIndex, content_hash
from pipeline.data.stages.path import prepare_batch
from pipeline.data.stages.report import DataReport, SplitReport
from pipeline.spec import load_spec, spec_from_dict

CLASSES = ["猫", "dog"]


def cfg() -> StageConfig:
    return StageConfig.from_spec(spec_from_dict({"modalities": {"image": {"size": [8, 8]}, "text": {"max_tokens": 8}}}),
                                 CLASSES)


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def sample(key: str, seed: int, label: bytes = b"0") -> dict:
    return {"__key__": key, "png": png(seed), "txt": f"样本 {seed}".encode(), "cls": label}


def h(n: int) -> str:
    return content_hash([str(n).encode()])


def test_content_set_finds_hashes_and_names_the_split_holding_them():
    content = ContentSet({"val": [h(1), h(2)], "test": [h(2), h(3)], "holdout": []})
    assert len(content) == 3
    assert content.where([h(1), h(2), h(3), h(4)]) == ["val", "val", "test", None]  # in two splits: the first
    again = pickle.loads(pickle.dumps(content))  # travels into read tasks
    assert again.where([h(3), h(9)]) == ["test", None]
    assert ContentSet({}).where([h(1)]) == [None] and ContentSet({"val": [h(1)]}).where([]) == []


def test_finder_counts_distinct_shared_content_per_pair_with_paired_examples():
    finder = CrossSplitFinder(examples=2)
    finder.add("val", [h(1), h(2), "", h(5)], ["v1", "v2", "v-bad", "v5"], ["val.tar"] * 4)
    finder.add("test", [h(2), h(3)], ["t2", "t3"], ["test.tar"] * 2)
    # train, last and not remembered: h(2) twice (counted once per pair), h(1), h(3) and h(5) shared
    finder.add("train", [h(2), h(2), h(1), h(3), h(5), h(7)], ["a", "b", "c", "d", "e", "f"], ["tr.tar"] * 6,
               remember=False)
    pairs = {tuple(p["splits"]): p for p in finder.pairs(["train", "val", "test"])}
    assert set(pairs) == {("train", "val"), ("train", "test"), ("val", "test")}
    assert [pairs[p]["count"] for p in sorted(pairs)] == [2, 3, 1]  # (train,test) (train,val) (val,test)
    tv = pairs[("train", "val")]["examples"]
    assert [e["key"] for e in tv["train"]] == ["a", "c"] and [e["key"] for e in tv["val"]] == ["v2", "v1"]
    assert tv["val"][0]["shard"] == "val.tar"
    assert pairs[("val", "test")]["examples"] == {"val": [{"key": "v2", "shard": "val.tar"}],
                                                  "test": [{"key": "t2", "shard": "test.tar"}]}
    assert "train" not in finder._seen  # the last split is matched, never held


def test_hash_only_pass_gives_the_hashes_clean_gives_and_reads_nothing_bad():
    val = raw_batch([sample("v1", 1), sample("v2", 2), {"__key__": "nolabel", "png": png(3)},
                     sample("undecodable", 4) | {"png": b"not a png"}], url="val.tar")
    hashes = list(hash_batch(val, cfg())[HASH_COLUMN])
    cleaned = prepare_batch(val, cfg())
    assert list(cleaned["drop_reason"]) == ["", "", "label_missing", "image_undecodable"]
    assert hashes[:2] == list(cleaned[HASH_COLUMN][:2]) and len(hashes) == 3  # no label: never hashed
    assert cleaned[HASH_COLUMN][2] == cleaned[HASH_COLUMN][3] == ""


def test_train_rows_held_by_another_split_are_dropped_and_in_split_duplicates_keep_their_meaning():
    c = cfg()
    val = raw_batch([sample("v1", 1), sample("v2", 2)], url="val.tar")
    content = ContentSet({"val": list(hash_batch(val, c)[HASH_COLUMN])})
    train = raw_batch([sample("a", 1), sample("a-again", 1), sample("b", 2, label=b"1"), sample("c", 3),
                       sample("c-again", 3), sample("d", 4)], url="train.tar")
    out = prepare_batch(train, c, DuplicateIndex(), eval_content=content)
    # both copies of v1's content go; v2's media under another label is other content; c's copy is an in-split one
    assert list(out["drop_reason"]) == ["duplicate_of_eval", "duplicate_of_eval", "", "", "duplicate", ""]
    assert out["drop_detail"][0] == "same content as a sample of split 'val'"
    assert "train.tar::c" in out["drop_detail"][4]
    assert not out["present_image"][0] and not out["image"][0].any()  # a dropped row carries no data
    report = SplitReport("train", CLASSES)
    report.add_batch(out)
    assert report.balanced and report.dropped == {"duplicate_of_eval": 2, "duplicate": 1} and report.rows_kept == 3
    # without the set (cross_split_duplicates: report) train keeps them: one copy, the other an in-split duplicate
    plain = prepare_batch(train, c, DuplicateIndex())
    assert list(plain["drop_reason"]) == ["", "duplicate", "", "", "duplicate", ""]


def test_report_prints_and_writes_the_shared_content(tmp_path):
    report = DataReport(CLASSES, {n: SplitReport(n, CLASSES) for n in ("train", "val")})
    finder = CrossSplitFinder()
    finder.add("val", [h(1)], ["val/猫 1"], ["val.tar"])
    finder.add("train", [h(1)], ["train/[b]猫"], ["train.tar"], remember=False)
    report.cross_split = finder.pairs(["train", "val"])
    console = Console(record=True, width=200)
    report.print(console)
    text = console.export_text()
    assert "same content in val" in text and "same content in train and val: 1 sample(s)" in text
    assert "train: train/[b]猫; val: val/猫 1" in text  # keys printed as they are, markup-like or not
    report.write_json(tmp_path / "r.json")
    import json

    saved = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert saved["cross_split_duplicates"] == [{"splits": ["train", "val"], "count": 1, "examples": {
        "train": [{"key": "train/[b]猫", "shard": "train.tar"}], "val": [{"key": "val/猫 1", "shard": "val.tar"}]}}]


@pytest.mark.ray
def test_a_train_shard_listed_in_val_is_reported_and_dropped_from_train(ray_session, demo_dir):
    from pipeline.data.streaming.plan import DataPlan

    shards = sorted(str(p) for p in (demo_dir / "train").glob("*.tar"))[:2]
    base = load_spec(demo_dir / "spec.yaml")
    spec = base.model_copy(deep=True)
    spec.data.splits = {"train": shards, "val": [shards[1]]}  # the second train shard is val's too
    spec.rebalance.strategy, spec.augment.enabled = "none", False  # an epoch is then exactly the kept rows
    plan = DataPlan(spec)
    report = plan.validate()
    [pair] = report.cross_split
    assert pair["splits"] == ["train", "val"] and pair["count"] == report.splits["val"].rows_kept > 0
    assert {e["shard"] for e in pair["examples"]["val"]} == {shards[1]}
    assert {e["shard"] for e in pair["examples"]["train"]} <= set(shards)
    assert "duplicate_of_eval" not in report.splits["train"].dropped  # reported only

    spec.clean.cross_split_duplicates = "drop_from_train"
    dropping = DataPlan(spec)
    train = dropping.validate().splits["train"]
    assert train.balanced and train.rows_in == report.splits["train"].rows_in
    assert train.dropped["duplicate_of_eval"] >= pair["count"]  # every copy of val's content in train
    assert train.rows_kept <= report.splits["train"].rows_kept - pair["count"]
    assert dropping.validate().cross_split == report.cross_split  # still reported, from the rows it dropped
    rows = dropping.train_dataset(columns=["__url__"]).take_all()
    assert len(rows) == train.rows_kept and {r["__url__"] for r in rows} == {shards[0]}
    assert len(dropping._files.eval_content) == 1  # one hash pass for the plan's validate and training
