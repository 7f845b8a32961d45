"""Paired check of model.adapt_batchnorm on finished runs of benchmarks/unseen_speakers.py: each fold's best.pt
scores every recording of its held-out speaker in one process (no Ray), with the BatchNorm statistics it was
trained with and with them recomputed on those recordings (AdaBN, pipeline/model/adapt.py) -- the same weights,
so the difference is the adaptation's alone, free of run-to-run noise.

    python benchmarks/unseen_speakers_adapt.py ../shared/data/fsdd/recordings runs/unseen-speakers LABEL
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from pipeline.data.stages.align import fit_audio
from pipeline.examples.av_digits import parse_recordings
from pipeline.model.checkpoint import load_model
from unseen_speakers_loop import evaluate  # benchmarks/ is the script's folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recordings", type=Path)
    ap.add_argument("runs", type=Path)
    ap.add_argument("label")
    ap.add_argument("--protocol", default="val-takes")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = parse_recordings(args.recordings)
    out = []
    for speaker in sorted({r[2] for r in rows}):
        best = args.runs / speaker / args.protocol / args.label / "best.pt"
        if not best.is_file():
            continue
        model, spec, classes = load_model(best, str(best))
        audio = spec.modalities.audio
        n = int(audio.sample_rate * audio.seconds)
        mine = [r for r in rows if r[2] == speaker]
        waves = []
        for path, *_ in mine:
            wave, sr = sf.read(path, dtype="float32")
            waves.append(fit_audio(wave, sr, audio.sample_rate, n, spec.align.audio_crop, None))
        waves = torch.from_numpy(np.stack(waves))
        labels = np.array([classes.index(str(r[1])) for r in mine])
        plain, adapted = evaluate(model, waves, labels)[0], evaluate(model, waves, labels, adapt=True)[0]
        product = json.loads((best.parent / "metrics.json").read_text())["test.macro_f1"]
        out.append((speaker, plain, adapted, product))
        print(f"| {speaker} | {plain:.3f} | {adapted:.3f} | {adapted - plain:+.3f} | {product:.3f} |", flush=True)
    p, a = np.array([o[1] for o in out]), np.array([o[2] for o in out])
    print(f"| mean ± SD | {p.mean():.3f} ± {p.std():.3f} | {a.mean():.3f} ± {a.std():.3f} | {(a - p).mean():+.3f} | |")


if __name__ == "__main__":
    main()
