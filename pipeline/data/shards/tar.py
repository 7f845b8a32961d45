"""The one tar reader: members and samples of a shard, within limits, for the read path, the shard check, inspect
and the label pass alike.

A shard's bytes may come from anyone, so nothing here allocates by what a header claims: member data over
``member_bytes`` is skipped (the sample is dropped later as ``member_too_large``), extended headers (pax, GNU long
names) over ``header_bytes`` and sparse members end the shard (``header_too_large``, ``sparse_member``), and
gzip-compressed shards are inflated in bounded pieces with their CRCs checked. The format is parsed here rather
than by ``tarfile``, which reads any header whole, inflates sparse members to their full size, and stops quietly
at a corrupt header or a truncated ``.tgz``.

Members are grouped into samples by key (contiguous members share a key, as webdataset and Ray require); each
batch holds ``__key__``, ``__url__`` and one object column per member extension, None where a sample lacks it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np

from pipeline.data.stages.contract import DROP_COLUMN, KEY_COLUMN, URL_COLUMN, split_member_name
from pipeline.data.stages.gunzip import GzipError, gunzip_stream
from pipeline.spec import CleanSpec

log = logging.getLogger(__name__)

BLOCK = 512
_CHUNK = 64 * 1024
_REGULAR = (b"0", b"\x00", b"7")
_NO_DATA = (b"1", b"2", b"3", b"4", b"5", b"6")  # links, devices, directories, fifos: any size field is ignored
_EXTENDED = (b"x", b"X", b"g", b"L", b"K")  # pax (per member, global, Solaris), GNU long name / long link

# Why a shard cannot be read to its end. Only a truncated shard keeps the samples before the damage.
SHARD_FAULTS = ("shard_truncated", "shard_corrupt", "header_too_large", "sparse_member", "sample_split",
                "member_repeated", "extension_reserved")


class ShardFault(ValueError):
    """A shard whose structure is broken or breaks a limit; ``reason`` is one of SHARD_FAULTS."""

    def __init__(self, reason: str, detail: str, key: str | None = None):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail
        self.key = key  # the sample whose member's header was read intact before the damage, if known


@dataclass(frozen=True)
class TarLimits:
    member_bytes: int  # one member's stored bytes (a .gz member's output is held to the same when opened)
    header_bytes: int  # one pax or GNU long-name header
    batch_bytes: int  # member bytes per raw batch: a batch ends early rather than grow past this

    @classmethod
    def from_clean(cls, clean: CleanSpec) -> "TarLimits":
        return cls(clean.max_member_bytes, clean.max_header_bytes, clean.max_batch_bytes)


DEFAULT_LIMITS = TarLimits.from_clean(CleanSpec())


@dataclass
class TarMember:
    name: str
    key: str
    ext: str
    size: int
    data: bytes | None  # None when not wanted or over the limit
    too_large: bool = False


class _Source:
    """Buffered reads with a position; ``skip`` seeks over large spans when the file can seek."""

    def __init__(self, read: Callable[[int], bytes], seek: Callable[[int], object] | None = None):
        self._read, self._seek = read, seek
        self._buf, self._at, self.pos = b"", 0, 0

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes; fewer only at the end."""
        parts, want = [], n
        while want:
            if self._at == len(self._buf):
                self._buf, self._at = self._read(max(_CHUNK, want) if want < (1 << 20) else want), 0
                if not self._buf:
                    break
            part = self._buf[self._at:self._at + want]
            self._at += len(part)
            want -= len(part)
            parts.append(part)
        out = parts[0] if len(parts) == 1 else b"".join(parts)
        self.pos += len(out)
        return out

    def skip(self, n: int) -> bool:
        """Skip ``n`` bytes; False when the data ends first (never known for a seek: the caller checks sizes)."""
        held = min(n, len(self._buf) - self._at)
        self._at += held
        self.pos += held
        n -= held
        if n and self._seek is not None:
            self.pos += n
            self._seek(self.pos)
            self._buf, self._at = b"", 0
            return True
        while n:
            got = len(self.read(min(n, 1 << 20)))
            if not got:
                return False
            n -= got
        return True


def _open_source(stream: BinaryIO, seekable: bool) -> _Source:
    head = stream.read(2)
    if head != b"\x1f\x8b":
        rest = _Source(stream.read, (lambda pos: stream.seek(pos)) if seekable else None)
        rest._buf = head
        return rest
    pieces = gunzip_stream(lambda n, first=[head]: first.pop() + stream.read(n - 2) if first else stream.read(n))
    pending = [b""]

    def read(n: int) -> bytes:
        if not pending[0]:
            try:
                pending[0] = next(pieces, b"")
            except GzipError as e:
                raise ShardFault("shard_truncated" if e.truncated else "shard_corrupt", f"gzip: {e}") from None
        out, pending[0] = pending[0][:n], pending[0][n:]
        return out

    return _Source(read)


