"""The sample contract: which tar member plays which role.

A sample is the group of members sharing a key (``dir/0001.jpg``, ``dir/0001.txt`` -> key ``dir/0001``); the
extension is everything after the first dot of the base name, as in webdataset and Ray. A trailing ``.gz`` means
the member is gzip-compressed and is opened transparently.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

import numpy as np

_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")

# Columns Ray's read_webdataset adds beside the member columns.
KEY_COLUMN, URL_COLUMN = "__key__", "__url__"

# Largest member we are willing to gunzip; larger is treated as a decompression bomb.
MAX_MEMBER_BYTES = 256 * 1024 * 1024


def split_member_name(name: str) -> tuple[str, str] | tuple[None, None]:
    """``dir/0001.txt.gz`` -> (``dir/0001``, ``txt.gz``); names without an extension -> (None, None)."""
    m = _KEY_EXT.match(name)
    return (m.group(1), m.group(2)) if m else (None, None)


def base_extension(ext: str) -> str:
    """``TXT.gz`` -> ``txt``: the role-bearing extension, lower-cased, compression suffix removed."""
    ext = ext.lower()
    return ext[:-3] if ext.endswith(".gz") else ext


@dataclass(frozen=True)
class Member:
    """One role's member of one sample: its bytes, its extension, or why it could not be opened."""
    data: bytes | None = None
    ext: str | None = None
    error: str | None = None

    @property
    def present(self) -> bool:
        return self.data is not None or self.error is not None


def role_columns(columns: list[str], extensions: list[str]) -> list[str]:
    """Member columns of a batch that belong to a role, in the role's extension order."""
    order = {e: i for i, e in enumerate(extensions)}
    hits = [c for c in columns if not c.startswith("__") and base_extension(c) in order]
    return sorted(hits, key=lambda c: (order[base_extension(c)], c))


def pick_members(batch: dict[str, np.ndarray], extensions: list[str]) -> list[Member]:
    """For each row, the first present member among the role's extensions, gunzipped when it ends in .gz."""
    n = len(batch[KEY_COLUMN])
    cols = role_columns(list(batch), extensions)
    out: list[Member] = []
    for i in range(n):
        member = Member()
        for col in cols:
            value = batch[col][i]
            if not isinstance(value, (bytes, bytearray, memoryview)):
                continue  # absent: None, or NaN where pandas filled a missing member
            member = _open(bytes(value), col)
            break
        out.append(member)
    return out


def _open(data: bytes, column: str) -> Member:
    ext = base_extension(column)
    if not column.lower().endswith(".gz"):
        return Member(data=data, ext=ext)
    try:
        return Member(data=gunzip_bounded(data), ext=ext)
    except (OSError, EOFError, zlib.error) as e:
        return Member(ext=ext, error=f"member .{column}: {e}")


def gunzip_bounded(data: bytes, limit: int = MAX_MEMBER_BYTES) -> bytes:
    """Decompress gzip, refusing output beyond ``limit`` bytes (a gzip bomb must not exhaust memory)."""
    out = b""
    while True:  # a .gz file may hold several members, one after another
        d = zlib.decompressobj(wbits=31)
        out += d.decompress(data, limit + 1 - len(out))
        if len(out) > limit:
            raise OSError(f"decompresses to more than {limit} bytes")
        if not d.eof:
            raise EOFError("truncated gzip stream (not valid gzip)")
        data = d.unused_data
        if not data.strip(b"\x00"):
            return out
