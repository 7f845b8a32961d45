"""``mmpipe pack``: a CSV or JSONL manifest of media files -> WebDataset shards per split + manifest.json.

Manifest columns (paths relative to the manifest's folder):
    image      image file                       text       inline text   |  text_path  a UTF-8 text file
    audio      audio file                       label      class name or index (required)
    split      default "train"                  key        sample key (default: the row number)
    meta       a JSON object                    any other column goes into the sample's json member
Media bytes are stored unchanged, under their own extension. A row whose media is missing or unreadable (an image
or audio file no decoder opens, a text file that is not UTF-8) is skipped and reported with its line number, a
reason id (``SKIP_REASONS``) and what exactly; it never stops the run. When rows share a key in a split, the first
in the manifest is packed, whatever order the rows are written in.
"""

from __future__ import annotations

import csv
import random
import re
import json
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.console import PassCount
from pipeline.data.stages.contract import base_extension
from pipeline.data.stages.decode import Rejected, decode_audio, decode_image
from pipeline.data.tools.shardwriter import Sample, ShardWriter
from pipeline.spec import CleanSpec, LabelSpec, ModalitiesSpec

MEDIA_COLUMNS = ("image", "audio", "text_path")
_INTEGER = re.compile(r"-?[0-9]+")
KNOWN_COLUMNS = {"key", "split", "image", "text", "text_path", "audio", "label", "meta"}
# Why a row is skipped (``kind`` of each skipped entry; the CLI prints a count per kind).
SKIP_REASONS = ("row_invalid", "label_invalid", "media_missing", "media_outside", "media_unreadable",
                "image_undecodable", "audio_undecodable", "text_invalid_utf8", "key_invalid", "duplicate_key")


class ManifestError(ValueError):
    """The manifest itself cannot be read (not the rows in it)."""


@dataclass
class PackResult:
    manifest: dict
    skipped: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def default_member_extensions() -> set[str]:
    mods, label = ModalitiesSpec(), LabelSpec()
    return {e for role in mods.enabled() for e in getattr(mods, role).extensions} | \
        set(mods.meta_extensions) | set(label.extensions)


