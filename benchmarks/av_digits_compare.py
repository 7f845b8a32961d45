"""Train the av-digits example once per model and print a table of test metrics (used for docs/av-digits.md).

    mmpipe prepare-digits ../shared/data/fsdd/recordings runs/av-digits/raw
    mmpipe pack runs/av-digits/raw/manifest.csv runs/av-digits/shards --shard-samples 400
    python benchmarks/av_digits_compare.py runs/av-digits/shards [--fusions audio_only image_only ...]
    python benchmarks/av_digits_compare.py SHARDS --quick   # CI smoke run: one model, one epoch, small batches

Each model is one `mmpipe train jobs/av-digits.yaml --set model.fusion=NAME` run (same data, seed and
schedule); run directories go to runs/av-digits/<fusion>.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from pipeline.ray_runtime import ensure_ray
from pipeline.spec import load_spec
from pipeline.train.trainer import run_training

DEFAULT = ["image_only", "audio_only", "text_only", "concat", "gated", "attention", "late", "low_rank"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("shards", type=Path)
    ap.add_argument("--fusions", nargs="+", default=DEFAULT)
    ap.add_argument("--runs", type=Path, default=Path("runs/av-digits"))
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--quick", action="store_true", help="smoke run: image_only, 1 epoch, batch 4, 1 worker (sized "
                                                         "for the 36-clip test fixture)")
    args = ap.parse_args()
    if args.quick:
        args.fusions = ["image_only"]
        args.sets = ["train.epochs=1", "train.batch_size=4", "scaling.num_workers=1", *args.sets]
    ensure_ray()
    rows = []
    for fusion in args.fusions:
        sets = [f"data.splits.{s}={args.shards.resolve()}/{s}/*.tar" for s in ("train", "val", "test")]
        spec = load_spec(Path(__file__).parent.parent / "jobs" / "av-digits.yaml",
                         sets + [f"model.fusion={fusion}"] + args.sets)
        start = time.time()
        result = run_training(spec, args.runs / fusion)
        m = result.metrics
        rows.append({"model": fusion, "test.accuracy": m["test.accuracy"], "test.macro_f1": m["test.macro_f1"],
                     "test.balanced_accuracy": m["test.balanced_accuracy"], "best_epoch": m["best_epoch"],
                     "seconds": round(time.time() - start)})
        (args.runs / "compare.json").write_text(json.dumps(rows, indent=2))
    print("| model | test accuracy | test macro-F1 | best epoch | seconds |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['test.accuracy']:.3f} | {r['test.macro_f1']:.3f} | {r['best_epoch']} | "
              f"{r['seconds']} |")


if __name__ == "__main__":
    main()
