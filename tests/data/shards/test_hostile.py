"""Hostile shards (tests/support/hostile_corpus.py) cannot crash a read, and nothing is lost without a word: every hostile
sample is dropped with its reason, every hostile shard reported with its reason, every good sample kept (a
truncated shard's complete samples included)."""

from __future__ import annotations

import gzip
import io
import tarfile
from collections import Counter
from pathlib import Path

import pytest

from support.hostile_corpus import CLASSES, Expected, write_good_split, write_hostile
from pipeline.data.shards.check import check_shard
from pipeline.data.shards.tar import TarLimits, ShardFault, iter_members, raw_batches
from pipeline.data.stages.align import align_batch
from pipeline.data.stages.clean import clean_bounded
from pipeline.data.stages.config import StageConfig
from pipeline.data.stages.gunzip import GzipError, gunzip_bytes
from pipeline.spec import load_spec


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Expected]:
    root = tmp_path_factory.mktemp("hostile")
    return root, write_hostile(root)


def read_all(root: Path) -> tuple[dict[str, str], dict[str, tuple[str, int]]]:
    """The read path without Ray: check every shard, read the usable ones batch by batch (clean -> align in
    chunks). Returns (key -> drop reason or "", shard name -> (fault reason, samples))."""
    spec = load_spec(root / "spec.yaml")
    cfg = StageConfig.from_spec(spec, CLASSES)
    limits = TarLimits.from_clean(spec.clean)
    rows, shards = {}, {}
    for path in sorted((root / "train").iterdir()):
        check = check_shard(str(path), limits)
        shards[path.name] = (check.reason or "", check.samples)
        if not check.usable:
            continue
        with open(path, "rb") as f:
            for raw in raw_batches(f, str(path), 16, limits=limits):
                out = clean_bounded(raw, cfg, then=lambda b: align_batch(b, cfg))
                rows.update(zip(out["__key__"], out["drop_reason"]))
    return rows, shards


def test_every_hostile_item_is_reported_and_every_good_sample_kept(corpus):
    root, exp = corpus
    rows, shards = read_all(root)
    assert {k for k, r in rows.items() if not r} == exp.kept
    assert {k: r for k, r in rows.items() if r} == exp.dropped
    assert {name: reason for name, (reason, _) in shards.items() if reason} == exp.bad_shards
    for name, count in exp.salvaged.items():
        assert shards[name][1] == count  # the check counts what the read then keeps


def test_inspect_scans_the_corpus_without_crashing(corpus):
    from pipeline.data.tools.inspect import scan

    root, exp = corpus
    info = scan(str(root / "train"))["splits"]["train"]
    reported = {Path(s["path"]).name: s.get("reason") for s in info["shards"] if s.get("reason")}
    assert reported == exp.bad_shards
    assert info["samples"] == exp.samples  # hostile samples count as samples; the truncated tails do not


def test_gzip_is_linear_checks_crc_and_refuses_past_its_limit():
    storm = gzip.compress(b"a" * 16) * 20_000  # 20,000 gzip members: quadratic before (one copy per member)
    assert gunzip_bytes(storm, 1 << 20) == b"a" * 16 * 20_000
    with pytest.raises(ValueError, match="more than 1000 bytes"):
        gunzip_bytes(gzip.compress(bytes(10 << 20)), 1000)
    bad = bytearray(gzip.compress(b"hello world"))
    bad[-6] ^= 1
    with pytest.raises(GzipError, match="incorrect data check"):
        gunzip_bytes(bytes(bad), 100)
    with pytest.raises(GzipError) as cut:
        gunzip_bytes(gzip.compress(b"hello world" * 100)[:-10], 10_000)
    assert cut.value.truncated


def _tar(members: list[tuple[tarfile.TarInfo, bytes]], fmt=tarfile.PAX_FORMAT) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


