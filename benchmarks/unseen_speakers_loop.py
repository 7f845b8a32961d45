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
from pipeline.model.adapt import adapt_batchnorm
from pipeline.model.classifier import MultimodalClassifier
from pipeline.model.contrastive import pair_loss
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


def _batch(w: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"audio": w, "present_audio": torch.ones(len(w), dtype=torch.bool)}


def evaluate(model, waves: torch.Tensor, labels: np.ndarray, adapt: bool = False, rows=None,
             hook=None) -> tuple[float, np.ndarray]:
    """Macro-F1 and predictions. ``adapt``: AdaBN -- on a copy, every BatchNorm's statistics are recomputed on
    ``waves`` themselves (no labels, no gradient; masks and warps stay off), then the copy scores them.
    ``hook(rows[chunk])`` runs before each batch (the speaker statistics of those rows)."""
    def chunks(size):
        for start in range(0, len(waves), size):
            if hook is not None:
                hook(torch.from_numpy(rows[start:start + size]))
            yield waves[start:start + size]

    if adapt:  # the product's AdaBN (model.adapt_batchnorm)
        model = adapt_batchnorm(model, (_batch(w) for w in chunks(256)))
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(_batch(w)).argmax(1) for w in chunks(256)]).numpy()
    return f1_score(labels, pred, average="macro"), pred


