"""The whole training-data path on realistic data: mmpipe on Ray Data against the loader people write by hand.

Data (realistic_shards.py): photo-like JPEGs of SOURCE size, 1 s 16 kHz WAVs and one sentence per sample;
everything ends as the model's inputs at the consumer (this process): image uint8 224x224x3, audio float32 16,000,
text int64 ids, label. Both sides apply the same augmentations with the same probabilities (flip + random resized
crop + colour jitter; noise + gain + shift; character swaps):

    A  mmpipe      DataPlan(spec).train_dataset(columns=inputs).iter_torch_batches(BATCH)    Ray with CPUS CPUs
    A' cached      the same with data.cache=true: the first pass reads, decodes and aligns once (kept in Ray's
                   object store); warm passes run only rebalance + augment + tokenize over the kept rows
    B  by hand     webdataset -> per sample: OpenCV full decode, albumentations (random resized crop straight from
                   the full-size image), soundfile + crop/pad + audiomentations, nlpaug + tokenize -> batched,
                   DataLoader(num_workers=CPUS, persistent_workers=True)

The first pass of each is timed on its own: B's includes forking its workers and their imports; A's includes
``warm_data_workers`` (started right after ``ray.init``, as ``mmpipe train`` does, so its imports are counted;
``--cold`` leaves it out) but not ``ray.init`` itself, which is printed apart; the first pass of A' includes its
cache pass. Then warm passes interleave A A' B A A' B ...; medians and the ratios A / B and A' / B are printed.
mmpipe does more per sample than B (validation and limits, duplicate detection), which is part
of what it sells.

    python benchmarks/feeding_compare.py [--source 256x256] [--source 683x512] [--samples 2048] [--repeats 3]
    python benchmarks/feeding_compare.py --quick
"""

from __future__ import annotations

import argparse
import io
import os
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_common import machine_line, median, quiet_line, start_ray, timed  # noqa: E402
from realistic_shards import (AUDIO_AUG, IMAGE_AUG, MAX_TOKENS, SAMPLE_RATE, SECONDS, TARGET,  # noqa: E402
                              TEXT_AUG, realistic_shards)


class HandWritten(torch.utils.data.IterableDataset):
    """What a user writes without mmpipe: webdataset, then one function per sample, then batches of tensors."""

    def __init__(self, shards: list[str], batch_size: int):
        self.shards, self.batch_size, self.epoch = shards, batch_size, 0

    def __iter__(self):
        import albumentations as A
        import audiomentations as AM
        import cv2
        import nlpaug.augmenter.char as nac
        import soundfile as sf
        import webdataset as wds

        from pipeline.data.stages.tokenize import encode_batch
        from pipeline.spec import TextSpec

        cv2.setNumThreads(1)
        image_aug = A.Compose([getattr(A, n)(**({"size": (TARGET, TARGET)} if n == "RandomResizedCrop" else {}),
                                             **kw, p=p) for n, p, kw in IMAGE_AUG])
        audio_aug = AM.Compose([getattr(AM, n)(**kw, p=p) for n, p, kw in AUDIO_AUG])
        text_augs = [(getattr(nac, n)(**kw), p) for n, p, kw in TEXT_AUG]
        text_spec = TextSpec(max_tokens=MAX_TOKENS)
        frames = int(SAMPLE_RATE * SECONDS)
        rng = np.random.default_rng(self.epoch)

        def sample(s: dict) -> dict:
            image = cv2.imdecode(np.frombuffer(s["jpg"], np.uint8), cv2.IMREAD_COLOR_RGB)
            wave, _ = sf.read(io.BytesIO(s["wav"]), dtype="float32")
            wave = np.pad(wave[:frames], (0, max(0, frames - len(wave))))
            text = s["txt"].decode("utf-8")
            for aug, p in text_augs:
                if rng.random() < p:
                    text = aug.augment(text)[0]
            return {"image": image_aug(image=image)["image"],
                    "audio": audio_aug(samples=wave, sample_rate=SAMPLE_RATE).astype(np.float32),
                    "text": text, "label": int(s["cls"])}

        def collate(rows: list[dict]) -> dict:
            return {"image": torch.from_numpy(np.stack([r["image"] for r in rows])),
                    "audio": torch.from_numpy(np.stack([r["audio"] for r in rows])),
                    "text": torch.from_numpy(encode_batch([r["text"] for r in rows], text_spec)),
                    "label": torch.tensor([r["label"] for r in rows])}

        order = list(self.shards)
        rng.shuffle(order)
        self.epoch += 1
        yield from wds.WebDataset(order, shardshuffle=False, empty_check=False).map(sample).batched(
            self.batch_size, collation_fn=collate, partial=True)


