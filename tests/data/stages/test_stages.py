"""clean -> align on hand-made raw batches, without Ray: one sample per drop reason, shapes, masks, Unicode."""

import gzip
import io
import json

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from support import raw_batch
from pipeline.data.stages.align import keep_rows
from pipeline.data.stages.clean import DROP_REASONS
from pipeline.data.stages.config import StageConfig
from pipeline.data.stages.dedupe import DuplicateIndex
from pipeline.data.tools.demo import _png_with_header_size
from pipeline.data.stages.path import prepare_batch
from pipeline.data.stages.tokenize import decode_bytes, encode_batch
from pipeline.spec import TextSpec, spec_from_dict

CLASSES = ["cat", "dog", "猫"]


def cfg(**overrides) -> StageConfig:
    raw = {"modalities": {"image": {"size": [16, 24]}, "text": {"max_tokens": 12},
                          "audio": {"sample_rate": 8000, "seconds": 0.5}}}
    for dotted, value in overrides.items():
        node = raw
        *parents, last = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return StageConfig.from_spec(spec_from_dict(raw), CLASSES)


def png(h=20, w=30, colour=(200, 10, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), colour).save(buf, format="PNG")
    return buf.getvalue()


def wav(seconds=0.5, rate=8000, channels=1, amp=0.5) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    x = (amp * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    x = np.stack([x] * channels, axis=1)
    buf = io.BytesIO()
    sf.write(buf, x, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def good(**extra) -> dict:
    return {"png": png(), "txt": "a small cat".encode(), "wav": wav(), "cls": b"0", **extra}


def run(samples, config=None, dup=None):
    return prepare_batch(raw_batch(samples), config or cfg(), dup)


BAD_CASES = {
    "meta_invalid": (good(json=b"[1, 2]"), None),
    "label_missing": ({k: v for k, v in good().items() if k != "cls"}, None),
    "label_unknown": (good(cls=b"7"), None),
    "image_missing": ({"txt": b"x", "cls": b"0"}, {"modalities__image__required": True}),
    "text_missing": ({"png": png(), "cls": b"0"}, {"modalities__text__required": True}),
    "audio_missing": ({"png": png(), "cls": b"0"}, {"modalities__audio__required": True}),
    "no_modality": ({"cls": b"1", "json": b"{}"}, None),
    "image_undecodable": (good(png=png()[:60]), None),
    "image_too_small": (good(png=png(4, 30)), None),
    "image_too_large": (good(png=_png_with_header_size(20_000, 20_000)), None),
    "text_undecodable": ({"png": png(), "txt.gz": gzip.compress(b"cut short")[:-4], "cls": b"0"}, None),
    "text_invalid_utf8": (good(txt=b"\xe4\xb8"), None),
    "text_empty": (good(txt=b" \n\t"), None),
    "text_too_long": (good(txt=b"x" * 50), {"clean__max_text_chars": 49}),
    "audio_undecodable": (good(wav=wav()[:1000]), None),
    "audio_too_short": (good(wav=wav(0.01)), None),
    "audio_silent": (good(wav=wav(amp=0.0)), None),
    "segment_invalid": (good(json=json.dumps({"start": 0.4, "end": 0.1}).encode()), None),
    # limits for untrusted data: a .gz member is refused while inflating, before it exceeds the limit
    "member_too_large": ({"png.gz": gzip.compress(png() + b"\0" * 5000), "cls": b"0"},
                         {"clean__max_member_bytes": 2000}),
    "audio_too_long": (good(wav=wav(2.0)), {"clean__max_audio_seconds": 1.0}),
    "audio_too_many_channels": (good(wav=wav(channels=3)), {"clean__max_audio_channels": 2}),
}


def test_every_reason_has_a_case():
    # duplicate_of_eval is decided across splits (streaming), not by clean_batch
    assert set(BAD_CASES) | {"duplicate", "sample_error", "duplicate_of_eval"} == set(DROP_REASONS)


def test_limits_refuse_before_holding_the_whole_member():
    """A .txt.gz inflating past the text limit is text_too_long without inflating it all; a sample the tar reader
    marked (a member over max_member_bytes) is dropped with the reader's reason; decoded audio stops at the cap."""
    from pipeline.data.stages.contract import DROP_COLUMN
    from pipeline.data.stages.decode import Rejected, decode_audio

    bomb = gzip.compress(b"x" * (50 << 20))  # 50 MB of text in ~50 KB
    out = run([{**good(), "txt": None, "txt.gz": bomb}], cfg(clean__max_text_chars=100))
    assert out["drop_reason"][0] == "text_too_long" and "403 bytes" in out["drop_detail"][0]
    batch = raw_batch([good(), good(txt=b"another")])
    batch[DROP_COLUMN] = np.array([None, "member_too_large: 'k1.png' (99999999 bytes)"], dtype=object)
    out = prepare_batch(batch, cfg())
    assert list(out["drop_reason"]) == ["", "member_too_large"] and "99999999" in out["drop_detail"][1]
    with pytest.raises(Rejected, match="audio_too_long"):
        decode_audio(wav(2.0, channels=2), 0.0, 0.0, max_seconds=100.0, max_bytes=4 * 2 * 8000)


def test_clean_in_chunks_keeps_every_row_in_order():
    """clean_bounded cleans and aligns a batch in chunks under max_decoded_batch_bytes: same rows, same result."""
    from pipeline.data.stages.align import align_batch
    from pipeline.data.stages.clean import clean_bounded, clean_chunks

    samples = [good(txt=f"text {i}".encode()) for i in range(6)] + [good(png=png()[:60])]
    small = cfg(clean__max_decoded_batch_bytes=40_000)  # a row decodes to ~18 KB (image 1.8 KB, audio 16 KB)
    chunks = list(clean_chunks(raw_batch(samples), small))
    assert len(chunks) > 2 and sum(len(c["label"]) for c in chunks) == 7
    whole = prepare_batch(raw_batch(samples), cfg())
    bounded = clean_bounded(raw_batch(samples), small, then=lambda b: align_batch(b, small))
    assert list(bounded["__key__"]) == list(whole["__key__"])
    assert list(bounded["drop_reason"]) == list(whole["drop_reason"])
    assert np.array_equal(bounded["image"], whole["image"])


def test_an_unforeseen_error_drops_the_sample_not_the_batch(monkeypatch):
    import pipeline.data.stages.clean as clean

    def broken(*args, **kwargs):
        raise RuntimeError("decoder bug")

    monkeypatch.setattr(clean, "decode_image", broken)
    out = run([good(), good(png=png(30, 20))])
    assert list(out["drop_reason"]) == ["sample_error", "sample_error"]
    assert out["drop_detail"][0] == "RuntimeError: decoder bug"


def test_numeric_class_names_and_label_formats():
    names = ("1", "2", "10")
    from pipeline.data.stages.clean import parse_label
    from pipeline.data.stages.decode import Rejected

    assert parse_label(b"2", names) == 2  # auto: an integer is an index (what `mmpipe pack` writes)
    assert parse_label(b"2", names, "name") == 1
    assert parse_label("\ufeff 10 ", names, "name") == 2
    for bad, fmt in [(b"\xc2\xb2", "auto"), (b"--1", "auto"), (b"3", "auto"), (b"x", "index"), (b"3", "name")]:
        with pytest.raises(Rejected):
            parse_label(bad, names, fmt)


@pytest.mark.parametrize("reason", sorted(BAD_CASES))
def test_each_bad_sample_is_dropped_with_its_reason(reason):
    sample, overrides = BAD_CASES[reason]
    out = run([good(), sample], cfg(**(overrides or {})))
    assert list(out["drop_reason"]) == ["", reason], out["drop_detail"]
    assert out["label"][0] == 0
    # the dropped row carries no data and no presence
    for role in ("image", "text", "audio"):
        assert not out[f"present_{role}"][1]
        assert not out[role][1].any()


def test_exact_duplicates_across_batches_keep_one_copy_idempotently():
    index = DuplicateIndex()
    a = run([good(__key__="a"), good(__key__="b", cls=b"1")], dup=index)
    b = run([good(__key__="c")], dup=index)
    assert list(a["drop_reason"]) == ["", ""]  # same media, different label: not a duplicate
    assert list(b["drop_reason"]) == ["duplicate"]
    assert "shard-000.tar::a" in b["drop_detail"][0]
    again = run([good(__key__="a")], dup=index)  # re-executing the same row gives the same answer
    assert list(again["drop_reason"]) == [""]


def test_aligned_shapes_dtypes_and_presence():
    samples = [good(), {"png": png(50, 10), "cls": b"dog"}, good(wav=wav(1.2, rate=22050, channels=2))]
    out = run(samples)
    assert out["image"].shape == (3, 16, 24, 3) and out["image"].dtype == np.uint8
    assert out["text"].shape == (3, 12) and out["text"].dtype == np.int64
    assert out["audio"].shape == (3, 4000) and out["audio"].dtype == np.float32
    assert out["label"].tolist() == [0, 1, 0]
    assert out["present_text"].tolist() == [True, False, True]
    assert out["present_audio"].tolist() == [True, False, True]
    assert not out["text"][1].any() and not out["audio"][1].any()
    assert np.abs(out["audio"][2]).max() > 0.3  # resampled stereo clip keeps its signal
    kept = keep_rows(out)
    assert "drop_reason" not in kept and len(kept["label"]) == 3


def test_gz_members_and_label_by_name_and_json_source():
    text = "压缩的文本".encode()
    s = {"png": png(), "txt.gz": gzip.compress(text), "json": json.dumps({"label": "猫"}).encode()}
    out = run([s], cfg(label__source="json"))
    assert out["drop_reason"][0] == "" and out["label"][0] == 2
    broken = {"png": png(), "txt.gz": gzip.compress(text)[:-6], "cls": b"0"}
    out = run([broken])
    assert out["drop_reason"][0] == "text_undecodable" and "gzip" in out["drop_detail"][0]


def test_chinese_and_other_scripts_survive_tokenization():
    texts = ["一只小猫在睡觉", "Кошка спит", "القطة نائمة", "고양이가 잔다", "naïve café 😺"]
    ids = encode_batch(texts, TextSpec(max_tokens=64, tokenizer="bytes"))
    assert [decode_bytes(row) for row in ids] == texts
    hashed = encode_batch(texts, TextSpec(max_tokens=64))
    for text, row in zip(texts, hashed):
        assert (row[: len(text.replace(" ", ""))] >= 2).sum() > 0
    # every Chinese character is its own token: distinct characters, distinct ids, none "unknown"
    chinese = hashed[0][:7]
    assert len(set(chinese.tolist())) == 7 and (chinese >= 2).all()


def test_segment_crop_takes_the_json_span():
    rate = 8000
    x = np.zeros(rate * 2, dtype=np.float32)
    x[rate:] = 0.8  # second half loud
    buf = io.BytesIO()
    sf.write(buf, x, rate, format="WAV", subtype="FLOAT")
    meta = json.dumps({"segments": [{"start": 1.0, "end": 1.5}]}).encode()
    out = run([{"png": png(), "wav": buf.getvalue(), "json": meta, "cls": b"0"}])
    assert out["drop_reason"][0] == ""
    assert np.allclose(out["audio"][0], 0.8, atol=1e-3)
    out = run([{"png": png(), "wav": buf.getvalue(), "cls": b"0"}], cfg(align__use_segments=False))
    assert np.allclose(out["audio"][0], 0.0)


@pytest.mark.parametrize("mode", ["crop", "stretch", "pad"])
def test_image_resize_modes(mode):
    out = run([good(png=png(40, 10, (0, 255, 0)))], cfg(align__image_resize=mode))
    img = out["image"][0]
    assert img.shape == (16, 24, 3)
    if mode == "pad":
        assert img[:, 0].sum() == 0 and img[8, 12, 1] == 255  # letterbox bars, content in the middle
    else:
        assert (img[..., 1] == 255).all()


def test_odd_but_valid_media():
    # 16-bit grey PNG keeps its contrast (PIL alone clips it to white)
    grey = Image.fromarray(np.tile(np.linspace(0, 65535, 30).astype(np.uint16), (20, 1)))
    buf = io.BytesIO()
    grey.save(buf, format="PNG")
    # a start without an end crops to the end of the clip; a very thin image and a 1 Hz clip stay cheap
    thin = io.BytesIO()
    Image.new("RGB", (200_000, 8), (9, 9, 9)).save(thin, format="PNG")
    slow = io.BytesIO()
    sf.write(slow, np.full(600, 0.5, np.float32), 10, format="WAV", subtype="FLOAT")
    samples = [good(png=buf.getvalue()), good(json=json.dumps({"start": 0.1}).encode()),
               good(png=thin.getvalue()), good(wav=slow.getvalue())]
    out = run(samples)
    assert list(out["drop_reason"]) == ["", "", "", ""], out["drop_detail"]
    row = out["image"][0][:, :, 0]
    assert row.min() < 40 and row.max() > 215
    assert out["image"][2].max() == 9 and abs(np.median(out["audio"][3]) - 0.5) < 0.01


def test_refused_image_formats_and_invisible_text():
    buf = io.BytesIO()
    Image.new("RGB", (20, 20)).save(buf, format="PPM")
    out = run([good(png=buf.getvalue()), good(txt="\u200b\x00 \ufeff".encode())])
    assert list(out["drop_reason"]) == ["image_undecodable", "text_empty"]


def test_the_sample_path_is_one_ordered_list_and_tokenizes_text_once(monkeypatch):
    from pipeline.data.stages import tokenize
    from pipeline.data.stages.path import run_path, sample_path

    spec = spec_from_dict({"modalities": {"image": {"size": [16, 24]}, "text": {"max_tokens": 12},
                                          "audio": {"sample_rate": 8000, "seconds": 0.5}},
                           "augment": {"seed": 1, "text": [{"name": "RandomCharAug", "p": 1.0,
                                                            "params": {"action": "swap"}}]},
                           "rebalance": {"strategy": "oversample"}})
    c = StageConfig.from_spec(spec, CLASSES)
    factors = np.array([2.0, 1.0, 1.0])

    def names(purpose, **kw):
        return [s.name for s in sample_path(spec, c, purpose, **kw)]
    assert names("train", factors=factors, columns=["text"]) == \
        ["clean+align", "keep", "rebalance", "augment", "tokenize", "select"]
    assert names("eval") == ["clean+align", "keep", "tokenize"]
    assert names("report") == ["clean+align", "tokenize"]
    with pytest.raises(ValueError, match="factors"):
        sample_path(spec, c, "train")

    calls = []
    real = tokenize.encode_batch
    monkeypatch.setattr(tokenize, "encode_batch", lambda *a, **k: calls.append(1) or real(*a, **k))
    batch = raw_batch([good(__key__="a"), good(__key__="b", txt="一只猫坐在垫子上".encode(), cls=b"1"),
                       good(__key__="c", cls=b"7")])
    out = run_path(batch, sample_path(spec, c, "train", factors=factors), epoch=3)
    assert len(calls) == 1  # one tokenization per batch, after augmentation
    assert list(out["__key__"]) == ["a", "a", "b"]  # c dropped (unknown label), class cat oversampled twice
    assert "text" in out and list(out)[list(out).index("text_raw") + 1] == "text"  # columns in align's order
    assert set(out["text_raw"]) != {"a small cat", "一只猫坐在垫子上"}  # augmented
    t = c.modalities.text
    assert np.array_equal(out["text"], real(list(out["text_raw"]), t))
    # without augmentation the ids are those of the cleaned text, as the report path makes them
    report = run_path(raw_batch([good(__key__="a")]), sample_path(spec, c, "report"))
    assert np.array_equal(report["text"], real(["a small cat"], t))


def test_the_path_splits_for_the_cache_where_every_epoch_gives_the_same_rows():
    """data.cache keeps the output of the first part and runs the rest per epoch: together they are the path."""
    from pipeline.data.stages.path import run_path, sample_path, split_for_cache

    spec = spec_from_dict({"augment": {"image": [{"name": "HorizontalFlip", "p": 0.5}],
                                       "text": [{"name": "RandomCharAug", "p": 0.5, "params": {"action": "swap"}}]},
                           "rebalance": {"strategy": "oversample"}, "train": {"label_fraction": 0.5}})
    c = StageConfig.from_spec(spec, CLASSES)
    path = sample_path(spec, c, "train", DuplicateIndex(), factors=np.array([2.0, 1.0, 1.0]), columns=["text"])
    once, every_epoch = split_for_cache(path)
    assert [s.name for s in once] == ["clean+align", "keep"]
    assert [s.name for s in every_epoch] == ["rebalance", "label fraction", "augment", "tokenize", "select"]
    assert not any(s.takes_epoch for s in once)
    batch = raw_batch([good(__key__="a"), good(__key__="b", txt="一只猫坐在垫子上".encode(), cls=b"1"),
                       good(__key__="c", cls=b"7")])
    kept = run_path(batch, once)
    for epoch in (0, 1):
        whole, parts = run_path(batch, path, epoch), run_path(kept, every_epoch, epoch)
        assert whole.keys() == parts.keys() and all(np.array_equal(whole[k], parts[k]) for k in whole)
    with pytest.raises(ValueError, match="train or eval"):
        split_for_cache(sample_path(spec, c, "report"))
