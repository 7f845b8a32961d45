"""``python -m pipeline.schedule.wrap CONTROL_DIR ATTEMPT -- CMD...``: run one attempt of a scheduled run and leave
its exit status on disk.

The scheduler that started the run may be gone (``tick`` exits at once, ``serve`` may be killed), so the exit code
cannot be collected with wait(). This wrapper writes ``attempt-N.pid`` when it starts and ``attempt-N.exit`` when
the command ends; a pid file without an exit file and no live process in the run's process group means the attempt
was killed. Standard library only: it starts in milliseconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import datetime, timezone

from pipeline.io import atomic_write_bytes  # standard library only, like this module

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _write(path: str, doc: dict) -> None:
    atomic_write_bytes(path, json.dumps(doc).encode())


def _run(cmd: list[str]) -> int:
    """The command's exit status. A stop request is passed on to it, then the wrapper keeps waiting so the real
    status is recorded; handlers go in before the command starts, so no request falls in between."""
    proc: subprocess.Popen | None = None
    early: list[int] = []

    def forward(signum, _frame):
        if proc is None:
            early.append(signum)
        else:
            proc.send_signal(signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, forward)
    if early:
        return 128 + early[0]  # stopped before it started
    try:
        proc = subprocess.Popen(cmd)
    except OSError as e:
        print(f"mmpipe schedule: cannot start {cmd[0]!r}: {e}", file=sys.stderr, flush=True)
        return 127
    for sig in early:  # arrived while Popen ran
        proc.send_signal(sig)
    return proc.wait()


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--":
        print("usage: python -m pipeline.schedule.wrap CONTROL_DIR ATTEMPT -- CMD...", file=sys.stderr)
        return 2
    control, attempt, cmd = argv[0], int(argv[1]), argv[3:]
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    _write(os.path.join(control, f"attempt-{attempt}.pid"), {"pid": os.getpid(), "started": now, "cmd": cmd})
    rc = _run(cmd)
    _write(os.path.join(control, f"attempt-{attempt}.exit"),
           {"returncode": rc, "ended": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    return 0 if rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
