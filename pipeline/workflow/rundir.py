"""A workflow run directory: run.json, one manifest per step, and each step's outputs in their own folder.

    RUN/run.json              the run: status, steps in order, outcome (registry version, promotion decision)
    RUN/steps/<step>.json     the step's manifest: status, inputs (and their hash), outputs, timings, error
    RUN/<step>/               the step's outputs, present only once complete

A step works in a local folder ``<step>.partial`` and its outputs appear in one move (a directory rename locally;
for a URI, an upload followed by the manifest that marks them complete). Train and tune keep ``.partial`` between
attempts: it holds their Ray checkpoints, so an interrupted training resumes instead of starting over.

One ``mmpipe run`` at a time holds a run directory (``RunDir.lock``): a second would clear the first one's
scratch folders and overwrite its manifests.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import shutil
import socket
from datetime import datetime, timezone
from pathlib import Path

from pipeline import storage
from pipeline.io import atomic_write_bytes

try:
    import fcntl
except ImportError:  # Windows: no flock; URIs are still locked by their lock file
    fcntl = None

RESUMABLE = ("pretrain", "tune", "train")  # steps whose partial work (Ray checkpoints) is worth keeping
LOCK_FILE = "run.lock"  # in the run directory (and in the local cache of a URI's run): who is running it


class RunLocked(RuntimeError):
    """Another mmpipe run holds this run directory; the message names it (pid, host, user, since when)."""


def fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


INPUTS_STAMP = ".inputs_sha256"  # in a step's scratch folder: the inputs its partial work was made from


def output_files(path: Path) -> list[Path]:
    """A step's output files in ``path``, sorted: Ray's own bookkeeping (ray/) and the inputs stamp left out."""
    return sorted(p for p in path.rglob("*") if p.is_file() and p.name != INPUTS_STAMP
                  and "ray" not in p.relative_to(path).parts[:1])


def folder_fingerprint(path: Path) -> str:
    """Names and contents of a step's output files in ``path``."""
    h = hashlib.sha256()
    for file in output_files(path):
        h.update(str(file.relative_to(path)).encode())
        h.update(hashlib.sha256(file.read_bytes()).digest())
    return h.hexdigest()


class RunDir:
    def __init__(self, uri: str, cache: Path | None = None):
        self.uri = uri.rstrip("/")
        if storage.is_local(uri):
            self.work = storage.local_path(uri).resolve()
        else:  # steps run in a local cache and their outputs are uploaded
            self.work = (cache or Path.home() / ".cache" / "mmpipe" / "runs") / fingerprint(self.uri)[:16]
        self.work.mkdir(parents=True, exist_ok=True)

    @property
    def remote(self) -> bool:
        return not storage.is_local(self.uri)

    def uri_of(self, *parts: str) -> str:
        return storage.join(self.uri, *parts)

    # ------------------------------------------------------------ run.json and step manifests

    def read_run(self) -> dict | None:
        uri = self.uri_of("run.json")
        return storage.read_json(uri) if storage.exists(uri) else None

    def write_run(self, run: dict) -> None:
        storage.write_json(self.uri_of("run.json"), run)

    def manifest(self, step: str) -> dict | None:
        uri = self.uri_of("steps", f"{step}.json")
        if not storage.exists(uri):
            return None
        try:
            return storage.read_json(uri)
        except ValueError:  # a manifest that is not JSON marks nothing complete
            return None

    def write_manifest(self, step: str, manifest: dict) -> None:
        storage.write_json(self.uri_of("steps", f"{step}.json"), manifest)

    def mirror_records(self) -> None:
        """run.json and steps/*.json of a URI run directory copied into the local cache (what the report reads)."""
        storage.download_dir(self.uri_of("steps"), self.work / "steps")
        atomic_write_bytes(self.work / "run.json", storage.read_bytes(self.uri_of("run.json")))

    def completed(self, step: str, inputs_sha: str) -> dict | None:
        """The step's manifest when it finished with these very inputs and its outputs are there."""
        m = self.manifest(step)
        if not m or m.get("status") != "succeeded" or m.get("inputs_sha256") != inputs_sha:
            return None
        return m if storage.exists(self.uri_of(step)) or (self.work / step).exists() else None

    # ------------------------------------------------------------ outputs

    def workspace(self, step: str, inputs_sha: str) -> Path:
        """The step's scratch folder. Partial work of tune/train (their Ray checkpoints) is kept only for an attempt
        with the same inputs: a changed spec or new data starts over instead of resuming on the old ones."""
        ws = self.work / f"{step}.partial"
        stamp = ws / INPUTS_STAMP
        reusable = step in RESUMABLE and stamp.exists() and stamp.read_text() == inputs_sha
        if ws.exists() and not reusable:
            shutil.rmtree(ws)  # a half-done evaluation is redone, not trusted
        ws.mkdir(parents=True, exist_ok=True)
        stamp.write_text(inputs_sha)
        return ws

    def commit(self, step: str, ws: Path) -> str:
        """Make ``ws`` the step's outputs in one move; returns their fingerprint."""
        sha = folder_fingerprint(ws)
        final = self.work / step
        if final.exists():
            shutil.rmtree(final)
        ws.rename(final)
        if self.remote:
            storage.upload_dir(final, self.uri_of(step))
        return sha

    def outputs(self, step: str) -> Path:
        """Local folder with a completed step's outputs (downloaded once when the run directory is a URI)."""
        local = self.work / step
        if not local.exists():
            storage.download_dir(self.uri_of(step), local)
        return local

    # ------------------------------------------------------------ one run at a time

    def lock(self) -> "RunLock":
        """Hold this run directory until the returned lock is released (a context manager). Raises RunLocked
        when another run holds it."""
        return RunLock(self).acquire()


