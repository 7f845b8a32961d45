"""Memory while one epoch of the train split streams to a consumer, at 1x and 10x the data: it should stay flat.

Each size runs in a fresh child process that starts its own local Ray and drains one epoch of
``train_dataset(...).iter_torch_batches`` (full path: read, clean, align, keep, rebalance, augment), keeping
nothing. This process samples, every 0.2 s, the resident memory summed over the child and all its descendants
(driver, GCS, raylet, Ray workers, dashboard agents): RSS (shared pages counted in every process that maps them, as
the brief asks) and PSS (shared pages split between their users, so nothing counts twice). The child samples the
object store's bytes in use and spilled. Printed: the peaks per size and the growth ratio 10x / 1x (target <= 1.1).

    python benchmarks/memory_flat.py [--scale 1] [--factor 10] [--cpus 2]
    python benchmarks/memory_flat.py --quick
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench_common import demo_data, machine_line, quiet_line, start_ray

POLL_S = 0.2
# --quick: reading the memory maps of a run's process tree costs ~50 ms of CPU on 2 cores; every 0.2 s that was ~9 s
# of a 48 s smoke run, taken from the run it measured
QUICK_POLL_S = 1.0


def tree_memory(root) -> tuple[int, int]:
    """(Σ RSS, Σ PSS) in bytes over ``root`` (a psutil.Process) and its descendants."""
    import psutil  # Ray's vendored copy, on sys.path once bench_common imported ray

    rss = pss = 0
    for p in [root, *root.children(recursive=True)]:
        try:
            info = p.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
    return rss, pss


def child(data: Path, cpus: int, batch_size: int) -> None:
    """Stream one epoch; print rows, seconds and object-store peaks as one JSON line."""
    import ray
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address

    from pipeline.data.streaming.plan import DataPlan
    from pipeline.model.classifier import input_columns
    from pipeline.spec import load_spec

    start_ray(cpus)
    state = get_state_from_address(ray.get_runtime_context().gcs_address)
    peak = {"store": 0, "spilled": 0}
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            stats = get_memory_info_reply(state).store_stats
            peak["store"] = max(peak["store"], stats.object_store_bytes_used)
            peak["spilled"] = max(peak["spilled"], stats.spilled_bytes_total)
            done.wait(POLL_S)

    spec = load_spec(data / "spec.yaml")
    ds = DataPlan(spec).train_dataset(columns=input_columns(spec))
    print("streaming", flush=True)  # the parent resets its peaks here: Ray start-up is not the data's memory
    sampler = threading.Thread(target=poll, daemon=True)
    sampler.start()
    start, rows = time.perf_counter(), 0
    for batch in ds.iter_torch_batches(batch_size=batch_size):
        rows += len(batch["label"])
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    print(json.dumps({"rows": rows, "seconds": seconds, **peak}), flush=True)
    ray.shutdown()


def measure(data: Path, cpus: int, batch_size: int, poll_s: float = POLL_S) -> dict:
    """Run one child, sampling its process tree every ``poll_s``; returns its JSON plus idle and peak RSS/PSS."""
    import psutil

    proc = subprocess.Popen([sys.executable, __file__, "--child", str(data), "--cpus", str(cpus),
                             "--batch-size", str(batch_size)], stdout=subprocess.PIPE, text=True)
    root = psutil.Process(proc.pid)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    idle = peak = (0, 0)
    while proc.poll() is None:
        now = tree_memory(root)
        if "streaming\n" not in lines:
            idle = max(idle, now)  # start-up and dataset planning
        else:
            peak = (max(peak[0], now[0]), max(peak[1], now[1]))
        time.sleep(poll_s)
    reader.join()
    if proc.returncode != 0 or not lines or not lines[-1].startswith("{"):
        raise SystemExit(f"child for {data} failed ({proc.returncode}): {''.join(lines[-5:])}")
    return {**json.loads(lines[-1]), "idle_rss": idle[0], "idle_pss": idle[1], "rss": peak[0], "pss": peak[1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="the 1x data size (demo scale)")
    ap.add_argument("--factor", type=float, default=10.0)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--quick", action="store_true", help="smoke run: demo scale 0.05 and 4x that (not a measurement)")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.cpus, args.batch_size)
    if args.quick:
        args.scale, args.factor = 0.05, 4.0

    print(quiet_line(), flush=True)
    sizes = {"1x": demo_data(args.scale), f"{args.factor:g}x": demo_data(args.scale * args.factor)}
    poll_s = QUICK_POLL_S if args.quick else POLL_S
    results = {name: measure(data, args.cpus, args.batch_size, poll_s) for name, data in sizes.items()}

    mib = 2 ** 20
    print(machine_line(args.cpus))
    print(f"data: demo --scale {args.scale:g} and {args.scale * args.factor:g}; one epoch of the train split, "
          f"batch size {args.batch_size}" + (" [--quick: not a measurement]" if args.quick else ""))
    print(f"{'data':>5} {'rows':>7} {'s':>6} {'idle RSS MiB':>13} {'peak RSS MiB':>13} {'peak PSS MiB':>13} "
          f"{'store MiB':>10} {'spilled MiB':>12}")
    for name, r in results.items():
        print(f"{name:>5} {r['rows']:>7} {r['seconds']:>6.1f} {r['idle_rss'] / mib:>13.0f} {r['rss'] / mib:>13.0f} "
              f"{r['pss'] / mib:>13.0f} {r['store'] / mib:>10.1f} {r['spilled'] / mib:>12.1f}")
    small, large = results.values()
    print(f"growth {list(results)[1]} / 1x: peak RSS {large['rss'] / small['rss']:.2f}, "
          f"peak PSS {large['pss'] / small['pss']:.2f}, "
          f"object store {large['store'] / max(small['store'], 1):.2f} (target <= 1.1)")


if __name__ == "__main__":
    main()
