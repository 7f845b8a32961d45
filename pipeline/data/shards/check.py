"""Find shards (paths, globs, brace patterns, fsspec URIs) and check each one is a readable tar before Ray reads it.

A read task fails on a damaged shard, so every shard is checked first (in parallel threads; uncompressed tars only
by their headers, which is cheap) with the same member iterator and limits the read uses, and bad ones are
reported by path and reason and left out, or fail the job when the spec says so. A truncated shard is reported
too, but its complete samples before the damage are kept.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import fsspec
from braceexpand import braceexpand

from pipeline.data.shards.tar import DEFAULT_LIMITS, ShardFault, TarLimits, iter_members, iter_samples

SHARD_SUFFIXES = (".tar", ".tgz", ".tar.gz")
_GLOB_CHARS = set("*?[")


class ShardError(RuntimeError):
    """No usable shards, or a bad shard where the spec says to fail."""


@dataclass(frozen=True)
class ShardCheck:
    """One shard's check. ``reason``: the shard fault (tar.SHARD_FAULTS, or shard_unreadable) when ``error`` is
    set. A truncated shard is still ``usable``: its ``samples`` complete samples before the damage are read."""
    path: str
    samples: int = 0
    bytes: int = 0
    error: str | None = None
    reason: str | None = None

    @property
    def usable(self) -> bool:
        return self.error is None or self.reason == "shard_truncated"


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


def check_shard(path: str, limits: TarLimits = DEFAULT_LIMITS) -> ShardCheck:
    """Walk one shard with the reader's own member iterator and limits. Plain tars are walked by their headers
    (seeks); compressed ones are inflated in bounded pieces to their end, which also checks every gzip CRC."""
    samples = 0
    try:
        fs, fpath = fsspec.core.url_to_fs(path)
        size = fs.size(fpath)
        with fs.open(fpath, "rb") as f:
            compressed = is_compressed(path)
            if compressed and f.read(2) != b"\x1f\x8b":
                raise ShardFault("shard_corrupt", "named as gzip-compressed but is not gzip (rename it .tar)")
            f.seek(0)
            for _ in iter_samples(iter_members(f, limits, want=_NOTHING, size=None if compressed else size)):
                samples += 1
    except ShardFault as e:
        if e.reason == "shard_truncated":
            return ShardCheck(path, samples=samples, bytes=size, reason=e.reason,
                              error=f"truncated: {e.detail}; the {samples} complete samples before it are read"[:300])
        return ShardCheck(path, reason=e.reason, error=f"{e.reason}: {e.detail}"[:300])
    except (OSError, EOFError, ValueError) as e:
        return ShardCheck(path, reason="shard_unreadable", error=f"{type(e).__name__}: {e}"[:300])
    return ShardCheck(path, samples=samples, bytes=size)


def _NOTHING(ext: str) -> bool:
    return False


def check_shards(paths: list[str], threads: int = 8, limits: TarLimits = DEFAULT_LIMITS) -> list[ShardCheck]:
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(paths)))) as pool:
        return list(pool.map(lambda p: check_shard(p, limits), paths))
