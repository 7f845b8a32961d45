"""ASHA against FIFO at the same number of trials: trial-epochs used and the best metric found.

Both searches sample the same space (random search) on the demo data, one after the other on one Ray instance:

    python benchmarks/tune_schedulers.py [--samples 6] [--epochs 4] [--scale 0.5]
    python benchmarks/tune_schedulers.py --quick   # CI smoke run: 1 trial of 1 epoch each, tiny data
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

from pipeline.data.tools.demo import write_demo
from pipeline.ray_runtime import ensure_ray
from pipeline.spec import load_spec
from pipeline.tune.runner import run_tune

SPACE = ("tune.search_space={model.fusion: {choice: [concat, gated, late, sum]}, "
         "train.optimizer: {choice: [adamw, sgd, rmsprop]}, train.lr: {loguniform: [0.0003, 0.01]}}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=6)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--scale", type=float, default=0.5)
    ap.add_argument("--quick", action="store_true", help="smoke run: one 1-epoch trial per scheduler, one training "
                                                         "worker, --scale 0.05 data (nothing to compare: it only "
                                                         "runs the code)")
    args = ap.parse_args()
    batch, quick_sets = 32, []
    if args.quick:
        args.samples, args.epochs, args.scale, batch = 1, 1, 0.05, 16
        quick_sets = ["scaling.num_workers=1"]  # one Train worker process fewer to start per trial
    root = Path(tempfile.mkdtemp(prefix="mmpipe-tune-bench-"))
    write_demo(root / "data", seed=0, scale=args.scale)
    ensure_ray()
    rows = []
    for scheduler in ("fifo", "asha"):
        spec = load_spec(root / "data" / "spec.yaml", [
            SPACE, f"tune.num_samples={args.samples}", f"tune.scheduler={scheduler}", f"train.epochs={args.epochs}",
            f"train.batch_size={batch}", "model.hidden=32", "augment.enabled=false", "tune.grace_period=1",
            "tune.reduction_factor=2", *quick_sets])
        start = time.time()
        result = run_tune(spec, root / scheduler)
        import pandas as pd

        frame = pd.read_csv(root / scheduler / "trials.csv")
        rows.append((scheduler, len(frame), int(frame["training_iteration"].sum()), result.best_metric,
                     time.time() - start))
    print(f"machine: {platform.machine()}, Python {platform.python_version()}; demo --scale {args.scale}, "
          f"{args.samples} trials, up to {args.epochs} epochs each" + " [--quick: not a measurement]" * args.quick)
    print("| scheduler | trials | trial-epochs | best val.macro_f1 | seconds |")
    print("|---|---:|---:|---:|---:|")
    for name, trials, epochs, best, seconds in rows:
        print(f"| {name} | {trials} | {epochs} | {best:.3f} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
