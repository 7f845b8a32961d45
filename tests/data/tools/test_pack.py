import hashlib
import io
import json

import numpy as np
import soundfile as sf
import webdataset as wds
from PIL import Image

from pipeline.data.tools.pack import pack_manifest


def make_media(folder):
    (folder / "media").mkdir()
    for i in range(6):
        Image.new("RGB", (12, 12), (i * 40, 0, 0)).save(folder / "media" / f"im{i}.png")
        buf = io.BytesIO()
        sf.write(buf, np.full(800, 0.1 * (i + 1), np.float32), 8000, format="WAV")
        (folder / "media" / f"a{i}.wav").write_bytes(buf.getvalue())
    (folder / "media" / "t0.txt").write_text("来自文件的文本", encoding="utf-8")


def test_pack_csv_round_trips_through_webdataset(tmp_path):
    make_media(tmp_path)
    rows = ["image,text,text_path,audio,label,split,speaker",
            "media/im0.png,hello,,media/a0.wav,cat,train,s1",
            "media/im1.png,,media/t0.txt,media/a1.wav,dog,train,s2",
            "media/im2.png,\"中文, 逗号\",,media/a2.wav,cat,val,",
            "media/missing.png,x,,media/a3.wav,dog,train,",
            "media/im4.png,x,,,,train,",
            "media/im5.png,y,,media/a5.wav,dog,val,s3"]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    result = pack_manifest(tmp_path / "m.csv", tmp_path / "out", max_shard_samples=1, progress=False)
    m = result.manifest
    assert m["classes"] == ["cat", "dog"]
    assert [s["line"] for s in result.skipped] == [5, 6]
    assert "not found: media/missing.png" in result.skipped[0]["reason"]
    assert "label is empty" in result.skipped[1]["reason"]
    assert m["splits"]["train"]["samples"] == 2 and m["splits"]["val"]["samples"] == 2
    assert len(m["splits"]["train"]["shards"]) == 2  # size-bounded: one sample per shard here
    assert m["class_histogram"] == {"cat": 2, "dog": 2}
    for split in m["splits"].values():
        for shard in split["shards"]:
            data = (tmp_path / "out" / shard["path"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == shard["sha256"] and len(data) == shard["bytes"]
    saved = json.loads((tmp_path / "out" / "manifest.json").read_text(encoding="utf-8"))
    assert saved["skipped"] == result.skipped

    urls = sorted(str(p) for p in (tmp_path / "out").rglob("*.tar"))
    samples = {s["__key__"]: s for s in wds.WebDataset(urls, shardshuffle=False)}
    assert set(samples) == {"00000002", "00000003", "00000004", "00000007"}
    s = samples["00000004"]
    assert s["txt"].decode() == "中文, 逗号"
    assert json.loads(samples["00000002"]["json"]) == {"speaker": "s1"}
    assert samples["00000003"]["txt"].decode() == "来自文件的文本"
    assert s["cls"] == b"0" and s["png"][:4] == b"\x89PNG" and s["wav"][:4] == b"RIFF"


def test_pack_jsonl_with_keys_dirs_and_bad_lines(tmp_path):
    make_media(tmp_path)
    lines = [json.dumps({"key": "spk1/utt1", "image": "media/im0.png", "label": "1", "meta": {"start": 0.1}}),
             "{broken json",
             json.dumps({"key": "spk1/utt2", "audio": "media/a1.wav", "label": "0", "split": "test"}),
             json.dumps({"key": "spk1/utt1", "text": "dup key", "label": "1"}),
             json.dumps({"key": "bad.key", "text": "dot", "label": "1"}),
             json.dumps({"text": "ok", "label": "10"})]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = pack_manifest(tmp_path / "m.jsonl", tmp_path / "out", progress=False)
    assert result.manifest["classes"] == ["0", "1", "10"]  # numeric labels sort numerically
    assert [s["line"] for s in result.skipped] == [2, 4, 5]
    assert "duplicate sample key" in result.skipped[1]["reason"]
    assert "dot" in result.skipped[2]["reason"]
    samples = {s["__key__"]: s for s in wds.WebDataset(str(tmp_path / "out/train/train-000000.tar"),
                                                        shardshuffle=False)}
    assert json.loads(samples["spk1/utt1"]["json"]) == {"start": 0.1}


def test_pack_edge_rows(tmp_path):
    make_media(tmp_path)
    (tmp_path / "media" / "t.txt.gz").write_bytes(__import__("gzip").compress("压缩".encode()))
    Image.new("RGB", (9, 9), (0, 90, 0)).save(tmp_path / "media" / "pic.bmp")  # a real one: broken ones are skipped
    lines = [json.dumps({"text": "zero", "label": 0, "key": 0}),
             json.dumps({"text": "one", "label": 1}),
             json.dumps({"text": "escape", "label": 1, "split": "../evil"}),
             json.dumps({"text_path": "media/t.txt.gz", "label": 1}),
             json.dumps({"image": "media/pic.bmp", "label": 0, "split": "val"})]
    (tmp_path / "m.jsonl").write_text("\n".join(lines), encoding="utf-8")
    result = pack_manifest(tmp_path / "m.jsonl", tmp_path / "out", progress=False)
    assert result.manifest["classes"] == ["0", "1"]
    assert [s["line"] for s in result.skipped] == [3] and "split name" in result.skipped[0]["reason"]
    assert not list(tmp_path.glob("evil*")) and not (tmp_path / "out" / ".." / "evil").exists()
    assert result.warnings and ".bmp" in result.warnings[0]
    samples = {s["__key__"]: s for s in wds.WebDataset(str(tmp_path / "out/train/train-000000.tar"),
                                                        shardshuffle=False)}
    assert samples["0"]["txt"] == b"zero" and samples["0"]["cls"] == b"0"
    assert "txt.gz" in samples["00000004"]


def test_pack_csv_extra_cells_and_index_labels_with_classes(tmp_path):
    (tmp_path / "m.csv").write_text("text,label\nhello,1\nworld,cat,extra\nhi,dog\n", encoding="utf-8")
    result = pack_manifest(tmp_path / "m.csv", tmp_path / "out", classes=["cat", "dog"], progress=False)
    assert [s["line"] for s in result.skipped] == [3] and "more cell" in result.skipped[0]["reason"]
    assert result.manifest["class_histogram"] == {"cat": 0, "dog": 2}


def test_pack_keeps_media_inside_the_manifest_folder_and_refuses_escaping_keys(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    make_media(src)
    secret = tmp_path / "secret.txt"
    secret.write_text("password", encoding="utf-8")
    (src / "media" / "link.txt").symlink_to(secret)
    rows = ["key,text,text_path,label",
            f"abs,,{secret},cat", "dots,,../secret.txt,cat", "sym,,media/link.txt,dog",
            "../up,x,,cat", "/root,x,,dog", "ok1,x,media/t0.txt,cat", "ok2,y,,dog"]
    (src / "m.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    result = pack_manifest(src / "m.csv", tmp_path / "out", progress=False)
    reasons = [s["reason"] for s in result.skipped]
    assert sum("outside the manifest's folder" in r for r in reasons) == 3
    assert sum("absolute or contains '..'" in r for r in reasons) == 2
    shards = b"".join(p.read_bytes() for p in (tmp_path / "out").rglob("*.tar"))
    assert b"password" not in shards and b"ok1" in shards
    # with the flag, the same files are read (the owner's choice)
    result = pack_manifest(src / "m.csv", tmp_path / "out2", progress=False, allow_outside=True)
    assert sum("outside" in s["reason"] for s in result.skipped) == 0


def test_pack_skips_media_no_decoder_reads_and_counts_them_by_reason(tmp_path):
    """A corrupt JPEG, a truncated PNG, a truncated WAV and a text file that is not UTF-8 are skipped with their
    reason (issue 18: they were packed silently and dropped later as image_undecodable)."""
    from pipeline.cli import app
    from typer.testing import CliRunner

    from pipeline.data.tools.pack import skip_counts

    make_media(tmp_path)
    media = tmp_path / "media"
    jpeg = io.BytesIO()
    Image.new("RGB", (40, 40), (200, 10, 10)).save(jpeg, "JPEG")
    (media / "corrupt.jpg").write_bytes(jpeg.getvalue()[:20] + b"\x00" * 200)
    (media / "cut.png").write_bytes((media / "im1.png").read_bytes()[:-30])
    (media / "cut.wav").write_bytes((media / "a1.wav").read_bytes()[:200])
    (media / "latin1.txt").write_bytes("café".encode("latin-1"))
    rows = ["image,audio,text_path,text,label",
            "media/im0.png,media/a0.wav,,fine,cat",
            "media/corrupt.jpg,,,x,dog",
            "media/cut.png,,,x,cat",
            ",media/cut.wav,,x,dog",
            ",,media/latin1.txt,,cat",
            "media/im2.png,,,y,dog"]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    result = pack_manifest(tmp_path / "m.csv", tmp_path / "out", progress=False)
    assert [(s["line"], s["kind"]) for s in result.skipped] == [
        (3, "image_undecodable"), (4, "image_undecodable"), (5, "audio_undecodable"), (6, "text_invalid_utf8")]
    assert "media/corrupt.jpg" in result.skipped[0]["reason"] and "cut.png" in result.skipped[1]["reason"]
    assert result.manifest["samples"] == 2
    assert skip_counts(result.skipped) == {"image_undecodable": 2, "audio_undecodable": 1, "text_invalid_utf8": 1}
    out = CliRunner().invoke(app, ["pack", str(tmp_path / "m.csv"), str(tmp_path / "cli")])
    assert out.exit_code == 0, out.output
    assert ("4 row(s) skipped (2 image_undecodable, 1 audio_undecodable, 1 text_invalid_utf8)"
            in " ".join(out.output.split())), out.output


def test_the_first_of_rows_sharing_a_key_wins_whatever_the_shuffle(tmp_path):
    lines = [json.dumps({"key": "k1", "text": "first", "label": "a"}),
             json.dumps({"key": "k2", "text": "other", "label": "b"}),
             json.dumps({"key": "k1", "text": "second", "label": "b"}),
             json.dumps({"key": "k1", "text": "elsewhere", "label": "b", "split": "val"}),
             json.dumps({"key": "k1", "text": "third", "label": "a"})]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for seed in (None, 0, 1, 2, 3, 4, 5):
        out = tmp_path / f"out{seed}"
        result = pack_manifest(tmp_path / "m.jsonl", out, progress=False, shuffle_seed=seed)
        assert [(s["line"], s["kind"]) for s in result.skipped] == [(3, "duplicate_key"), (5, "duplicate_key")]
        assert "first on line 1" in result.skipped[0]["reason"]
        samples = {s["__key__"]: s for s in wds.WebDataset(str(out / "train/train-000000.tar"), shardshuffle=False)}
        assert samples["k1"]["txt"] == b"first", seed
        assert result.manifest["splits"]["val"]["samples"] == 1  # the same key in another split is another sample
