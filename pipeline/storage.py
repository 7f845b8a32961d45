"""Files at a local path or an fsspec URI (s3://, gs://, memory://): read, write whole, create exclusively.

Run directories and the model registry live wherever the user points them; every write here is whole-file: local
files are written aside and renamed (pipeline.io), object stores replace an object in one PUT.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import fsspec

from pipeline.io import atomic_write_bytes


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def local_path(uri: str) -> Path:
    return Path(uri[len("file://"):] if uri.startswith("file://") else uri)


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *parts])


def _fs(uri: str):
    return fsspec.core.url_to_fs(uri)


def exists(uri: str) -> bool:
    if is_local(uri):
        return local_path(uri).exists()
    fs, path = _fs(uri)
    return fs.exists(path)


def read_bytes(uri: str) -> bytes:
    if is_local(uri):
        return local_path(uri).read_bytes()
    fs, path = _fs(uri)
    return fs.cat_file(path)


def read_json(uri: str):
    return json.loads(read_bytes(uri).decode("utf-8"))


def write_bytes(uri: str, data: bytes) -> None:
    if is_local(uri):
        atomic_write_bytes(local_path(uri), data)
        return
    fs, path = _fs(uri)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    fs.pipe_file(path, data)


def write_json(uri: str, obj) -> None:
    write_bytes(uri, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False).encode("utf-8"))


def create_exclusive(uri: str, data: bytes) -> bool:
    """Create ``uri`` holding ``data`` only if it does not exist yet; False when someone else created it first.
    This is the one primitive concurrent writers (two promotions, two registrations) agree through."""
    if is_local(uri):
        path = local_path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written aside in full, then hard-linked into place: link() fails if the name exists, so the file is
        # claimed atomically and never seen half-written.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")  # unique per call and thread
        tmp.write_bytes(data)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
    fs, path = _fs(uri)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    try:
        with fs.open(path, "xb") as f:  # object stores with conditional writes (s3fs, gcsfs) and memory://
            f.write(data)
        return True
    except FileExistsError:
        return False


def listdir(uri: str) -> list[str]:
    """Names (not paths) directly under ``uri``; empty when it does not exist."""
    if is_local(uri):
        path = local_path(uri)
        return sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    fs, path = _fs(uri)
    if not fs.exists(path):
        return []
    return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))


def upload_dir(local: Path, uri: str) -> None:
    """Copy a finished local folder to ``uri`` (file by file; the caller marks completion afterwards)."""
    for file in sorted(p for p in local.rglob("*") if p.is_file()):
        write_bytes(join(uri, *file.relative_to(local).parts), file.read_bytes())


def download_dir(uri: str, local: Path) -> Path:
    if is_local(uri):
        return local_path(uri)
    fs, path = _fs(uri)
    local.mkdir(parents=True, exist_ok=True)
    fs.get(path.rstrip("/") + "/", str(local), recursive=True)
    return local
