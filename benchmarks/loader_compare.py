"""Samples/s of the full CPU training-data path: mmpipe on Ray Data against webdataset + torch DataLoader.

Both run the same stage functions (prepare_batch = clean + align, keep_rows, rebalance_batch, augment_batch) on the
same demo shards with the same batch size and CPU count, and deliver the model's input columns as torch tensors
to this process, which only counts rows:

    A  Ray Data   train_dataset(spec, columns=inputs).iter_torch_batches(batch_size)   (num_cpus = CPUS)
    B  DataLoader webdataset -> same stages, DataLoader(num_workers = CPUS, persistent_workers=True)

    C  reference  the same StageStream in this one process (no workers): twice its rate is what 2 cores could give

One warm-up pass each (worker processes start and import the augmentation libraries), then timed passes
interleaved A B C A B C ...; the median samples/s of each and the ratio Ray / DataLoader are printed.
``--profile`` adds Ray Data's own breakdown of the last Ray pass (task time, time the consumer waited, format
conversion, collation): where the Ray path's time goes.

    python benchmarks/loader_compare.py [--repeats 5] [--scale 2] [--cpus 2] [--batch-size 128]
    python benchmarks/loader_compare.py --quick
"""

from __future__ import annotations

import argparse

import numpy as np
from bench_common import demo_data, machine_line, median, quiet_line, start_ray, timed
from torch_loader import StageStream, make_loader

from pipeline.data.streaming.plan import DataPlan
from pipeline.data.shards.check import expand_shards
from pipeline.model.classifier import input_columns
from pipeline.spec import load_spec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5, help="timed passes of each loader")
    ap.add_argument("--scale", type=float, default=2.0, help="demo data size (1.0: 1,092 train samples)")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: tiny data, one timed pass each, no Ray warm-up pass (figures meaningless)")
    ap.add_argument("--profile", action="store_true", help="print Ray Data's stats of the last Ray pass")
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.scale = 1, 0.1

    print(quiet_line(), flush=True)
    data = demo_data(args.scale)
    spec = load_spec(data / "spec.yaml")
    data_plan = DataPlan(spec)
    classes = data_plan.classes
    plan = data_plan.rebalance  # from manifest.json, for both loaders
    factors = np.array(plan.factors) if spec.rebalance.strategy != "none" else None

    # The DataLoader's workers are forked before Ray starts in this process, then kept (persistent_workers).
    stream = StageStream(expand_shards(spec.data.splits["train"]), spec, classes, factors, args.batch_size)
    loader, inline = make_loader(stream, args.cpus), make_loader(stream, 0)
    # --quick: the one-process warm-up first, so the workers forked next inherit its imports (most of a smoke run)
    for warm_up in ((inline, loader) if args.quick else (loader, inline)):
        timed(warm_up)
    start_ray(args.cpus)
    ray_ds = data_plan.train_dataset(columns=input_columns(spec))

    def ray_pass():
        return timed(ray_ds.iter_torch_batches(batch_size=args.batch_size, drop_last=False))

    runs = {"ray": ray_pass, "dataloader": lambda: timed(loader), "one process": lambda: timed(inline)}
    timed_rows: dict[str, list[int]] = {name: [] for name in runs}
    rates: dict[str, list[float]] = {name: [] for name in runs}
    if not args.quick:
        ray_pass()
    for _ in range(args.repeats):
        for name, run in runs.items():
            rows, seconds = run()
            timed_rows[name].append(rows)
            rates[name].append(rows / seconds)

    print(machine_line(args.cpus))
    print(f"data: demo --scale {args.scale:g}, train split, {len(expand_shards(spec.data.splits['train']))} shards; "
          f"batch size {args.batch_size}; stages: clean+align, keep, rebalance {spec.rebalance.strategy}, "
          f"augment (demo spec)" + (" [--quick: one pass, not a measurement]" if args.quick else ""))
    print(f"{'loader':12} {'rows/pass':>10} {'median samples/s':>17}  passes (samples/s)")
    for name, values in rates.items():
        print(f"{name:12} {median(timed_rows[name]):>10.0f} {median(values):>17.0f}  "
              + " ".join(f"{r:.0f}" for r in values))
    ray, loader_rate, one = (median(rates[n]) for n in runs)
    print(f"ratio ray/dataloader: {ray / loader_rate:.2f}")
    print(f"ratio ray/(one process x {args.cpus}): {ray / (one * args.cpus):.2f}; "
          f"dataloader/(one process x {args.cpus}): {loader_rate / (one * args.cpus):.2f}")
    if args.profile:
        print(ray_ds.stats())


if __name__ == "__main__":
    main()