def _holder() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "user": getpass.getuser(),
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _describe(holder: dict | None) -> str:
    if not holder:
        return "another process (it has not said which yet)"
    return (f"pid {holder.get('pid')} on {holder.get('host')} (user {holder.get('user')}, since "
            f"{holder.get('since')})")


def _parse(data: bytes) -> dict | None:
    try:
        holder = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    return holder if isinstance(holder, dict) else None


def _gone(holder: dict | None) -> bool:
    """Whether the holder was a process on this machine that no longer runs (its lock is stale)."""
    if not holder or holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


class RunLock:
    """``flock`` on ``run.lock`` in the local folder (released by the kernel when the process dies, so never
    stale), and for a URI also a lock file created exclusively there, naming its holder. A URI's lock left by a
    process of this machine that is gone is taken over; one from another machine must be removed by hand."""

    def __init__(self, run: RunDir):
        self.run = run
        self.fd: int | None = None
        self.uri: str | None = None  # the lock file this process created on the run's URI

    def acquire(self) -> "RunLock":
        self._lock_local()
        try:
            if self.run.remote:
                self._lock_uri()
        except BaseException:
            self.release()
            raise
        return self

    def release(self) -> None:
        if self.uri is not None:
            _remove(self.uri)
            self.uri = None
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            os.close(self.fd)  # releases the flock
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _lock_local(self) -> None:
        if fcntl is None:
            return
        path = self.run.work / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _parse(os.pread(fd, 4096, 0))
            os.close(fd)
            raise RunLocked(f"{self.run.uri} is in use by another mmpipe run: {_describe(holder)}. Two runs on "
                            "one run directory would delete each other's work: wait for it to finish, or use "
                            "another --run-dir.") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_holder()).encode(), 0)
        self.fd = fd

    def _lock_uri(self) -> None:
        uri = self.run.uri_of(LOCK_FILE)
        body = json.dumps(_holder()).encode()
        if storage.create_exclusive(uri, body):
            self.uri = uri
            return
        try:
            holder = _parse(storage.read_bytes(uri))
        except FileNotFoundError:  # released just now
            holder = {}
        # Two processes of this machine on one URI share its local cache folder, whose flock we hold: no other
        # process of this machine can be taking the stale lock over at the same time.
        if holder == {} or _gone(holder):
            if holder:
                _remove(uri)
            if storage.create_exclusive(uri, body):
                self.uri = uri
                return
            holder = _parse(storage.read_bytes(uri))
        raise RunLocked(f"{self.run.uri} is in use by another mmpipe run: {_describe(holder)}. Two runs on one "
                        "run directory would delete each other's work: wait for it to finish, or use another "
                        f"--run-dir. If that run is gone (its machine stopped), delete {uri}.")


def _remove(uri: str) -> None:
    if storage.is_local(uri):
        storage.local_path(uri).unlink(missing_ok=True)
        return
    import fsspec

    fs, path = fsspec.core.url_to_fs(uri)
    try:
        fs.rm(path)
    except FileNotFoundError:
        pass