def compare(width: int, height: int, args) -> dict:
    from pipeline.data.shards.check import expand_shards
    from pipeline.data.streaming.plan import DataPlan
    from pipeline.data.streaming.warmup import warm_data_workers
    from pipeline.model.classifier import input_columns
    from pipeline.spec import load_spec

    data = realistic_shards(width, height, args.samples)
    spec = load_spec(data / "spec.yaml")
    shards = expand_shards(spec.data.splits["train"])
    # The DataLoader's workers fork before Ray starts in this process (as a user's script would have no Ray).
    loader = torch.utils.data.DataLoader(HandWritten(shards, args.batch_size), batch_size=None,
                                         num_workers=args.cpus, persistent_workers=True, prefetch_factor=2)
    first = {"by hand": timed(loader)}
    start = time.perf_counter()
    start_ray(args.cpus)
    ray_init = time.perf_counter() - start
    start = time.perf_counter()
    if not args.cold:  # what `mmpipe train` does while Ray Train starts; here nothing overlaps it
        warm_data_workers(spec, count=args.cpus, for_ray_train=False)
    dataset = DataPlan(spec).train_dataset(columns=input_columns(spec))

    def mmpipe_pass(ds=dataset):
        return timed(ds.iter_torch_batches(batch_size=args.batch_size, drop_last=False))

    rows, _ = mmpipe_pass()
    first["mmpipe"] = rows, time.perf_counter() - start  # from the warm-up's start: its imports are counted
    # data.cache: the first pass is the cache pass (read, decode, clean, align: in train_dataset) + one epoch
    start = time.perf_counter()
    cached = DataPlan(spec.model_copy(update={"data": spec.data.model_copy(update={"cache": True})})) \
        .train_dataset(columns=input_columns(spec))
    rows, _ = mmpipe_pass(cached)
    first["cached"] = rows, time.perf_counter() - start
    runs = {"mmpipe": mmpipe_pass, "cached": lambda: mmpipe_pass(cached), "by hand": lambda: timed(loader)}
    rates: dict[str, list[float]] = {n: [] for n in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            rows, seconds = run()
            rates[name].append(rows / seconds)
    print(f"\nsource {width}x{height} JPEG ({np.mean([os.path.getsize(s) for s in shards]) / 2**20:.1f} MiB "
          f"shards), {args.samples} samples, batch {args.batch_size}, {args.cpus} CPUs; ray.init {ray_init:.1f} s")
    print(f"{'loader':8} {'first pass /s':>14} {'warm median /s':>15}  warm passes (samples/s)")
    for name in runs:
        rows, seconds = first[name]
        print(f"{name:8} {rows / seconds:>14.0f} {median(rates[name]):>15.0f}  "
              + " ".join(f"{r:.0f}" for r in rates[name]))
    warm = {n: median(rates[n]) for n in runs}
    result = {"warm ratio": warm["mmpipe"] / warm["by hand"],
              "mmpipe first/warm": (first["mmpipe"][0] / first["mmpipe"][1]) / warm["mmpipe"],
              "cached warm ratio": warm["cached"] / warm["by hand"],
              "cached first/warm": (first["cached"][0] / first["cached"][1]) / warm["cached"]}
    print(f"ratio mmpipe/by hand (warm): {result['warm ratio']:.2f}   "
          f"mmpipe first pass / warm: {result['mmpipe first/warm']:.2f}")
    print(f"ratio cached/by hand (warm): {result['cached warm ratio']:.2f}   "
          f"cached first pass / warm: {result['cached first/warm']:.2f}   (data.cache=true)")
    if args.profile:
        print(dataset.stats())
    import ray

    ray.shutdown()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", action="append", help="source JPEG size WxH (repeatable; default 256x256 and 683x512)")
    ap.add_argument("--samples", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3, help="warm passes of each loader")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--quick", action="store_true", help="smoke run: 256 samples of 256x256, 1 warm pass each")
    ap.add_argument("--cold", action="store_true", help="no warm-up of Ray's data workers before mmpipe's first pass")
    ap.add_argument("--profile", action="store_true", help="print Ray Data's stats of the last mmpipe pass")
    args = ap.parse_args()
    if args.quick:
        args.source, args.samples, args.repeats = ["256x256"], 256, 1
    sources = args.source or ["256x256", "683x512"]
    print(quiet_line(), flush=True)
    print(machine_line(args.cpus))
    for source in sources:
        width, height = (int(v) for v in source.lower().split("x"))
        compare(width, height, args)


if __name__ == "__main__":
    main()
