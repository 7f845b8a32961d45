"""Few labels: does self-supervised pretraining help when only 10 % of the train split is labelled? (docs/av-digits.md)

    mmpipe prepare-digits ../shared/data/fsdd/recordings runs/av-digits/raw
    mmpipe pack runs/av-digits/raw/manifest.csv runs/av-digits/shards --shard-samples 400
    python benchmarks/fewer_labels.py runs/av-digits/shards [--label-fraction 0.1] [--pretrain-epochs 10]
    python benchmarks/fewer_labels.py SHARDS --quick      # CI smoke run on the 36-clip fixture: 1 epoch each

(a) scratch:    jobs/av-digits.yaml with train.label_fraction, from random weights
(b) pretrained: `mmpipe pretrain` on the whole train split (labels ignored), then the same training with
                model.init_from: the pretraining run
More fine-tuning variants of (b): --variant NAME KEY=VALUE [KEY=VALUE ...] (e.g. freeze then unfreeze:
--variant frozen2 'model.freeze={image: 2, audio: 2, text: 2}'). Run folders go to --runs; a finished run is reused
(its metrics.json / pretrained.pt read back) unless --fresh.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from pipeline.data.streaming.plan import DataPlan
from pipeline.ray_runtime import ensure_ray
from pipeline.spec_checks import load_job
from pipeline.train.pretrain import PRETRAINED_FILE, run_pretraining
from pipeline.train.trainer import run_training

JOB = Path(__file__).resolve().parent.parent / "jobs" / "av-digits.yaml"
QUICK = ["train.epochs=1", "train.batch_size=4", "scaling.num_workers=1"]


def train(sets: list[str], out: Path, plan: DataPlan | None) -> tuple[dict, float]:
    if (out / "metrics.json").is_file():
        return json.loads((out / "metrics.json").read_text()), 0.0
    spec = load_job(JOB, sets)
    start = time.time()
    result = run_training(spec, out, data_report=False, data_plan=plan.for_spec(spec) if plan else None)
    return result.metrics, time.time() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("shards", type=Path)
    ap.add_argument("--runs", type=Path, default=Path("runs/av-digits/fewer-labels"))
    ap.add_argument("--label-fraction", type=float, default=0.1)
    ap.add_argument("--pretrain-epochs", type=int, default=10)
    ap.add_argument("--set", dest="sets", action="append", default=[], help="for every run (KEY=VALUE)")
    ap.add_argument("--pretrain-set", action="append", default=[], help="for the pretraining only")
    ap.add_argument("--variant", nargs="+", action="append", default=[], metavar=("NAME", "KEY=VALUE"),
                    help="another fine-tuning of the pretrained encoders with these settings")
    ap.add_argument("--no-default", action="store_true", help="skip the plain fine-tuning variant (b)")
    ap.add_argument("--fresh", action="store_true", help="discard earlier runs in --runs")
    ap.add_argument("--quick", action="store_true", help="smoke run: one epoch of everything, batch 4, 1 worker")
    args = ap.parse_args()
    if args.fresh:
        shutil.rmtree(args.runs, ignore_errors=True)
    sets = [f"data.splits.{s}={args.shards.resolve()}/{s}/*.tar" for s in ("train", "val", "test")]
    sets += [f"train.label_fraction={args.label_fraction}", *(QUICK if args.quick else []), *args.sets]
    pretrain_epochs = 1 if args.quick else args.pretrain_epochs
    ensure_ray()
    plan = DataPlan(load_job(JOB, sets))
    rows = []

    metrics, seconds = train(sets, args.runs / "scratch", plan)
    rows.append(("(a) scratch", metrics, seconds))
    pre_dir = args.runs / f"pretrain-{pretrain_epochs}"
    start = time.time()
    if not (pre_dir / PRETRAINED_FILE).is_file():
        pre_spec = load_job(JOB, sets + [f"pretrain.epochs={pretrain_epochs}", *args.pretrain_set])
        run_pretraining(pre_spec, pre_dir, data_plan=plan.for_spec(pre_spec))
    pre_seconds = time.time() - start
    variants = ([] if args.no_default else [["pretrained"]]) + args.variant
    for name, *extra in variants:
        metrics, seconds = train(sets + [f"model.init_from={pre_dir.resolve()}", *extra],
                                 args.runs / f"{name}-from-{pre_dir.name}", plan)
        rows.append((f"(b) {name} ({pretrain_epochs} pretrain epochs{', ' + ' '.join(extra) if extra else ''})",
                     metrics, seconds + pre_seconds))
        pre_seconds = 0.0  # counted once, with the first variant

    print(f"train.label_fraction={args.label_fraction}" + (" [--quick: not a measurement]" if args.quick else ""))
    print("| model | test macro-F1 | test accuracy | best epoch | seconds |")
    print("|---|---:|---:|---:|---:|")
    base = rows[0][1]["test.macro_f1"]
    for name, m, s in rows:
        gain = "" if name.startswith("(a)") else f" ({m['test.macro_f1'] - base:+.3f})"
        print(f"| {name} | {m['test.macro_f1']:.3f}{gain} | {m['test.accuracy']:.3f} | {m['best_epoch']} | "
              f"{round(s) if s else 'reused'} |")
    summary = [{"model": n, **{k: m[k] for k in ("test.macro_f1", "test.accuracy", "best_epoch")}, "seconds": s}
               for n, m, s in rows]
    (args.runs / "fewer_labels.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
