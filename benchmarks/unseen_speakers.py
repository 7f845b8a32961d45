"""Audio on voices it has not heard: each FSDD speaker held out in turn (docs/av-digits.md, "Unseen speakers").

    python benchmarks/unseen_speakers.py ../shared/data/fsdd/recordings [--runs runs/unseen-speakers]
    python benchmarks/unseen_speakers.py RECORDINGS --speakers theo yweweler   # some folds (the rest: later)
    python benchmarks/unseen_speakers.py tests/fixtures/fsdd --quick            # CI smoke run: one fold, 1 epoch

Per held-out speaker S, through the product's own commands (P, the protocol: val-takes, or val-speaker with
--val-speaker):
    mmpipe prepare-digits RECORDINGS RUNS/S/P/raw --split speaker --test-speaker S
        val-takes (default): the other speakers' takes 5-9 are val, the rest of theirs train (3 of FSDD's 4 voices)
        val-speaker: ... --val-speaker V, V the last other speaker in sorted order (the protocol before 2026-12-02:
        V is val, training hears 2 voices)
    mmpipe pack RUNS/S/P/raw/manifest.csv RUNS/S/P/shards --shard-samples 250
    mmpipe train jobs/av-digits.yaml --out RUNS/S/P/<label> --set model.fusion=audio_only [--set ...]
then prints test macro-F1 and accuracy per speaker, their mean, spread (population standard deviation) and minimum.
A fold whose metrics.json exists is read back, not retrained (--fresh discards them), so a long measurement can be
split over several calls. ``--label`` names a variant (its own run folders); ``--set`` applies to every fold.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from pipeline.examples.av_digits import parse_recordings

JOB = Path(__file__).resolve().parent.parent / "jobs" / "av-digits.yaml"
QUICK = ["train.epochs=1", "train.batch_size=4", "scaling.num_workers=1"]


def mmpipe(*args: str) -> None:
    """One product command, as a user runs it (python -m pipeline.cli: the same code as the mmpipe script)."""
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"mmpipe {' '.join(args)} failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}")


def protocol(val_speaker: bool) -> str:
    return "val-speaker" if val_speaker else "val-takes"


def fold(recordings: Path, speaker: str, runs: Path, label: str, sets: list[str],
         val_speaker: str | None = None) -> tuple[dict, float]:
    """(metrics.json of the audio-only model trained without ``speaker`` and tested on it, seconds of training).
    ``val_speaker``: that speaker is val (else the other speakers' takes 5-9)."""
    base = runs / speaker / protocol(bool(val_speaker))
    run_dir = base / label
    if (run_dir / "metrics.json").is_file():
        return json.loads((run_dir / "metrics.json").read_text()), 0.0
    if not (base / "shards" / "manifest.json").is_file():
        mmpipe("prepare-digits", str(recordings), str(base / "raw"), "--split", "speaker", "--test-speaker", speaker,
               *(["--val-speaker", val_speaker] if val_speaker else []))
        # several train shards: the train split reads them in a new order every epoch
        mmpipe("pack", str(base / "raw" / "manifest.csv"), str(base / "shards"), "--shard-samples", "250")
    shards = (base / "shards").resolve()
    split_sets = [f"--set=data.splits.{s}={shards}/{s}/*.tar" for s in ("train", "val", "test")]
    start = time.time()
    mmpipe("train", str(JOB), "--out", str(run_dir), "--set=model.fusion=audio_only", *split_sets,
           *(f"--set={s}" for s in sets))
    return json.loads((run_dir / "metrics.json").read_text()), time.time() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recordings", type=Path, help="folder of FSDD-style recordings {digit}_{speaker}_{take}.wav")
    ap.add_argument("--runs", type=Path, default=Path("runs/unseen-speakers"))
    ap.add_argument("--speakers", nargs="+", help="held-out speakers to run (default: every speaker)")
    ap.add_argument("--label", default="audio_only", help="name of this variant's run folders")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="for every fold (KEY=VALUE)")
    ap.add_argument("--fresh", action="store_true", help="retrain folds that have finished before")
    ap.add_argument("--quick", action="store_true", help="smoke run: the first speaker only, 1 epoch, batch 4")
    ap.add_argument("--val-speaker", action="store_true",
                    help="the protocol before 2026-12-02: the last other speaker is val, training hears one fewer")
    args = ap.parse_args()
    speakers = sorted({speaker for _, _, speaker, _ in parse_recordings(args.recordings)})
    chosen = args.speakers or speakers
    unknown = sorted(set(chosen) - set(speakers))
    if unknown:
        sys.exit(f"--speakers {', '.join(unknown)}: not among the recordings' speakers {', '.join(speakers)}")
    if args.quick:
        chosen, args.sets = chosen[:1], [*QUICK, *args.sets]
    if args.fresh:
        for speaker in chosen:
            shutil.rmtree(args.runs / speaker / protocol(args.val_speaker) / args.label, ignore_errors=True)

    rows = []
    for speaker in chosen:
        val = [s for s in speakers if s != speaker][-1] if args.val_speaker else None
        metrics, seconds = fold(args.recordings, speaker, args.runs, args.label, args.sets, val)
        rows.append((speaker, metrics, seconds))
        print(f"{speaker}: test macro-F1 {metrics['test.macro_f1']:.3f}", flush=True)

    print(f"variant {args.label}, {protocol(args.val_speaker)}: {' '.join(args.sets) or 'jobs/av-digits.yaml as is'}"
          + (" [--quick: not a measurement]" if args.quick else ""))
    print("| held-out speaker | test macro-F1 | test accuracy | best epoch | seconds |")
    print("|---|---:|---:|---:|---:|")
    for speaker, m, s in rows:
        print(f"| {speaker} | {m['test.macro_f1']:.3f} | {m['test.accuracy']:.3f} | {m['best_epoch']} | "
              f"{round(s) if s else 'reused'} |")
    f1 = [m["test.macro_f1"] for _, m, _ in rows]
    print(f"| **mean ± SD (min)** | **{statistics.mean(f1):.3f} ± {statistics.pstdev(f1):.3f} "
          f"({min(f1):.3f})** | | | |")
    summary = {"variant": args.label, "protocol": protocol(args.val_speaker), "sets": args.sets,
               "folds": [{"speaker": sp, **{k: m[k] for k in ("test.macro_f1", "test.accuracy", "best_epoch")},
                          "seconds": s} for sp, m, s in rows]}
    args.runs.mkdir(parents=True, exist_ok=True)
    (args.runs / f"{args.label}.{protocol(args.val_speaker)}.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
