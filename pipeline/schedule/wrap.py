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
import tempfile
from datetime import datetime, timezone


def _write(path: str, doc: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".wrap.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--":
        print("usage: python -m pipeline.schedule.wrap CONTROL_DIR ATTEMPT -- CMD...", file=sys.stderr)
        return 2
    control, attempt, cmd = argv[0], int(argv[1]), argv[3:]
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    _write(os.path.join(control, f"attempt-{attempt}.pid"), {"pid": os.getpid(), "started": now, "cmd": cmd})
    try:
        proc = subprocess.Popen(cmd)
    except OSError as e:
        print(f"mmpipe schedule: cannot start {cmd[0]!r}: {e}", file=sys.stderr, flush=True)
        rc = 127
    else:
        # Pass a stop request on to the command, then keep waiting so its real exit status is recorded.
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda s, _f: proc.send_signal(s))
        rc = proc.wait()
    _write(os.path.join(control, f"attempt-{attempt}.exit"),
           {"returncode": rc, "ended": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    return 0 if rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
