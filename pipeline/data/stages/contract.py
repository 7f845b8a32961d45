"""The sample contract: which tar member plays which role.

A sample is the group of members sharing a key (``dir/0001.jpg``, ``dir/0001.txt`` -> key ``dir/0001``); the
extension is everything after the first dot of the base name, as in webdataset and Ray. A trailing ``.gz`` means
the member is gzip-compressed and is opened transparently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from pipeline.data.stages.gunzip import GzipError, OutputTooLarge, gunzip_bytes
from pipeline.spec import CleanSpec

_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")

# Columns Ray's read_webdataset adds beside the member columns.
KEY_COLUMN, URL_COLUMN = "__key__", "__url__"
# Set by the tar reader on a sample it could not read whole: "reason: detail" (e.g. a member over the size limit).
DROP_COLUMN = "__dropped__"

# Largest member we gunzip unless told otherwise; larger output is treated as a decompression bomb.
MAX_MEMBER_BYTES = CleanSpec().max_member_bytes


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
    """One role's member of one sample: its bytes, its extension, or why it could not be opened (``reason``: the
    drop reason that says so, when it is not the role's ``<role>_undecodable``)."""
    data: bytes | None = None
    ext: str | None = None
    error: str | None = None
    reason: str | None = None

    @property
    def present(self) -> bool:
        return self.data is not None or self.error is not None


def role_columns(columns: list[str], extensions: list[str]) -> list[str]:
    """Member columns of a batch that belong to a role, in the role's extension order."""
    order = {e: i for i, e in enumerate(extensions)}
    hits = [c for c in columns if not c.startswith("__") and base_extension(c) in order]
    return sorted(hits, key=lambda c: (order[base_extension(c)], c))


def pick_members(batch: dict[str, np.ndarray], extensions: list[str], limit: int = MAX_MEMBER_BYTES,
                 over: str = "member_too_large") -> list[Member]:
    """For each row, the first present member among the role's extensions (see ``pick_member``)."""
    cols = role_columns(list(batch), extensions)
    return [pick_member(batch, cols, i, limit, over) for i in range(len(batch[KEY_COLUMN]))]


def pick_member(batch: dict[str, np.ndarray], cols: list[str], i: int, limit: int = MAX_MEMBER_BYTES,
                over: str = "member_too_large") -> Member:
    """Row ``i``'s first present member among ``cols`` (from ``role_columns``), gunzipped when it ends in .gz; a
    member inflating past ``limit`` bytes is refused with reason ``over`` before more is produced. One row at a
    time, so a batch never holds more than one sample's inflated members."""
    for col in cols:
        value = batch[col][i]
        if isinstance(value, (bytes, bytearray, memoryview)):  # else absent: None, or NaN where pandas filled one
            return _open(bytes(value), col, limit, over)
    return Member()


def _open(data: bytes, column: str, limit: int, over: str) -> Member:
    ext = base_extension(column)
    if not column.lower().endswith(".gz"):
        return Member(data=data, ext=ext)
    try:
        return Member(data=gunzip_bytes(data, limit), ext=ext)
    except OutputTooLarge as e:
        return Member(ext=ext, error=f"member .{column}: {e}", reason=over)
    except GzipError as e:
        return Member(ext=ext, error=f"member .{column}: {e}")

