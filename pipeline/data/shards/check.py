"""Find shards (paths, globs, brace patterns, fsspec URIs) and check each one is a readable tar before Ray reads it.

Ray's ``read_webdataset`` fails the whole dataset on one truncated tar or one sample whose members are split
apart, so every shard is checked first (in parallel threads; uncompressed tars only by their headers, which is
cheap) and bad ones are reported by path and left out, or fail the job when the spec says so.
"""

from __future__ import annotations

import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import fsspec
from braceexpand import braceexpand

from pipeline.data.stages.contract import split_member_name

SHARD_SUFFIXES = (".tar", ".tgz", ".tar.gz")
_GLOB_CHARS = set("*?[")


class ShardError(RuntimeError):
    """No usable shards, or a bad shard where the spec says to fail."""


@dataclass(frozen=True)
class ShardCheck:
    path: str
    samples: int = 0
    bytes: int = 0
    error: str | None = None


def is_compressed(path: str) -> bool:
    return path.lower().endswith((".tgz", ".gz"))


def _expand_one(pattern: str) -> list[str]:
    fs, path = fsspec.core.url_to_fs(pattern)
    if _GLOB_CHARS & set(path):
        found = sorted(fs.glob(path))
    elif fs.isdir(path):
        found = sorted(p for p in fs.find(path) if p.lower().endswith(SHARD_SUFFIXES))
    elif fs.exists(path):
        found = [path]
    else:
        raise ShardError(f"shard not found: {pattern}")
    if not found:
        raise ShardError(f"no shards match {pattern}")
    return [pattern if p == path else fs.unstrip_protocol(p) if "://" in pattern else p for p in found]


def expand_shards(patterns: list[str]) -> list[str]:
    """Every shard named by the patterns, in order, without repeats. Raises ShardError for one that matches none."""
    out: dict[str, None] = {}
    for pattern in patterns:
        for concrete in braceexpand(pattern):
            out.update(dict.fromkeys(_expand_one(concrete)))
    return list(out)


def _walk_members(tar: tarfile.TarFile, path: str) -> int:
    """Count samples; raise ValueError when a sample's members are not contiguous or repeat an extension."""
    seen: set[str] = set()
    current, exts = None, set()
    for info in tar:
        if not info.isreg():
            continue
        key, ext = split_member_name(info.name)
        if key is None:
            continue
        if ext.startswith("__"):
            raise ValueError(f"member {info.name!r}: extensions starting with '__' are reserved")
        if key != current:
            if key in seen:
                raise ValueError(f"members of sample {key!r} are not contiguous (at {info.name!r}); "
                                 "write each sample's members together, sorted")
            seen.add(key)
            current, exts = key, set()
        if ext in exts:
            raise ValueError(f"sample {key!r} has two .{ext} members")
        exts.add(ext)
    return len(seen)


def _check_only_zeros_after(f, offset: int, size: int) -> None:
    """tarfile stops quietly at a corrupt header; what follows the last member must be end-of-archive zeros."""
    f.seek(offset)
    while chunk := f.read(1 << 20):
        if chunk.strip(b"\x00"):
            raise tarfile.ReadError(f"unreadable tar header at byte {offset}; {size - offset} bytes after it "
                                    "would be lost")
        offset += len(chunk)


def check_shard(path: str) -> ShardCheck:
    """Open and walk one shard. Plain tars are walked by headers (seeks); compressed ones are fully decompressed."""
    try:
        fs, fpath = fsspec.core.url_to_fs(path)
        size = fs.size(fpath)
        with fs.open(fpath, "rb") as f:
            if is_compressed(path):
                if f.read(2) != b"\x1f\x8b":
                    raise tarfile.ReadError("named as gzip-compressed but is not gzip (rename it .tar)")
                f.seek(0)
                with tarfile.open(fileobj=f, mode="r|gz") as tar:
                    samples = _walk_members(tar, path)
            else:
                with tarfile.open(fileobj=f, mode="r:") as tar:
                    samples = _walk_members(tar, path)
                    last = tar.members[-1] if tar.members else None
                    if last is not None and last.offset_data + last.size > size:
                        raise tarfile.ReadError(f"truncated: member {last.name!r} needs "
                                                f"{last.offset_data + last.size} bytes, file has {size}")
                    _check_only_zeros_after(f, tar.offset, size)
    except (OSError, EOFError, tarfile.TarError, ValueError) as e:
        return ShardCheck(path, error=f"{type(e).__name__}: {e}"[:300])
    return ShardCheck(path, samples=samples, bytes=size)


def check_shards(paths: list[str], threads: int = 8) -> list[ShardCheck]:
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(paths)))) as pool:
        return list(pool.map(check_shard, paths))