def read_rows(path: Path) -> list[tuple[int, dict]]:
    """(line number, row) pairs from a .csv or .jsonl/.ndjson manifest."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError(f"{path}: cannot read manifest: {e}") from None
    suffix = path.suffix.lower()
    if suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames or "label" not in reader.fieldnames:
            raise ManifestError(f"{path}: CSV header must name a 'label' column (got {reader.fieldnames})")
        rows = []
        for row in reader:
            extra = row.pop(None, None)  # cells beyond the header
            rows.append((reader.line_num, {"__error__": f"{len(extra)} more cell(s) than the header has"}
                         if extra else row))
        return rows
    if suffix in (".jsonl", ".ndjson"):
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    row = {"__error__": f"not valid JSON: {e}"}
                rows.append((number, row if isinstance(row, dict) else {"__error__": "not a JSON object"}))
        return rows
    raise ManifestError(f"{path}: manifest must be .csv or .jsonl, got {suffix or 'no extension'}")


def natural_classes(labels: list[str]) -> list[str]:
    """Class names in a stable order: numerically when all are integers, else alphabetically."""
    unique = set(labels)
    if all(_INTEGER.fullmatch(s) for s in unique):
        return sorted(unique, key=int)
    return sorted(unique)


def cell(row: dict, column: str) -> str:
    """A manifest cell as text; absent and null are empty, 0 is "0"."""
    value = row.get(column)
    return "" if value is None else str(value).strip()


class RowSkipped(Exception):
    def __init__(self, message: str, kind: str = "row_invalid"):
        super().__init__(message)
        self.kind = kind


def _read_media(base: Path, value: str, column: str, allow_outside: bool = False) -> tuple[bytes, str]:
    path = base / value
    # A published dataset must not carry files from outside its source folder (an absolute path, '..' or a
    # symlink in someone else's manifest could name ~/.ssh/id_rsa): resolved, the file must stay under ``base``.
    if not allow_outside and not path.resolve().is_relative_to(base.resolve()):
        raise RowSkipped(f"{column} file {value!r} lies outside the manifest's folder (absolute path, '..' or a "
                         "symlink leading out); pack reads it only with --allow-outside", "media_outside")
    ext = "".join(path.suffixes[-2:]).lower().lstrip(".") if path.suffix.lower() == ".gz" else \
        path.suffix.lower().lstrip(".")
    if not ext or ext == "gz":
        raise RowSkipped(f"{column} file {value!r} has no extension (it decides the member type)")
    try:
        return path.read_bytes(), ext
    except FileNotFoundError:
        raise RowSkipped(f"{column} file not found: {value}", "media_missing") from None
    except OSError as e:
        raise RowSkipped(f"{column} file unreadable: {value}: {e.strerror or e}", "media_unreadable") from None


def check_media(column: str, value: str, ext: str, data: bytes) -> None:
    """Refuse media no decoder reads (a corrupt JPEG, a truncated PNG or WAV, a text file not UTF-8): packed, they
    would only surface later as dropped rows. Whether a readable file suits a spec (sizes, durations, silence) is
    for clean to say, with that spec's limits; gzipped members are checked there too."""
    if ext.endswith("gz"):
        return
    try:
        if column == "image":
            h, w = ModalitiesSpec().image.size
            decode_image(data, 1, CleanSpec().max_image_pixels, draft_size=(w, h))
        elif column == "audio":
            decode_audio(data, 0.0, 0.0)
        elif column == "text_path":
            data.decode("utf-8")
    except Rejected as e:
        if e.reason.endswith("_undecodable"):
            raise RowSkipped(f"{column} file {value!r} is unreadable ({e})", e.reason) from None
    except UnicodeDecodeError as e:
        raise RowSkipped(f"text_path file {value!r} is not UTF-8 (byte {e.start}: {e.reason})",
                         "text_invalid_utf8") from None


def check_key(key: str) -> str:
    """A sample key becomes member names as written: it must stay relative and inside the archive."""
    parts = key.replace("\\", "/").split("/")
    if key.startswith(("/", "\\")) or ".." in parts or "\x00" in key or (len(key) > 1 and key[1] == ":"):
        raise RowSkipped(f"key {key!r} is absolute or contains '..': it would become a member name as written",
                         "key_invalid")
    return key


