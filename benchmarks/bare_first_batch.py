"""The reference under `mmpipe train`'s start-up: bare Ray Train + Ray Data with nothing of mmpipe in them.

Starts Ray as ``mmpipe train`` does (a local instance with the dashboard; not its idle-worker setting, which matters
from the second epoch), builds a TorchTrainer with the same scaling (workers, CPUs per worker) over a trivial Ray
Data dataset (``range`` + an identity ``map_batches``), and prints "first training batch at unix time T" when rank
0's loop gets its first batch, as mmpipe's loop does.
benchmarks/first_batch.py runs it beside ``mmpipe train`` so the two times come from the same machine state.

    python benchmarks/bare_first_batch.py --workers 2 --cpus-per-worker 0.5
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time

import ray
import ray.train
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer


def loop(config: dict) -> None:
    shard = ray.train.get_dataset_shard("train")
    for _ in shard.iter_torch_batches(batch_size=config["batch_size"], drop_last=True):
        if ray.train.get_context().get_world_rank() == 0:
            print(f"first training batch at unix time {time.time():.3f}", flush=True)
        break


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cpus-per-worker", type=float, default=0.5)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()

    ray.init(address="local", include_dashboard=True, logging_level=logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False
    dataset = ray.data.range(4096).map_batches(lambda batch: batch)
    with tempfile.TemporaryDirectory(prefix="bare-first-batch-") as storage:
        TorchTrainer(loop, train_loop_config={"batch_size": args.batch_size},
                     scaling_config=ScalingConfig(num_workers=args.workers,
                                                  resources_per_worker={"CPU": args.cpus_per_worker}),
                     datasets={"train": dataset}, run_config=RunConfig(storage_path=storage)).fit()


if __name__ == "__main__":
    main()