def _number(field: bytes, what: str, at: int) -> int:
    if field[:1] == b"\x80":  # GNU base-256 for values too large for octal
        return int.from_bytes(field[1:], "big")
    if field[:1] == b"\xff":
        raise ShardFault("shard_corrupt", f"negative {what} in the tar header at byte {at}")
    text = field.split(b"\x00", 1)[0].strip(b" ")
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise ShardFault("shard_corrupt", f"unreadable tar header at byte {at} ({what} {field!r:.40})") from None


def _text(raw: bytes) -> str:
    return raw.split(b"\x00", 1)[0].decode("utf-8", "replace")


def _parse_header(block: bytes, at: int) -> tuple[str, bytes, int]:
    """(name, type flag, size) of one 512-byte header; ShardFault when its checksum is wrong."""
    stored = _number(block[148:156], "checksum", at)
    unsigned = 256 + sum(block[:148]) + sum(block[156:])
    signed = unsigned - 2 * sum(b for b in block[:148] + block[156:] if b > 127)
    if stored not in (unsigned, signed):
        raise ShardFault("shard_corrupt", f"unreadable tar header at byte {at} (checksum mismatch)")
    name = _text(block[:100])
    if block[257:263] == b"ustar\x00" and block[345]:  # POSIX ustar splits long names into prefix/name
        name = f"{_text(block[345:500])}/{name}"
    return name, block[156:157], _number(block[124:136], "size", at)


