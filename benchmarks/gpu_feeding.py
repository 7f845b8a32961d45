"""Does the pipeline keep a GPU busy? Training samples/s of the default model fed by the pipeline against the same
model on synthetic batches already on the device, at 64 px and 224 px images, and a sweep of CPU counts for Ray.

For each image size: (1) synthetic: random batches of the aligned shapes, created on the device once, N steps;
(2) fed: the train split through the full data path (train_dataset -> iter_torch_batches), moved to the device,
same model, optimizer and steps, at each CPU count of the sweep (Ray Data's CPU limit for that dataset). Training
runs in this process on one device (no DDP): what is compared is the feed, not Ray Train. Ratio = fed / synthetic;
the target is >= 0.9. The demo images are 32 px JPEGs, resized up by align: decoding is cheaper than for real
64/224 px images, so on real data the CPU side needs more cores than this shows.

Without a CUDA GPU it says so and exits 0; ``--cpu`` then runs the same comparison on the CPU, labelled as such
(the model then competes with the pipeline for the same cores, which is not what the target is about).

    python benchmarks/gpu_feeding.py [--sizes 64 224] [--cpus 2 4 8] [--steps 60] [--batch-size 64]
    python benchmarks/gpu_feeding.py --quick [--cpu]
"""

from __future__ import annotations

import argparse
import os
import time
from contextlib import nullcontext

import torch
from bench_common import demo_data, machine_line, quiet_line, start_ray

from pipeline.data.streaming.plan import DataPlan
from pipeline.model.classifier import MultimodalClassifier, input_columns
from pipeline.spec import load_spec


def train_steps(model, optimizer, batches, device, steps: int, warmup: int = 3) -> float:
    """Samples/s over ``steps`` optimizer steps (after ``warmup`` untimed ones) drawing batches from an iterator."""
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    rows, start = 0, None
    for i in range(steps + warmup):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start, rows = time.perf_counter(), 0
        batch = {k: v.to(device, non_blocking=True) for k, v in next(batches).items()}
        with autocast:
            loss = torch.nn.functional.cross_entropy(model(batch), batch["label"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        rows += len(batch["label"])
    if device.type == "cuda":
        torch.cuda.synchronize()
    return rows / (time.perf_counter() - start)


def synthetic(spec, batch_size: int, device):
    """The same batch forever, already on the device."""
    m = spec.modalities
    b = {"image": torch.randint(0, 256, (batch_size, *m.image.size, 3), dtype=torch.uint8),
         "text": torch.randint(1, m.text.vocab_size, (batch_size, m.text.max_tokens)),
         "audio": torch.randn(batch_size, m.audio.num_samples),
         "label": torch.randint(0, 6, (batch_size,))}
    b.update({f"present_{r}": torch.ones(batch_size, dtype=torch.bool) for r in ("image", "text", "audio")})
    b = {k: v.to(device) for k, v in b.items()}
    while True:
        yield b


def fed(data: DataPlan, batch_size: int, cpus: int):
    """Pipeline batches on at most ``cpus`` CPUs, epoch after epoch, pinned for fast copies to a GPU."""
    ds = data.train_dataset(columns=input_columns(data.spec))
    ds.context.execution_options.resource_limits = ds.context.execution_options.resource_limits.copy(cpu=cpus)
    while True:
        yield from ds.iter_torch_batches(batch_size=batch_size, drop_last=True, prefetch_batches=4,
                                         pin_memory=torch.cuda.is_available())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    ap.add_argument("--cpus", type=int, nargs="+", default=None, help="CPU counts for Ray (default: 2, 4, ... all)")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--cpu", action="store_true", help="no GPU: run the comparison on the CPU, labelled so")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 64 px, 2 CPUs, few steps, tiny data, no warm-up epoch (not a measurement)")
    args = ap.parse_args()
    if not torch.cuda.is_available() and not args.cpu:
        print("gpu_feeding: no CUDA GPU on this machine; nothing measured (--cpu runs a CPU-only variant)")
        return
    if args.quick:
        args.sizes, args.cpus, args.steps, args.scale, args.batch_size = [64], [2], 2, 0.05, 8
    warmup = 1 if args.quick else 3  # untimed steps before each timing
    total = os.cpu_count() or 2
    sweep = args.cpus or sorted({c for c in (2, 4, 8, 16, 32, total) if c <= total})
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    label = torch.cuda.get_device_name() if device.type == "cuda" else "CPU ONLY (no GPU: not the GPU target)"

    print(quiet_line(), flush=True)
    data = demo_data(args.scale)
    start_ray(max(sweep))  # one Ray; each fed run caps its data pipeline at the sweep's CPU count
    results = []
    for size in args.sizes:
        spec = load_spec(data / "spec.yaml", [f"modalities.image.size=[{size}, {size}]"])
        data_plan = DataPlan(spec)
        classes = data_plan.classes
        torch.manual_seed(0)
        model = MultimodalClassifier(spec, len(classes)).to(device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        base = train_steps(model, optimizer, synthetic(spec, args.batch_size, device), device, args.steps, warmup)
        if not args.quick:  # warm-up epoch: Ray's workers start and import the augmentation libraries untimed
            for _ in data_plan.train_dataset().iter_batches(batch_size=None):
                pass
        for cpus in sweep:
            rate = train_steps(model, optimizer, fed(data_plan, args.batch_size, cpus), device, args.steps, warmup)
            results.append((size, cpus, base, rate))
            print(f"{size} px, {cpus} CPUs: synthetic {base:.0f}/s, fed {rate:.0f}/s, ratio {rate / base:.2f}",
                  flush=True)

    print(machine_line(max(sweep)))
    print(f"device: {label}; batch size {args.batch_size}; {args.steps} timed steps; demo --scale {args.scale:g}"
          + (" [--quick: no warm-up epoch: not a measurement]" if args.quick else ""))
    print(f"{'image':>6} {'Ray CPUs':>8} {'synthetic/s':>12} {'fed/s':>8} {'ratio':>6}")
    for size, cpus, base, rate in results:
        print(f"{size:>6} {cpus:>8} {base:>12.0f} {rate:>8.0f} {rate / base:>6.2f}")


if __name__ == "__main__":
    main()
