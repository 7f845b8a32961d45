"""Streaming gzip that hostile input cannot turn into a memory or CPU bomb.

Used for ``.gz`` members and for ``.tgz`` shards alike. Time and memory are linear in the output: input is fed
in bounded chunks (a file of 10,000 tiny gzip members costs 10,000 small steps, never a copy of the rest of the
buffer per member) and output is produced in bounded pieces. Every gzip member's CRC and length are checked
(zlib does it for ``wbits=31``), a stream that ends inside a member is an error, and so is anything after the
last member other than zero padding.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator

# Compressed bytes handed to zlib per step: keeps the per-member remainder copy (``unused_data``) small.
_FEED = 64 * 1024


class GzipError(ValueError):
    """Not gzip, corrupt (CRC, length, deflate data) or truncated. ``truncated`` tells the last apart."""

    def __init__(self, message: str, truncated: bool = False):
        super().__init__(message)
        self.truncated = truncated


def gunzip_stream(read: Callable[[int], bytes], piece: int = 1 << 20) -> Iterator[bytes]:
    """Decompressed pieces of at most ``piece`` bytes from ``read(n)`` (a file's read; b"" at the end)."""
    pending = read(_FEED)
    if not pending:
        raise GzipError("empty gzip stream", truncated=True)
    while True:  # one gzip member per turn
        if pending[:2] != b"\x1f\x8b":
            raise GzipError("not gzip data (bad magic bytes)")
        d = zlib.decompressobj(wbits=31)
        while not d.eof:
            try:
                out = d.decompress(pending, piece)
            except zlib.error as e:
                raise GzipError(f"corrupt gzip data: {e}") from None
            pending = d.unconsumed_tail
            if out:
                yield out
            if not pending and not d.eof:
                pending = read(_FEED)
                if not pending:
                    raise GzipError("gzip stream truncated (ends inside a member)", truncated=True)
        pending = d.unused_data or read(_FEED)
        while pending and not pending.strip(b"\x00"):  # zero padding after the last member (tape blocking)
            pending = read(_FEED)
            if not pending:
                return
        if not pending:
            return
        if pending[0] == 0:
            raise GzipError("data after the zero padding that ends the gzip stream")


def gunzip_bytes(data: bytes, limit: int) -> bytes:
    """All of ``data`` decompressed; GzipError beyond ``limit`` output bytes, before producing more than that."""
    view, pos = memoryview(data), 0

    def read(n: int) -> bytes:
        nonlocal pos
        chunk = bytes(view[pos:pos + n])
        pos += len(chunk)
        return chunk

    parts, total = [], 0
    for part in gunzip_stream(read, piece=min(1 << 20, limit + 1)):
        total += len(part)
        if total > limit:
            raise OutputTooLarge(f"decompresses to more than {limit} bytes")
        parts.append(part)
    return b"".join(parts)


class OutputTooLarge(ValueError):
    """A gzip member whose output exceeds the limit it was opened with."""