def test_member_iterator_limits_and_names():
    long = "d/" + "n" * 300 + ".txt"  # needs a pax (or GNU long-name) header
    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT):
        name = long if fmt != tarfile.USTAR_FORMAT else "p" * 90 + "/" + "q" * 90 + ".txt"  # ustar prefix/name
        got = list(iter_members(_tar([(tarfile.TarInfo(name), b"x"), (tarfile.TarInfo("k.猫.cls"), b"1")], fmt)))
        assert [(m.key, m.ext, m.data) for m in got] == [(name[:-4], "txt", b"x"), ("k", "猫.cls", b"1")]
    limits = TarLimits(member_bytes=10, header_bytes=600, batch_bytes=25)
    got = list(iter_members(_tar([(tarfile.TarInfo("a.bin"), b"y" * 11), (tarfile.TarInfo("a.txt"), b"ok")]), limits))
    assert [(m.too_large, m.data) for m in got] == [(True, None), (False, b"ok")]
    with pytest.raises(ShardFault, match="header_too_large"):
        list(iter_members(_tar([(tarfile.TarInfo("n" * 700 + ".txt"), b"x")]), limits))
    # a batch ends early once it holds batch_bytes; nothing is dropped
    buf = _tar([(tarfile.TarInfo(f"k{i}.txt"), b"z" * 10) for i in range(5)])
    assert [len(b["__key__"]) for b in raw_batches(buf, "u", 100, limits=limits)] == [3, 2]


@pytest.mark.ray
def test_validate_reports_every_hostile_item_and_keeps_every_good_sample(corpus, ray_session):
    """Through Ray: the data report of `mmpipe validate` (needs build_split to read truncated shards: c.usable)."""
    from pipeline.data.streaming.split import validate_splits

    root, exp = corpus
    report = validate_splits(load_spec(root / "spec.yaml")).splits["train"]
    as_dict = report.to_dict()
    bad = {Path(b["path"]).name: b["error"] for b in as_dict["bad_shards"]}
    assert set(bad) == set(exp.bad_shards) and all(exp.bad_shards[n] in e or "truncated" in e for n, e in bad.items())
    assert as_dict["rows_kept"] == len(exp.kept)
    assert {r: n for r, n in as_dict["dropped"].items() if n} == dict(Counter(exp.dropped.values()))


@pytest.mark.ray
def test_one_epoch_trains_on_exactly_the_good_samples_and_predict_covers_every_readable_one(corpus, ray_session,
                                                                                             tmp_path):
    """Training (1 worker, 1 epoch, a tiny model) and then ``predict`` over the corpus: neither crashes, the epoch
    sees every good sample and no other, and prediction writes a row per readable sample with its drop reason."""
    import json

    import pyarrow.parquet as pq

    from pipeline.predict import predict
    from pipeline.registry import Registry
    from pipeline.spec import dump_spec
    from pipeline.train.trainer import run_training

    root, exp = corpus
    write_good_split(root, "val", 8)
    batch = 8
    assert len(exp.kept) % batch == 0  # drop_last then leaves no good sample out of the epoch
    spec = load_spec(root / "spec.yaml", [f"data.splits.val={root / 'val' / '*'}", f"train.batch_size={batch}",
                                          "model.hidden=16", "scaling.num_workers=1"])
    result = run_training(spec, tmp_path / "run")
    assert result.metrics["train.rows"] == len(exp.kept)
    report = json.loads((tmp_path / "run" / "data_report.json").read_text(encoding="utf-8"))["splits"]["train"]
    assert report["rows_kept"] == len(exp.kept) and report["balanced"]
    # one hostile sample per reason: the examples name every dropped key, so the kept ones are exactly the good
    assert {e["key"]: r for r, examples in report["examples"].items() for e in examples} == exp.dropped

    registry = Registry(str(tmp_path / "registry"))
    version = registry.register(result.best_checkpoint.read_bytes(), dump_spec(spec), {}, "hostile-test")
    out = tmp_path / "predictions.parquet"
    predicted = predict(f"{registry.uri}:{version}", [str(root / "train" / "*")], str(out))
    rows = pq.read_table(out).to_pylist()
    status = {r["key"]: r["status"] for r in rows}
    assert len(rows) == len(status) == exp.samples  # one row per readable sample (truncated tails are not)
    assert status == {**{k: "ok" for k in exp.kept}, **exp.dropped}
    assert all(r["pred_class"] in CLASSES for r in rows if r["status"] == "ok")
    assert predicted.predicted == len(exp.kept) and predicted.rows == exp.samples
