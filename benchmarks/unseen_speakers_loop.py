"""Quick in-process comparison for docs/av-digits.md, "Unseen speakers": the product's audio-only model
(MultimodalClassifier from jobs/av-digits.yaml with --set overrides) trained in a plain PyTorch loop, one process,
no Ray, on FSDD with each held-out speaker in turn. For choosing settings fast; the measurement of record is
benchmarks/unseen_speakers.py (through the product's commands).

    python benchmarks/unseen_speakers_loop.py ../shared/data/fsdd/recordings --epochs 30 \\
        --set model.vtlp.warp=0.15 --speakers yweweler jackson

Splits as ``mmpipe prepare-digits --split speaker`` makes them: the held-out speaker is test, the other speakers'
takes 5-9 val and the rest train (``--val-speaker``: the last other speaker is val instead). The spec's
augment.audio (audiomentations, the product's own builder) is drawn ``--variants`` times per clip once and cached;
each epoch a clip reads one of its variants at random. Prints test macro-F1 at the best epoch by val macro-F1 and at
the last epoch, and the commonest confusions.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from sklearn.metrics import f1_score

from pipeline.data.stages.align import fit_audio
from pipeline.data.stages.augment import audio as audio_augment
from pipeline.data.stages.seeds import globals_restored
from pipeline.examples.av_digits import parse_recordings, split_of
from pipeline.model.classifier import MultimodalClassifier
from pipeline.spec import load_spec
from pipeline.train.optim import lr_schedule, make_optimizer

JOB = Path(__file__).resolve().parent.parent / "jobs" / "av-digits.yaml"


def load_clips(recordings: Path, rate: int, n: int) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    rows = parse_recordings(recordings)
    waves = []
    for path, *_ in rows:
        wave, sr = sf.read(path, dtype="float32")
        waves.append(fit_audio(wave, sr, rate, n, "start", None))
    return (np.stack(waves), np.array([r[1] for r in rows]), [r[2] for r in rows], np.array([r[3] for r in rows]))


def variants(waves: np.ndarray, spec, count: int, cache: Path) -> np.ndarray:
    """(count, clips, samples): the spec's augment.audio drawn ``count`` times per clip (variant 0: none)."""
    specs = spec.augment.audio if spec.augment.enabled else []
    key = hashlib.sha1(json.dumps([[s.model_dump() for s in specs], count, waves.shape]).encode()).hexdigest()[:12]
    path = cache / f"variants-{key}.npy"
    if path.is_file():
        return np.load(path)
    out = np.empty((count, *waves.shape), dtype=np.float32)
    out[0] = waves
    apply = audio_augment.build(specs, spec.modalities.audio.sample_rate) if specs else None
    with globals_restored():
        for v in range(1, count):
            for i, wave in enumerate(waves):
                out[v, i] = apply(wave, v * 100003 + i) if apply else wave
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, out)
    return out


def evaluate(model, waves: torch.Tensor, labels: np.ndarray) -> tuple[float, np.ndarray]:
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model({"audio": w, "present_audio": torch.ones(len(w), dtype=torch.bool)}).argmax(1)
                          for w in waves.split(256)]).numpy()
    return f1_score(labels, pred, average="macro"), pred


def run_fold(spec, clips, digits, speakers, takes, augmented, held_out, val_speaker, epochs, seed, mixup):
    names = sorted(set(speakers))
    split = np.array([split_of(s, t, "speaker", names, held_out, val_speaker) for s, t in zip(speakers, takes)])
    tr, va, te = (np.flatnonzero(split == s) for s in ("train", "val", "test"))
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = MultimodalClassifier(spec, 10)
    opt = make_optimizer(spec.train, model.parameters())
    batch = spec.train.batch_size
    steps = len(tr) // batch
    sched = lr_schedule(spec.train.model_copy(update={"epochs": epochs}), opt, steps)
    val_w, test_w = torch.from_numpy(clips[va]), torch.from_numpy(clips[te])
    best = (-1.0, 0, 0.0, None)
    for epoch in range(1, epochs + 1):
        model.train()
        order = rng.permutation(tr)
        for k in range(steps):
            idx = order[k * batch:(k + 1) * batch]
            w = torch.from_numpy(augmented[rng.integers(0, len(augmented), len(idx)), idx])
            y = torch.from_numpy(digits[idx])
            if mixup:
                # mix peak-normalised waveforms (the encoder normalises per clip anyway) and their labels
                w = w / w.abs().amax(1, keepdim=True).clamp(min=1e-8)
                lam = float(rng.beta(mixup, mixup))
                perm = torch.from_numpy(rng.permutation(len(idx)))
                w = lam * w + (1 - lam) * w[perm]
            logits = model({"audio": w, "present_audio": torch.ones(len(idx), dtype=torch.bool)})
            loss = torch.nn.functional.cross_entropy(logits, y)
            if mixup:
                loss = lam * loss + (1 - lam) * torch.nn.functional.cross_entropy(logits, y[perm])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        val_f1, _ = evaluate(model, val_w, digits[va])
        test_f1, pred = evaluate(model, test_w, digits[te])
        if val_f1 > best[0]:
            best = (val_f1, epoch, test_f1, pred)
        print(f"{held_out} epoch {epoch}: val {val_f1:.3f} test {test_f1:.3f}", file=sys.stderr, flush=True)
    confusions = {}
    for t, p in zip(digits[te], best[3]):
        if t != p:
            confusions[f"{t}->{p}"] = confusions.get(f"{t}->{p}", 0) + 1
    top = sorted(confusions.items(), key=lambda kv: -kv[1])[:5]
    return {"speaker": held_out, "best_epoch": best[1], "val_f1": best[0], "test_f1_best": best[2],
            "test_f1_last": test_f1, "confusions": top, "train": len(tr), "val": len(va), "test": len(te)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recordings", type=Path)
    ap.add_argument("--speakers", nargs="+")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--variants", type=int, default=6, help="augmented copies per clip (0 of them: the clip)")
    ap.add_argument("--mixup", type=float, default=0.0, help="Beta(a, a) waveform mixup (0: off)")
    ap.add_argument("--val-speaker", action="store_true", help="the old protocol: the last other speaker is val")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/unseen-speakers-cache"))
    ap.add_argument("--out", type=Path, help="append each fold's result as a json line")
    args = ap.parse_args()
    torch.set_num_threads(2)
    spec = load_spec(JOB, ["model.fusion=audio_only", *args.sets])
    audio = spec.modalities.audio
    clips, digits, speakers, takes = load_clips(args.recordings, audio.sample_rate,
                                                int(audio.sample_rate * audio.seconds))
    augmented = variants(clips, spec, args.variants, args.cache)
    names = sorted(set(speakers))
    results = []
    for held_out in args.speakers or names:
        start = time.time()
        val = [s for s in names if s != held_out][-1] if args.val_speaker else None
        r = run_fold(spec, clips, digits, speakers, takes, augmented, held_out, val, args.epochs, args.seed,
                     args.mixup)
        r.update(seconds=round(time.time() - start), sets=args.sets, epochs=args.epochs, mixup=args.mixup)
        results.append(r)
        print(json.dumps(r), flush=True)
        if args.out:
            with args.out.open("a") as f:
                f.write(json.dumps(r) + "\n")
    f1 = [r["test_f1_best"] for r in results]
    print(f"mean test macro-F1 (best val epoch) {np.mean(f1):.3f} ± {np.std(f1):.3f}, min {min(f1):.3f}; "
          f"last epoch {np.mean([r['test_f1_last'] for r in results]):.3f}", file=sys.stderr)


if __name__ == "__main__":
    main()
