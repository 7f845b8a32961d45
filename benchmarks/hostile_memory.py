"""Peak memory and wall time of `mmpipe validate` over the hostile-shard corpus and over a clean corpus of the same
sample count: hostile input should cost about what clean input costs (targets on 2 cores: peak RSS ratio <= 1.25,
wall time ratio <= 2).

The corpora come from tests/support/hostile_corpus.py (sparse members, a huge pax header, a gzip-member storm, pixel,
text and audio bombs, a member over max_member_bytes, corrupt and truncated .tgz/.tar, among good samples). Each
run is a fresh `python -m pipeline.cli validate` process (its own local Ray); this process samples the resident
memory summed over it and all its descendants (driver, GCS, raylet, workers) every 0.2 s. Printed per corpus:
peak RSS, wall time, and the ratios hostile / clean.

    python benchmarks/hostile_memory.py [--repeat 3]
    python benchmarks/hostile_memory.py --quick      # one run each (CI smoke test)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from bench_common import machine_line, quiet_line, scratch_dir
from memory_flat import POLL_S, QUICK_POLL_S, tree_memory

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.hostile_corpus import write_clean, write_hostile  # noqa: E402


def run_validate(spec: Path, poll_s: float = POLL_S) -> tuple[float, int, str]:
    """(seconds, peak RSS of the process tree sampled every ``poll_s``, output tail) of one `mmpipe validate`."""
    import psutil

    env = {**os.environ, "RAY_DEDUP_LOGS": "0"}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "validate", str(spec)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    root, peak = psutil.Process(proc.pid), 0
    lines: list[str] = []
    import threading

    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    while proc.poll() is None:
        peak = max(peak, tree_memory(root)[0])
        time.sleep(poll_s)
    seconds = time.perf_counter() - start
    reader.join()
    if proc.returncode != 0:
        raise SystemExit(f"validate {spec} failed ({proc.returncode}):\n{''.join(lines[-30:])}")
    return seconds, peak, "".join(lines[-40:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3, help="runs per corpus (the median is compared)")
    ap.add_argument("--quick", action="store_true", help="one run per corpus, memory sampled every "
                                                         f"{QUICK_POLL_S:g} s (not a measurement)")
    ap.add_argument("--show-report", action="store_true", help="print the hostile corpus's data report")
    args = ap.parse_args()
    repeat = 1 if args.quick else args.repeat

    print(quiet_line(), flush=True)
    print(machine_line(os.cpu_count() or 0), flush=True)
    hostile = scratch_dir("mmpipe-hostile-")
    expected = write_hostile(hostile)
    clean = scratch_dir("mmpipe-clean-")
    write_clean(clean, expected.samples)
    print(f"corpora: {expected.samples} samples each; hostile: {len(expected.dropped)} hostile samples, "
          f"{len(expected.bad_shards)} hostile shards", flush=True)

    results = {}
    for name, root in (("clean", clean), ("hostile", hostile)):
        runs = [run_validate(root / "spec.yaml", QUICK_POLL_S if args.quick else POLL_S) for _ in range(repeat)]
        seconds = sorted(r[0] for r in runs)[len(runs) // 2]
        peak = sorted(r[1] for r in runs)[len(runs) // 2]
        results[name] = (seconds, peak)
        print(f"{name}: validate {seconds:.1f} s, peak RSS {peak / 2**20:,.0f} MiB (median of {repeat})", flush=True)
        if name == "hostile" and args.show_report:
            print(runs[-1][2])
    (cs, cp), (hs, hp) = results["clean"], results["hostile"]
    print(f"ratio hostile/clean: peak RSS {hp / cp:.2f} (target <= 1.25), wall time {hs / cs:.2f} (target <= 2)")


if __name__ == "__main__":
    main()
