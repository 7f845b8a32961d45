"""The Ray Data path end to end on real tar files: report accounting, shapes, bad shards, Unicode, pack -> read."""

import gzip
import json
import shutil

import numpy as np
import pytest

from support import write_tar
from pipeline.data.streaming.split import build_split, resolve_classes, validate_splits
from pipeline.data.shards.check import ShardError
from pipeline.data.stages.tokenize import decode_bytes
from pipeline.spec import load_spec, spec_from_dict

pytestmark = pytest.mark.ray


def test_demo_report_accounts_for_every_planted_sample(ray_session, demo_dir):
    spec = load_spec(demo_dir / "spec.yaml")
    manifest = json.loads((demo_dir / "manifest.json").read_text(encoding="utf-8"))
    report = validate_splits(spec)
    for name, split in report.splits.items():
        assert split.rows_in == manifest["splits"][name]["samples"]
        assert split.rows_in == split.rows_kept + sum(split.dropped.values())
        assert split.dropped == manifest["planted"].get(name, {}), name
        assert sum(split.class_histogram.values()) == split.rows_kept
        for reason, examples in split.examples.items():
            assert all(e["key"].startswith(f"{name}/bad") and e["shard"].endswith(".tar") for e in examples)
    assert set(manifest["planted"]["train"]) >= {"duplicate", "image_too_large", "audio_silent", "label_unknown"}
    d = report.to_dict()["splits"]["train"]
    assert 0.8 < d["modality_coverage"]["text"] < 1.0 and d["modality_coverage"]["image"] == 1.0


def test_kept_batches_have_documented_shapes_and_dtypes(ray_session, demo_dir):
    spec = load_spec(demo_dir / "spec.yaml")
    data = build_split(spec, "val", resolve_classes(spec))
    columns = ["image", "text", "audio", "label", "present_image", "present_text", "present_audio"]
    batches = list(data.kept().select_columns(columns).iter_torch_batches(batch_size=32))
    b = batches[0]
    assert tuple(b["image"].shape) == (32, 32, 32, 3) and str(b["image"].dtype) == "torch.uint8"
    assert tuple(b["text"].shape) == (32, 16) and str(b["text"].dtype) == "torch.int64"
    assert tuple(b["audio"].shape) == (32, 8000) and str(b["audio"].dtype) == "torch.float32"
    assert str(b["label"].dtype) == "torch.int64" and str(b["present_text"].dtype) == "torch.bool"
    total = sum(len(x["label"]) for x in batches)
    assert total == validate_splits(spec, ["val"]).splits["val"].rows_kept


def test_bad_shards_are_reported_and_the_rest_flows(ray_session, demo_dir, tmp_path):
    for p in (demo_dir / "test").glob("*.tar"):
        shutil.copy(p, tmp_path / p.name)
    good = sorted(tmp_path.glob("*.tar"))
    data = good[0].read_bytes()
    (tmp_path / "zz-truncated.tar").write_bytes(data[: len(data) // 2])
    write_tar(tmp_path / "zz-split.tar", [("a.txt", b"x"), ("b.txt", b"y"), ("a.cls", b"0")])
    raw = {"data": {"splits": {"test": [str(tmp_path / "*.tar")]}},
           "modalities": {"image": {"size": [32, 32]}, "audio": {"sample_rate": 8000}},
           "label": {"classes": ["sun", "moon", "river", "mountain", "forest", "meadow"]}}
    report = validate_splits(spec_from_dict(raw)).splits["test"]
    assert sorted(b["path"].rsplit("/", 1)[1] for b in report.bad_shards) == ["zz-split.tar", "zz-truncated.tar"]
    assert report.rows_kept == json.loads((demo_dir / "manifest.json").read_text())["splits"]["test"]["samples"]
    raw["clean"] = {"on_bad_shard": "fail"}
    with pytest.raises(ShardError, match="zz-truncated.tar"):
        validate_splits(spec_from_dict(raw))


def test_tgz_shard_with_gz_members_and_chinese_text(ray_session, tmp_path):
    texts = ["一只猫坐在垫子上", "Ünïcödé text", "日本語とEnglish混在", "한국어 문장"]
    members = []
    for i, t in enumerate(texts):
        members += [(f"dir/sub/{i:03d}.cls", str(i % 2).encode()),
                    (f"dir/sub/{i:03d}.txt.gz", gzip.compress(t.encode("utf-8")))]
    write_tar(tmp_path / "s.tgz", members, mode="w:gz")
    raw = {"data": {"splits": {"train": [f"file://{tmp_path}/*.tgz"]}},  # fsspec URI + glob
           "modalities": {"image": None, "audio": None,
                          "text": {"tokenizer": "bytes", "max_tokens": 64, "lowercase": False}},
           "label": {"classes": ["a", "b"]}}
    spec = spec_from_dict(raw)
    rows = build_split(spec, "train", ["a", "b"]).kept().take_all()
    assert len(rows) == 4
    by_key = {r["__key__"]: r for r in rows}
    assert set(by_key) == {f"dir/sub/{i:03d}" for i in range(4)}
    assert [decode_bytes(np.asarray(by_key[f"dir/sub/{i:03d}"]["text"])) for i in range(4)] == texts


def test_packed_shards_read_by_ray(ray_session, tmp_path):
    import ray

    from pipeline.data.tools.pack import pack_manifest

    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps({"text": f"文本 {i}", "label": "ab"[i % 2]})
                                                for i in range(10)), encoding="utf-8")
    pack_manifest(tmp_path / "m.jsonl", tmp_path / "out", max_shard_samples=4, progress=False)
    rows = ray.data.read_webdataset(str(tmp_path / "out" / "train"), decoder=None).take_all()
    assert len(rows) == 10
    assert sorted(bytes(r["txt"]).decode() for r in rows) == sorted(f"文本 {i}" for i in range(10))