def speaker_stats(spec, clips: np.ndarray, speakers: list[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per group (``speakers``: a group name per clip), the mean and std of each mel band of the encoder's features
    over all that group's clips and frames (unaugmented; no labels). The features have no weights, so a fresh
    encoder computes them."""
    enc = MultimodalClassifier(spec, 10).encoders["audio"].eval()
    out = {}
    spk = np.array(speakers)
    with torch.no_grad():
        for s in sorted(set(speakers)):
            f = torch.cat([enc.features(w) for w in torch.from_numpy(clips[spk == s]).split(256)])
            out[s] = (f.mean(dim=(0, 1)), f.std(dim=(0, 1)).clamp(min=0.1))
    return out


def with_speaker_norm(model) -> None:
    """Wraps the audio encoder's features: after them, (f - mean) / std of the clip's speaker's bands, taken from
    ``encoder.speaker_norm`` ((B, mels) tensors) that the caller sets before each forward."""
    enc = model.encoders["audio"]
    plain = enc.features
    enc.speaker_norm = None

    def features(wave):
        f = plain(wave)
        mean, std = enc.speaker_norm
        return (f - mean[:, None, :]) / std[:, None, :]
    enc.features = features


def pretrain(spec, augmented: np.ndarray, epochs: int, seed: int, batch: int = 64, temperature: float = 0.1):
    """Audio-only two-view InfoNCE on every clip (labels unused): each clip's two views are two different cached
    augmentations (pitch/tempo, gain) passed through the encoder in train mode (SpecAugment, VTLP as the spec
    says); a projection head on top. Returns the encoder's state dict."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed + 1000)
    enc = MultimodalClassifier(spec, 10).encoders["audio"]
    h = spec.model.hidden
    head = torch.nn.Sequential(torch.nn.Linear(h, h), torch.nn.ReLU(), torch.nn.Linear(h, 64))
    params = [*enc.parameters(), *head.parameters()]
    opt = make_optimizer(spec.train, params)
    n = augmented.shape[1]
    steps = n // batch
    sched = lr_schedule(spec.train.model_copy(update={"epochs": epochs}), opt, steps)
    enc.train()
    for epoch in range(1, epochs + 1):
        order = rng.permutation(n)
        total = 0.0
        for k in range(steps):
            idx = order[k * batch:(k + 1) * batch]
            a = rng.integers(0, len(augmented), len(idx))
            b = (a + rng.integers(1, len(augmented), len(idx))) % len(augmented)
            za = head(enc(torch.from_numpy(augmented[a, idx])))
            zb = head(enc(torch.from_numpy(augmented[b, idx])))
            every = torch.ones(len(idx), dtype=torch.bool)
            loss, _ = pair_loss(za, zb, every, every, torch.tensor(1 / temperature))  # the product's InfoNCE
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        print(f"pretrain epoch {epoch}: loss {total / steps:.3f}", file=sys.stderr, flush=True)
    return {k: v.detach().clone() for k, v in enc.state_dict().items()}


def run_fold(spec, clips, digits, speakers, takes, augmented, held_out, val_speaker, epochs, seed, mixup,
             norm_mode=None, init=None):
    names = sorted(set(speakers))
    split = np.array([split_of(s, t, "speaker", names, held_out, val_speaker) for s, t in zip(speakers, takes)])
    tr, va, te = (np.flatnonzero(split == s) for s in ("train", "val", "test"))
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = MultimodalClassifier(spec, 10)
    if init is not None:
        model.encoders["audio"].load_state_dict(init)
    spk_norm = None
    if norm_mode:
        # speaker: each voice by its own statistics; pooled: the training voices share one set (over all their
        # clips), the held-out voice has its own -- i.e. no speaker identities needed in training
        groups = list(speakers) if norm_mode == "speaker" else \
            [s if s == held_out else "train-voices" for s in speakers]
        norm_stats = speaker_stats(spec, clips, groups)
        with_speaker_norm(model)
        names_idx = {s: i for i, s in enumerate(names)}
        spk_ids = torch.tensor([names_idx[s] for s in speakers])
        means = torch.stack([norm_stats[s if s in norm_stats else "train-voices"][0] for s in names])
        stds = torch.stack([norm_stats[s if s in norm_stats else "train-voices"][1] for s in names])

        def spk_norm(idx):  # noqa: E306 -- sets the speaker statistics of these rows before a forward
            model.encoders["audio"].speaker_norm = (means[spk_ids[idx]], stds[spk_ids[idx]])
    opt = make_optimizer(spec.train, model.parameters())
    batch = spec.train.batch_size
    steps = len(tr) // batch
    sched = lr_schedule(spec.train.model_copy(update={"epochs": epochs}), opt, steps)
    val_w, test_w = torch.from_numpy(clips[va]), torch.from_numpy(clips[te])
    best = (-1.0, 0, 0.0, None, 0.0)
    # an exponential moving average of the weights (and BN buffers), scored from half way on
    ema = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.995),
                                              use_buffers=True)
    ema_best = (-1.0, 0, 0.0, 0.0)
    ema_scores = (0.0, 0.0)
    for epoch in range(1, epochs + 1):
        model.train()
        order = rng.permutation(tr)
        for k in range(steps):
            idx = order[k * batch:(k + 1) * batch]
            w = torch.from_numpy(augmented[rng.integers(0, len(augmented), len(idx)), idx])
            y = torch.from_numpy(digits[idx])
            if spk_norm:
                spk_norm(torch.from_numpy(idx))
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
            ema.update_parameters(model)
        if epoch > epochs // 2:
            e_val, _ = evaluate(ema.module, val_w, digits[va], rows=va, hook=spk_norm)
            ema_scores = (evaluate(ema.module, test_w, digits[te], rows=te, hook=spk_norm)[0],
                          evaluate(ema.module, test_w, digits[te], adapt=True, rows=te, hook=spk_norm)[0])
            if e_val > ema_best[0]:
                ema_best = (e_val, epoch, *ema_scores)
            print(f"{held_out} epoch {epoch} EMA: val {e_val:.3f} test {ema_scores[0]:.3f} "
                  f"adabn {ema_scores[1]:.3f}", file=sys.stderr, flush=True)
        val_f1, _ = evaluate(model, val_w, digits[va], rows=va, hook=spk_norm)
        test_f1, pred = evaluate(model, test_w, digits[te], rows=te, hook=spk_norm)
        ada_f1, _ = evaluate(model, test_w, digits[te], adapt=True, rows=te, hook=spk_norm)
        if val_f1 > best[0]:
            best = (val_f1, epoch, test_f1, pred, ada_f1)
        print(f"{held_out} epoch {epoch}: val {val_f1:.3f} test {test_f1:.3f} adabn {ada_f1:.3f}", file=sys.stderr,
              flush=True)
    confusions = {}
    for t, p in zip(digits[te], best[3]):
        if t != p:
            confusions[f"{t}->{p}"] = confusions.get(f"{t}->{p}", 0) + 1
    top = sorted(confusions.items(), key=lambda kv: -kv[1])[:5]
    return {"speaker": held_out, "best_epoch": best[1], "val_f1": best[0], "test_f1_best": best[2],
            "test_f1_last": test_f1, "adabn_best": best[4],
            "adabn_last": ada_f1, "seed": seed,
            "ema_best": ema_best[2], "ema_adabn_best": ema_best[3], "ema_epoch": ema_best[1],
            "ema_last": ema_scores[0], "ema_adabn_last": ema_scores[1], "confusions": top, "train": len(tr), "val": len(va), "test": len(te)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recordings", type=Path)
    ap.add_argument("--speakers", nargs="+")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--variants", type=int, default=6, help="augmented copies per clip (0 of them: the clip)")
    ap.add_argument("--mixup", type=float, default=0.0, help="Beta(a, a) waveform mixup (0: off)")
    ap.add_argument("--val-speaker", action="store_true", help="the old protocol: the last other speaker is val")
    ap.add_argument("--seed", type=int, nargs="+", default=[0])
    ap.add_argument("--speaker-norm", choices=["speaker", "pooled"],
                    help="normalise each mel band by the mean/std over all of a speaker's clips (no labels); "
                         "pooled: one set for all training voices together, and the held-out voice's own")
    ap.add_argument("--pretrain-epochs", type=int, default=0,
                    help="audio-only two-view InfoNCE on all clips (every speaker, no labels) before each seed")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/unseen-speakers-cache"))
    ap.add_argument("--out", type=Path, help="append each fold's result as a json line")
    args = ap.parse_args()
    torch.set_num_threads(1)
    spec = load_spec(JOB, ["model.fusion=audio_only", *args.sets])
    audio = spec.modalities.audio
    clips, digits, speakers, takes = load_clips(args.recordings, audio.sample_rate,
                                                int(audio.sample_rate * audio.seconds))
    augmented = variants(clips, spec, args.variants, args.cache)
    names = sorted(set(speakers))
    results = []
    for seed in args.seed:
        init = pretrain(spec, augmented, args.pretrain_epochs, seed) if args.pretrain_epochs else None
        for held_out in args.speakers or names:
            start = time.time()
            val = [s for s in names if s != held_out][-1] if args.val_speaker else None
            r = run_fold(spec, clips, digits, speakers, takes, augmented, held_out, val, args.epochs, seed,
                         args.mixup, args.speaker_norm, init)
            r.update(seconds=round(time.time() - start), sets=args.sets, epochs=args.epochs, mixup=args.mixup,
                     speaker_norm=args.speaker_norm, pretrain_epochs=args.pretrain_epochs)
            results.append(r)
            print(json.dumps(r), flush=True)
            if args.out:
                with args.out.open("a") as f:
                    f.write(json.dumps(r) + "\n")
    for key in ("test_f1_best", "test_f1_last", "adabn_best", "adabn_last", "ema_best", "ema_adabn_best",
                "ema_last", "ema_adabn_last"):
        f1 = [r[key] for r in results]
        print(f"{key}: mean {np.mean(f1):.3f} ± {np.std(f1):.3f}, min {min(f1):.3f}", file=sys.stderr)


if __name__ == "__main__":
    main()
