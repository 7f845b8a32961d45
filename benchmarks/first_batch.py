"""Time from `mmpipe train` start to the first training batch reaching a Ray Train worker, beside the same
figure for bare Ray Train + Ray Data (in practice the floor for changes inside mmpipe on this machine).

Starts ``mmpipe train <demo spec> --out <tmp>`` as a subprocess (its own local Ray instance) and watches its log
file (``<tmp>/run/logs/mmpipe.log``) until the driver logs "first training batch at unix time T" — the time rank 0
of the training loop took its first batch, sent through the workers' heartbeat; the figure is T minus the moment the
subprocess was started (so delivery delays do not count). The run is then interrupted, unless --complete.
Each run starts from a fresh run directory; the figures include interpreter start, imports and ``ray.init``.
Interleaved with it (A B A B ...), ``bare_first_batch.py`` with the spec's scaling: Ray started the same way, a
TorchTrainer over ``ray.data.range``, no mmpipe code; the ratio mmpipe / bare is mmpipe's own share.

    python benchmarks/first_batch.py [--runs 3] [--scale 0.5] [--complete] [--echo] [--no-bare]
    python benchmarks/first_batch.py --quick
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench_common import demo_data, machine_line, median, quiet_line, scratch_dir

from pipeline.spec import load_spec

FIRST = re.compile(r"first training batch at unix time ([0-9.]+)")
# --quick: one training worker in both runs (one process fewer to start and import torch on a 2-core CI machine)
QUICK_SETS = ["scaling.num_workers=1"]


def stop(proc: subprocess.Popen) -> None:
    """Interrupt the run (it shuts its own Ray instance down), escalating if it does not exit. The interrupt goes
    to the CLI alone: sent to the whole session, it also reached the Ray processes the CLI started, and the CLI then
    took ~40 s to exit instead of ~9 (measured on 2 cores). Whatever of the session is left is then killed."""
    for sig, wait in ((signal.SIGINT, 30), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        if proc.poll() is not None:
            break
        if sig == signal.SIGINT:
            proc.send_signal(sig)
        else:
            os.killpg(proc.pid, sig)  # our own session: the CLI and the Ray processes it started
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # a Ray process the CLI's shutdown left behind
    except (ProcessLookupError, PermissionError):
        pass


def mmpipe_command(spec: Path, epochs: int, sets: list[str]) -> tuple[list[str], Path]:
    """The command, and the log file where the run says when its first batch was taken."""
    out = scratch_dir("mmpipe-first-batch-")
    mmpipe = [shutil.which("mmpipe")] if shutil.which("mmpipe") else [sys.executable, "-m", "pipeline.cli"]
    return ([*mmpipe, "train", str(spec), "--out", str(out / "run"), "--set", f"train.epochs={epochs}",
             *(arg for s in sets for arg in ("--set", s))],
            out / "run" / "logs" / "mmpipe.log")


def bare_command(spec: Path, sets: list[str]) -> tuple[list[str], None]:
    s = load_spec(spec, sets)
    return [sys.executable, str(Path(__file__).with_name("bare_first_batch.py")),
            "--workers", str(s.scaling.num_workers), "--cpus-per-worker", str(s.scaling.cpus_per_worker),
            "--batch-size", str(s.train.batch_size)], None


def _first_in(text: str) -> float | None:
    m = FIRST.search(text)
    return float(m.group(1)) if m else None


def one_run(cmd: list[str], log: Path | None, complete: bool,
            echo: bool = False) -> tuple[float | None, float | None]:
    """(seconds to first batch, seconds to exit when --complete) for one run of ``cmd``; the first batch's time
    is read from ``log`` (mmpipe's log file), else from the command's output (the bare script prints it)."""
    start = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    found: dict[str, float] = {}
    tail: list[str] = []

    def read_output() -> None:  # drained in the background: a full pipe would block the run
        for line in proc.stdout:
            tail.append(line)
            del tail[:-20]
            if echo:  # the run's own output with seconds since start: where start-up time goes
                print(f"{time.time() - start:6.1f}  {line.rstrip()[:150]}", flush=True)
            if log is None and "t" not in found and _first_in(line) is not None:
                found["t"] = _first_in(line)

    reader = threading.Thread(target=read_output, daemon=True)
    reader.start()
    while "t" not in found and proc.poll() is None:
        time.sleep(0.1)
        if log is not None and log.exists():
            t = _first_in(log.read_text(encoding="utf-8", errors="replace"))
            if t is not None:
                found["t"] = t
    if "t" not in found:  # the run ended: its last output read, and one last look at the log
        reader.join(timeout=5)
    if log is not None and "t" not in found and log.exists():
        t = _first_in(log.read_text(encoding="utf-8", errors="replace"))
        if t is not None:
            found["t"] = t
    first = found["t"] - start if "t" in found else None
    if not complete:
        stop(proc)
        return first, None
    rc = proc.wait()
    if rc != 0:
        sys.stderr.write("".join(tail))
        raise SystemExit(f"{' '.join(cmd[:3])} exited with {rc}")
    return first, time.time() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--scale", type=float, default=0.5)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--complete", action="store_true", help="let each run finish (training, report, test)")
    ap.add_argument("--quick", action="store_true", help="smoke run: one run of each on small data, one training "
                                                         "worker (not a measurement)")
    ap.add_argument("--echo", action="store_true", help="print the run's log lines with seconds since start")
    ap.add_argument("--no-bare", action="store_true", help="skip the bare Ray Train + Ray Data reference runs")
    args = ap.parse_args()
    if args.quick:
        args.runs, args.scale = 1, 0.1
    sets = QUICK_SETS if args.quick else []

    print(quiet_line(), flush=True)
    spec = demo_data(args.scale) / "spec.yaml"
    scaling = load_spec(spec, sets).scaling
    kinds = {"mmpipe": lambda: mmpipe_command(spec, args.epochs, sets)}  # a new run directory each time
    if not args.no_bare:
        bare_cmd = bare_command(spec, sets)
        kinds["bare"] = lambda: bare_cmd
    firsts: dict[str, list[float]] = {k: [] for k in kinds}
    for i in range(args.runs):
        for kind, command in kinds.items():  # interleaved: both see the same machine state
            cmd, log = command()
            first, total = one_run(cmd, log, args.complete and kind == "mmpipe", args.echo)
            if first is None:
                raise SystemExit(f"the {kind} run ended without logging a first training batch")
            firsts[kind].append(first)
            print(f"run {i + 1} {kind}: first training batch after {first:.1f} s"
                  + (f", run complete after {total:.1f} s" if total else ""), flush=True)
    print(machine_line(os.cpu_count() or 0))
    print(f"data: demo --scale {args.scale:g}; mmpipe train --set train.epochs={args.epochs}"
          + "".join(f" --set {s}" for s in sets)
          + f" (demo spec{' with the --set above' if sets else ''}: {scaling.num_workers} "
            f"worker{'s' * (scaling.num_workers != 1)} x {scaling.cpus_per_worker:g} CPU)"
          + (" [--quick: not a measurement]" if args.quick else ""))
    mm = median(firsts["mmpipe"])
    print(f"time to first training batch: median {mm:.1f} s over {len(firsts['mmpipe'])} run(s) "
          f"(target 10 s: ratio {mm / 10:.2f})")
    if "bare" in firsts:
        bare = median(firsts["bare"])
        print(f"bare Ray Train + Ray Data, same scaling: median {bare:.1f} s; ratio mmpipe/bare {mm / bare:.2f} "
              f"(mmpipe's own share {mm - bare:.1f} s)")


if __name__ == "__main__":
    main()