def row_to_sample(row: dict, line: int, base: Path, classes: list[str], allow_outside: bool = False
                  ) -> tuple[str, Sample]:
    """(split, Sample) for one manifest row; raises RowSkipped with the reason."""
    if "__error__" in row:
        raise RowSkipped(row["__error__"], row.get("__kind__", "row_invalid"))
    label = cell(row, "label")
    if not label:
        raise RowSkipped("label is empty", "label_invalid")
    if label in classes:
        index = classes.index(label)
    elif _INTEGER.fullmatch(label) and 0 <= int(label) < len(classes):
        index = int(label)
    else:
        raise RowSkipped(f"label {label!r} is neither a class name nor an index of {classes}", "label_invalid")
    members: dict[str, bytes] = {}
    for column in MEDIA_COLUMNS:
        if cell(row, column):
            data, ext = _read_media(base, cell(row, column), column, allow_outside)
            check_media(column, cell(row, column), ext, data)
            if column == "text_path":
                ext = "txt.gz" if ext.endswith(".gz") else "txt"
            members[ext] = data
    if cell(row, "text"):
        members["txt"] = str(row["text"]).encode("utf-8")
    if not members:
        raise RowSkipped("no image, text, text_path or audio")
    meta = {k: v for k, v in row.items() if k not in KNOWN_COLUMNS and v not in (None, "")}
    if row.get("meta"):
        extra = row["meta"] if isinstance(row["meta"], dict) else _json_object(row["meta"])
        meta.update(extra)
    if meta:
        members["json"] = json.dumps(meta, ensure_ascii=False, sort_keys=True).encode("utf-8")
    members["cls"] = str(index).encode()
    return cell(row, "split") or "train", Sample(check_key(sample_key(row, line)), members, index)


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise RowSkipped(f"meta is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise RowSkipped("meta is not a JSON object")
    return value


def sample_key(row: dict, line: int) -> str:
    return cell(row, "key") or f"{line:08d}"


def mark_duplicate_keys(rows: list[tuple[int, dict]]) -> None:
    """Rows (in manifest order) whose split already has their key become errors naming the first row: the first
    row wins whatever order the rows are then written in (shuffled by seed)."""
    first: dict[tuple[str, str], int] = {}
    for line, row in rows:
        if "__error__" in row:
            continue
        where = (cell(row, "split") or "train", sample_key(row, line))
        if where in first:
            row.clear()
            row["__error__"] = f"duplicate sample key {where[1]!r} in split {where[0]!r} (first on line " \
                               f"{first[where]}, which is kept)"
            row["__kind__"] = "duplicate_key"
        else:
            first[where] = line


def pack_manifest(manifest: str | Path, out_dir: str | Path, classes: list[str] | None = None,
                  max_shard_bytes: int = 256 * 1024 ** 2, max_shard_samples: int | None = None,
                  progress: bool = True, overwrite: bool = False, shuffle_seed: int | None = 0,
                  allow_outside: bool = False) -> PackResult:
    """``allow_outside``: also read media outside the manifest's folder (absolute paths, '..', symlinks leading
    out); off by default. ``progress``: show the rows packed on the command's view (``console.current()``: a bar
    on a terminal, one closing line elsewhere, nothing outside the command line). ``shuffle_seed``: rows are written in a seeded random order (None keeps the manifest's order). Manifests
    are often sorted by class, and a shard holding one class makes every streamed batch nearly single-class."""
    manifest = Path(manifest)
    rows = read_rows(manifest)
    mark_duplicate_keys(rows)
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(rows)
    if classes is None:
        classes = natural_classes([cell(r, "label") for _, r in rows if cell(r, "label")])
    if len(classes) < 2:
        raise ManifestError(f"{manifest}: need at least 2 classes, found {classes}")
    writer = ShardWriter(out_dir, max_shard_bytes, max_shard_samples, overwrite=overwrite)
    skipped: list[dict] = []
    unusual: dict[str, int] = {}
    known = default_member_extensions()
    shown = PassCount("packing", len(rows)) if progress else None  # the command's view: a bar, or one line
    for line, row in rows:  # skipped: by line number
        if shown is not None:
            shown.add(1)
        try:
            split, sample = row_to_sample(row, line, manifest.parent, classes, allow_outside)
            writer.write(split, sample)
        except RowSkipped as e:
            skipped.append({"line": line, "kind": e.kind, "reason": str(e)})
            continue
        except ValueError as e:  # the writer's: a split or key that cannot name a file
            skipped.append({"line": line, "kind": "key_invalid", "reason": str(e)})
            continue
        for ext in sample.members:
            if base_extension(ext) not in known:
                unusual[ext] = unusual.get(ext, 0) + 1
    writer.close()
    if shown is not None:
        shown.finish(f" ({len(skipped):,} skipped)" if skipped else "")
    skipped.sort(key=lambda s: s["line"])
    warnings = [f"{n} sample(s) have .{ext} members, which no modality reads by default; add the extension to "
                "the spec's modalities.<role>.extensions or convert the files" for ext, n in sorted(unusual.items())]
    result = writer.write_manifest(classes, source=str(manifest), skipped=skipped, warnings=warnings)
    return PackResult(result, skipped, warnings)


def skip_counts(skipped: list[dict]) -> dict[str, int]:
    """Skipped rows per reason id, most frequent first."""
    counts: dict[str, int] = {}
    for s in skipped:
        counts[s.get("kind", "row_invalid")] = counts.get(s.get("kind", "row_invalid"), 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