def _parse_pax(payload: bytes, at: int) -> dict[str, str]:
    """``LEN key=value\\n`` records of a pax header."""
    out, pos = {}, 0
    while pos < len(payload) and payload[pos:pos + 1] != b"\x00":
        space = payload.find(b" ", pos, pos + 24)
        try:
            length = int(payload[pos:space])
        except ValueError:
            length = 0
        record = payload[pos:pos + length]
        if space < 0 or length <= space - pos or not record.endswith(b"\n") or b"=" not in record:
            raise ShardFault("shard_corrupt", f"malformed pax header at byte {at}")
        key, _, value = record[space - pos + 1:-1].partition(b"=")
        out[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        pos += length
    return out


def iter_members(stream: BinaryIO, limits: TarLimits = DEFAULT_LIMITS, want: Callable[[str], bool] | None = None,
                 size: int | None = None) -> Iterator[TarMember]:
    """Regular members with a key and extension, in order; data read only where ``want(ext)`` (default: all).
    ``size``: the file's byte count when ``stream`` can seek (plain tars are then walked by their headers).
    Raises ShardFault where the archive is damaged or breaks a limit, after the members before the damage."""
    src = _open_source(stream, seekable=size is not None)
    pax: dict[str, str] = {}
    long_name: str | None = None
    while True:
        at = src.pos
        block = src.read(BLOCK)
        if not block and at == 0:
            raise ShardFault("shard_corrupt", "empty file, not a tar archive")
        if len(block) < BLOCK:
            raise ShardFault("shard_truncated", f"ends at byte {src.pos} without an end-of-archive marker"
                             if not block else f"header at byte {at} cut short")
        if not block.strip(b"\x00"):
            return _expect_only_zeros(src)
        name, kind, length = _parse_header(block, at)
        if kind == b"S" or any(k.startswith("GNU.sparse.") for k in pax):
            raise ShardFault("sparse_member", f"{name!r} at byte {at} is a sparse member (refused: it inflates "
                                              "to its declared size)")
        length = int(pax["size"]) if re.fullmatch("[0-9]{1,20}", pax.get("size", "")) else length
        padded = -length % BLOCK
        if kind in _EXTENDED:
            if length > limits.header_bytes:
                raise ShardFault("header_too_large", f"extended header at byte {at} holds {length} bytes > "
                                                     f"clean.max_header_bytes {limits.header_bytes}")
            payload = _read_exact(src, length, at)
            src.skip(padded)
            if kind == b"L":
                long_name = _text(payload)
            elif kind in (b"x", b"X"):
                pax = _parse_pax(payload, at)
            continue
        name = pax.get("path") or long_name or name
        pax, long_name = {}, None
        if kind in _NO_DATA:
            continue
        key, ext = split_member_name(name) if kind in _REGULAR else (None, None)
        cut = ShardFault("shard_truncated", f"member {name!r} at byte {at} cut short" if size is None else
                         f"member {name!r} needs {src.pos + length} bytes, file has {size}", key or "")
        if size is not None and src.pos + length > size:
            raise cut
        if key is None:
            if not src.skip(length + padded):
                raise cut
            continue
        too_large = length > limits.member_bytes
        if too_large or (want is not None and not want(ext)):
            data = None
            if not src.skip(length):
                raise cut
        else:
            data = src.read(length)
            if len(data) < length:
                raise cut
        src.skip(padded)
        yield TarMember(name, key, ext, length, data, too_large)


def _read_exact(src: _Source, n: int, at: int) -> bytes:
    data = src.read(n)
    if len(data) < n:
        raise ShardFault("shard_truncated", f"extended header at byte {at} needs {n} bytes, {len(data)} remain")
    return data


def _expect_only_zeros(src: _Source) -> None:
    """After the end-of-archive block only zeros may follow (reading them also checks a .tgz's CRC)."""
    while chunk := src.read(1 << 20):
        if chunk.strip(b"\x00"):
            raise ShardFault("shard_corrupt", f"unreadable tar header at byte {src.pos - len(chunk)}: data "
                                              "after the end-of-archive marker would be lost")


@dataclass
class TarSample:
    key: str
    members: dict[str, bytes | None] = field(default_factory=dict)
    too_large: list[str] = field(default_factory=list)  # member names over TarLimits.member_bytes
    nbytes: int = 0

    def row(self, url: str, limits: TarLimits) -> dict:
        row = {KEY_COLUMN: self.key, URL_COLUMN: url, **self.members}
        if self.too_large:
            row[DROP_COLUMN] = (f"member_too_large: {', '.join(self.too_large)} over clean.max_member_bytes "
                                f"{limits.member_bytes}")
        return row


def iter_samples(members: Iterator[TarMember]) -> Iterator[TarSample]:
    """Members grouped by key. ShardFault when a sample's members are not contiguous or repeat an extension (one
    would silently replace the other). A sample is yielded once complete: when the next sample's member begins
    (even one cut short), or at the end; so damage loses only the sample it hits."""
    seen: set[str] = set()
    current: TarSample | None = None
    try:
        for m in members:
            if m.ext.startswith("__"):
                raise ShardFault("extension_reserved", f"member {m.name!r}: extensions starting with '__' are "
                                                       "reserved")
            if current is None or m.key != current.key:
                if m.key in seen:
                    raise ShardFault("sample_split", f"members of sample {m.key!r} are not contiguous (at "
                                                     f"{m.name!r}); write each sample's members together, sorted")
                seen.add(m.key)
                if current is not None:
                    yield current
                current = TarSample(m.key)
            if m.ext in current.members:
                raise ShardFault("member_repeated", f"sample {m.key!r} has two .{m.ext} members")
            current.members[m.ext] = m.data
            current.nbytes += len(m.data) if m.data is not None else 0
            if m.too_large:
                current.too_large.append(f"{m.name!r} ({m.size} bytes)")
    except ShardFault as e:
        if e.key is not None and current is not None and e.key != current.key:
            yield current  # the damaged member belongs to a later sample
        raise
    if current is not None:
        yield current


def tar_samples(stream: BinaryIO, url: str, limits: TarLimits = DEFAULT_LIMITS,
                want: Callable[[str], bool] | None = None) -> Iterator[dict]:
    """One row dict per sample: ``{__key__, __url__, <ext>: bytes, ...}``. A truncated shard ends after its last
    complete sample (the shard check reports it, with that count); any other damage raises ShardFault."""
    try:
        for sample in iter_samples(iter_members(stream, limits, want)):
            yield sample.row(url, limits)
    except ShardFault as e:
        if e.reason != "shard_truncated":
            raise ShardFault(e.reason, f"{url}: {e.detail}") from None
        log.warning("%s: %s; the samples before it were read", url, e.detail)


def to_batch(samples: list[dict]) -> dict[str, np.ndarray]:
    """Samples -> object columns, one per member extension in any of them (None where absent)."""
    columns = [KEY_COLUMN, URL_COLUMN] + sorted({c for s in samples for c in s} - {KEY_COLUMN, URL_COLUMN})
    batch = {}
    for c in columns:
        col = np.empty(len(samples), dtype=object)
        col[:] = [s.get(c) for s in samples]
        batch[c] = col
    return batch


def raw_batches(stream: BinaryIO, url: str, size: int, limits: TarLimits = DEFAULT_LIMITS,
                want: Callable[[str], bool] | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Batches of ``size`` samples from one tar stream; a batch ends early once its members hold
    ``limits.batch_bytes``, and the last may be shorter. ``want(ext)``: read only those members' data (the label
    pass reads labels only); the others are skipped, never held."""
    samples: list[dict] = []
    held = 0
    for row in tar_samples(stream, url, limits, want):
        samples.append(row)
        held += sum(len(v) for v in row.values() if isinstance(v, bytes))
        if len(samples) == size or held >= limits.batch_bytes:
            yield to_batch(samples)
            samples, held = [], 0
    if samples:
        yield to_batch(samples)
