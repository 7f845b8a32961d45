"""A tune of N trials (default 8) on this machine's Ray, or on a cluster: wall time, trials completed, and the CPU
time of data tasks against training workers (issue 20: trials must never starve their own data).

    python benchmarks/tune_scale.py [--trials 8] [--cpus 2] [--scale 0.25]       # a local instance of --cpus CPUs
    python benchmarks/tune_scale.py --nodes 2 [--cpus 2]                          # two `ray start` nodes, --cpus each

``--nodes N`` starts a cluster of N `ray start` nodes on this machine (what docs/benchmarks.md reports for 2): each
with --num-cpus CPUs and a --temp-dir of its own (a shared one breaks runtime-env unpacking: ../shared/RAY_NOTES.md),
on 127.0.0.1 and free ports, token authentication off (a throwaway loopback cluster; what is measured is
scheduling); the benchmark joins it as a driver and stops exactly those nodes afterwards (never `ray stop`, which
would stop every Ray instance on the machine).

CPU utilisation is measured per process from /proc: the CPU seconds of every Ray worker process of this job, split
by what it ran (read tasks "ReadPreparedShards"/"_warm" = data; "RayTrainWorker" = training), over wall time x CPUs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from pipeline.data.tools.demo import write_demo
from pipeline.ray_runtime import ensure_ray
from pipeline.spec_checks import load_job
from pipeline.tune.runner import run_tune

SPACE = ("tune.search_space={model.fusion: {grid: [concat, late, gated, sum]}, "
         "train.optimizer: {grid: [adamw, sgd]}}")


class CpuSampler(threading.Thread):
    """Every second: CPU seconds of Ray worker processes, by role (their process title names what runs)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.cpu = {"data": 0.0, "training": 0.0, "other": 0.0}
        self._last: dict[int, tuple[str, float]] = {}
        self.stop = threading.Event()

    @staticmethod
    def _role(title: str) -> str | None:
        if not title.startswith("ray::"):
            return None
        if "ReadPreparedShards" in title or "_warm" in title or "SplitCoordinator" in title:
            return "data"
        if "RayTrainWorker" in title:
            return "training"
        return "other"

    @staticmethod
    def _processes():
        """(pid, command line, CPU seconds used) of every process, from /proc (Linux)."""
        tick = os.sysconf("SC_CLK_TCK")
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace").strip()
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                yield int(entry.name), title, (int(fields[11]) + int(fields[12])) / tick  # utime + stime
            except (OSError, ValueError, IndexError):
                continue

    def run(self):
        while not self.stop.wait(1.0):
            for pid, title, used in self._processes():
                role = self._role(title)
                if role is None:
                    continue
                previous = self._last.get(pid, (role, used))[1]
                self.cpu[role] += max(0.0, used - previous)
                self._last[pid] = (role, used)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pids_mentioning(text: str) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True, check=True).stdout
    return [int(line.split(None, 1)[0]) for line in out.splitlines() if text in line and "ps -eo" not in line]


def _wait_started(leader: subprocess.Popen, log: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while "Ray runtime started" not in log.read_text(errors="replace"):
        if leader.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"`ray start` did not come up:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.5)


@contextlib.contextmanager
def local_cluster(nodes: int, cpus: int):
    """``nodes`` `ray start --block` nodes of ``cpus`` CPUs on this machine (loopback only); yields the head's
    address with this process's environment set to join it. Stops only its own processes."""
    root = tempfile.mkdtemp(prefix="mmts-", dir="/tmp")  # Ray's unix socket paths must stay short
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    env.update(RAY_AUTH_MODE="disabled", RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0")
    port = _free_port()
    address = f"127.0.0.1:{port}"
    leaders = []
    try:
        for i in range(nodes):
            where = (["--head", "--port", str(port), "--dashboard-host", "127.0.0.1", "--dashboard-port",
                      str(_free_port()), "--ray-client-server-port", str(_free_port())] if i == 0 else
                     ["--address", address])
            leaders.append(subprocess.Popen(
                ["ray", "start", *where, "--node-ip-address", "127.0.0.1", "--num-cpus", str(cpus),
                 "--dashboard-agent-listen-port", str(_free_port()), "--temp-dir", f"{root}/n{i}",
                 "--disable-usage-stats", "--block"],
                env=env, start_new_session=True, stdout=open(f"{root}/n{i}.log", "w"), stderr=subprocess.STDOUT))
            _wait_started(leaders[-1], Path(f"{root}/n{i}.log"))  # the head's GCS first
        os.environ.update(RAY_AUTH_MODE="disabled")
        os.environ.pop("RAY_ADDRESS", None)
        yield address, root
    finally:
        for leader in reversed(leaders):
            with contextlib.suppress(ProcessLookupError):
                leader.send_signal(signal.SIGTERM)
        for leader in leaders:
            with contextlib.suppress(subprocess.TimeoutExpired):
                leader.wait(timeout=40)
        for _ in range(3):
            left = _pids_mentioning(root)
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if not left:
                break
            time.sleep(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=8, help="grid of 8 (fusion x optimizer) x num_samples")
    ap.add_argument("--cpus", type=int, default=None, help="CPUs of the local instance (default: the machine's)")
    ap.add_argument("--scale", type=float, default=0.25)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--nodes", type=int, default=0, help="start this many `ray start` nodes of --cpus CPUs each "
                                                         "(default: a local instance, no nodes)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mmpipe-tune-scale-"))
    write_demo(root / "data", seed=0, scale=args.scale)
    if args.nodes:
        with local_cluster(args.nodes, args.cpus or 2) as (address, _):
            ensure_ray(address=address)
            try:
                measure(args, root)
            finally:
                import ray

                ray.shutdown()
    else:
        ensure_ray(num_cpus=args.cpus)
        measure(args, root)


def measure(args, root: Path) -> None:
    import ray

    cpus = ray.cluster_resources().get("CPU", 0)
    spec = load_job(root / "data" / "spec.yaml", [
        SPACE, f"tune.num_samples={max(1, args.trials // 8)}", f"train.epochs={args.epochs}", "tune.scheduler=fifo",
        "train.batch_size=32", "model.hidden=32", "augment.enabled=false"])
    sampler = CpuSampler()
    sampler.start()
    start = time.time()
    error = None
    try:
        result = run_tune(spec, root / "tune")
    except Exception as e:  # noqa: BLE001  (reported: a benchmark of a failure is still a result)
        result, error = None, f"{type(e).__name__}: {str(e)[:300]}"
    wall = time.time() - start
    sampler.stop.set()
    sampler.join(3)
    nodes = len([n for n in ray.nodes() if n["Alive"]])
    print(f"{nodes} node(s), {cpus:g} CPUs, {os.cpu_count()} cores on the machine")
    print(f"trials completed: {result.trials if result else 0} of {args.trials}; wall {wall:.0f} s"
          + (f"; failed: {error}" if error else ""))
    total = wall * cpus
    for role, used in sampler.cpu.items():
        print(f"CPU {role}: {used:.0f} s ({100 * used / total:.0f}% of {cpus:g} CPUs x wall)")


if __name__ == "__main__":
    main()
