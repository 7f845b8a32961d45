"""The real-data example's preparation on a small FSDD fixture (CC BY-SA 4.0, see fixtures/fsdd/README.md)."""

import csv
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pipeline.data.tools.pack import pack_manifest
from pipeline.examples.av_digits import WORDS, PrepareError, prepare
from support import FIXTURES, ROOT

FIXTURE = FIXTURES / "fsdd"


def rows(manifest: Path) -> list[dict]:
    with manifest.open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_prepare_by_take_index(tmp_path):
    manifest = prepare(FIXTURE, tmp_path / "raw")
    table = rows(manifest)
    assert len(table) == 36
    assert {r["split"] for r in table if r["take"] == "0"} == {"test"}
    assert {r["split"] for r in table if r["take"] == "7"} == {"val"}
    assert {r["split"] for r in table if r["take"] == "12"} == {"train"}
    for r in table:
        assert (tmp_path / "raw" / r["audio"]).resolve().is_file()
        others = [d for d in range(10) if d != int(r["label"]) and
                  any(words[d] in r["text"].split() for words in WORDS.values())]
        assert not others  # a caption never names a different digit
    informative = sum(1 for r in table if any(w[int(r["label"])] in r["text"] for w in WORDS.values()))
    assert 5 <= informative <= 25  # ~40% of 36
    # the same input gives the same manifest
    again = prepare(FIXTURE, tmp_path / "raw2")
    assert [r["text"] for r in rows(again)] == [r["text"] for r in table]
    assert (tmp_path / "raw/images/0_jackson_0.png").read_bytes() == (tmp_path / "raw2/images/0_jackson_0.png"
                                                                      ).read_bytes()


def test_images_come_from_disjoint_pools_per_split(tmp_path):
    table = rows(prepare(FIXTURE, tmp_path / "raw"))
    by_split: dict[str, set[bytes]] = {}
    for r in table:
        by_split.setdefault(r["split"], set()).add((tmp_path / "raw" / r["image"]).read_bytes())
    assert not (by_split["train"] & by_split["test"]) and not (by_split["train"] & by_split["val"])


def test_prepare_by_speaker_and_other_speakers(tmp_path):
    folder = tmp_path / "recordings"
    shutil.copytree(FIXTURE, folder)
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(np.arange(4000) / 3)).astype(np.float32), 8000, format="WAV", subtype="PCM_16")
    (folder / "2_alice_3.wav").write_bytes(buf.getvalue())  # a new speaker is just another file
    (folder / "notes.wav").write_bytes(b"ignored: not FSDD-named")
    table = rows(prepare(folder, tmp_path / "raw", split="speaker", test_speaker="alice"))
    assert len(table) == 37
    assert {r["speaker"] for r in table if r["split"] == "test"} == {"alice"}
    # every other voice trains; val is their takes 5-9 (take 7 here), so val never hears the test voice
    assert {(r["speaker"], r["take"]) for r in table if r["split"] == "val"} == {
        ("jackson", "7"), ("nicolas", "7"), ("theo", "7")}
    assert {(r["speaker"], r["take"]) for r in table if r["split"] == "train"} == {
        (s, t) for s in ("jackson", "nicolas", "theo") for t in ("0", "12")}
    # the protocol before: one more unseen speaker is val, training hears the rest
    table = rows(prepare(folder, tmp_path / "raw2", split="speaker", test_speaker="alice", val_speaker="theo"))
    assert {r["speaker"] for r in table if r["split"] == "test"} == {"alice"}
    assert {r["speaker"] for r in table if r["split"] == "val"} == {"theo"}
    assert {r["speaker"] for r in table if r["split"] == "train"} == {"jackson", "nicolas"}
    with pytest.raises(PrepareError, match="not among"):
        prepare(folder, tmp_path / "x", split="speaker", test_speaker="bob")
    with pytest.raises(PrepareError, match="--val-speaker 'bob' is not among"):
        prepare(folder, tmp_path / "x", split="speaker", test_speaker="alice", val_speaker="bob")
    with pytest.raises(PrepareError, match="--val-speaker 'alice' needs --split speaker and another test speaker"):
        prepare(folder, tmp_path / "x", split="speaker", test_speaker="alice", val_speaker="alice")
    with pytest.raises(PrepareError, match="no recordings"):
        prepare(tmp_path / "raw", tmp_path / "y")


@pytest.mark.ray
def test_packed_example_goes_through_the_pipeline_cleanly(ray_session, tmp_path):
    from pipeline.data.streaming.split import validate_splits
    from pipeline.spec import load_spec

    manifest = prepare(FIXTURE, tmp_path / "raw")
    result = pack_manifest(manifest, tmp_path / "shards", progress=False)
    assert result.skipped == [] and result.manifest["classes"] == ["0", "1", "2", "3"]
    job = ROOT / "jobs" / "av-digits.yaml"
    spec = load_spec(job, [f"data.splits.{s}={tmp_path}/shards/{s}/*.tar" for s in ("train", "val", "test")])
    report = validate_splits(spec)
    for name, split in report.splits.items():
        assert split.rows_in == split.rows_kept == 12, (name, split.dropped)
        assert split.coverage() == {"image": 1.0, "text": 1.0, "audio": 1.0}
