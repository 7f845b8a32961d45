"""A workflow run directory: run.json, one manifest per step, and each step's outputs in their own folder.

    RUN/run.json              the run: status, steps in order, outcome (registry version, promotion decision)
    RUN/steps/<step>.json     the step's manifest: status, inputs (and their hash), outputs, timings, error
    RUN/<step>/               the step's outputs, present only once complete

A step works in a local folder ``<step>.partial`` and its outputs appear in one move (a directory rename locally;
for a URI, an upload followed by the manifest that marks them complete). Train and tune keep ``.partial`` between
attempts: it holds their Ray checkpoints, so an interrupted training resumes instead of starting over.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from pipeline import storage

RESUMABLE = ("tune", "train")  # steps whose partial work (Ray checkpoints) is worth keeping


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
