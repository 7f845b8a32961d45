"""A hostile-shard corpus: shards crafted to exhaust memory or CPU or to lose data silently, mixed with good
samples; and a clean corpus of the same sample count. Used by tests/data/shards/test_hostile.py and
benchmarks/hostile_memory.py. Every file is small on disk (the whole hostile corpus is a few MB).

    python tests/support/hostile_corpus.py OUT_DIR [--clean]
"""

from __future__ import annotations

import gzip
import io
import struct
import sys
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

CLASSES = ["a", "b"]
SPEC = """\
# mmpipe validate {root}/spec.yaml
data:
  splits: {{train: train/*}}
modalities:
  image: {{size: [16, 16]}}
  text: {{max_tokens: 8}}
  audio: {{sample_rate: 8000, seconds: 0.5}}
label: {{source: cls, classes: [a, b]}}
train: {{epochs: 1, batch_size: 16}}
"""


@dataclass
class Expected:
    """What a correct reader reports: kept keys, dropped keys and their reasons, bad shards and their reasons,
    and for truncated shards how many samples come through."""
    kept: set[str] = field(default_factory=set)
    dropped: dict[str, str] = field(default_factory=dict)
    bad_shards: dict[str, str] = field(default_factory=dict)
    salvaged: dict[str, int] = field(default_factory=dict)

    @property
    def samples(self) -> int:
        return len(self.kept) + len(self.dropped)


def _png(side: int = 32, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _audio(seconds: float = 0.5, rate: int = 8000, channels: int = 1, fmt: str = "WAV", seed: int = 0) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    x = (0.3 * np.sin(2 * np.pi * (300 + 10 * seed) * t) + 0.2).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, np.stack([x] * channels, axis=1), rate, format=fmt, subtype="PCM_16")
    return buf.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims ``width`` x ``height``: a pixel bomb (131 KB solid PNGs behave the same)."""
    png = bytearray(_png(1))
    ihdr = struct.pack(">II", width, height) + bytes(png[24:29])
    png[16:29] = ihdr
    png[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(png)


def good_sample(key: str, i: int) -> list[tuple[str, bytes]]:
    """Content unique to ``key`` (no two good samples are duplicates), label by ``i``."""
    seed = zlib.crc32(key.encode())
    return [(f"{key}.cls", str(i % 2).encode()), (f"{key}.png", _png(seed=seed)),
            (f"{key}.txt", f"样本 {key} sample".encode()), (f"{key}.wav", _audio(seed=i % 7))]


def _write(path: Path, members: list, mode: str = "w") -> None:
    """members: (name, bytes) or ready TarInfo with bytes."""
    with tarfile.open(path, mode, format=tarfile.PAX_FORMAT) as tar:
        for item in members:
            info, data = item if isinstance(item[0], tarfile.TarInfo) else (tarfile.TarInfo(item[0]), item[1])
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _goods(prefix: str, n: int, exp: Expected, start: int = 0) -> list:
    out = []
    for i in range(start, start + n):
        key = f"{prefix}{i:03d}"
        out += good_sample(key, i)
        exp.kept.add(key)
    return out


def write_hostile(root: Path, good_per_shard: int = 12) -> Expected:
    """The hostile corpus under ``root/train`` + ``root/spec.yaml``; returns what a correct read reports."""
    d = root / "train"
    d.mkdir(parents=True, exist_ok=True)
    exp = Expected()
    g = good_per_shard

    # Bad samples among good ones: each dropped with its reason, its neighbours kept.
    hostile = {
        "pixelbomb": ("image_too_large", [("png", _png_claiming(6300, 6300))]),
        "textbomb": ("text_too_long", [("txt.gz", gzip.compress(b"x" * (64 << 20), 1))]),
        "gzstorm": ("image_undecodable", [("png.gz", gzip.compress(b"a" * 4096) * 5000)]),
        "flacinwav": ("audio_too_long", [("wav", _audio(150.0, 16000, fmt="FLAC"))]),
        "channels": ("audio_too_many_channels", [("wav", _audio(0.5, 8000, channels=12))]),
    }
    members = _goods("mixed", g, exp)
    for key, (reason, parts) in hostile.items():
        members += [(f"{key}.cls", b"0")] + [(f"{key}.{ext}", data) for ext, data in parts]
        exp.dropped[key] = reason
    members += _goods("mixed", g, exp, start=g)
    _write(d / "mixed-000.tar", members)

    # A member over max_member_bytes (64 MiB of zeros: 65 KB compressed) in a .tgz: skipped unread.
    members = _goods("big", g, exp) + [("huge.cls", b"1"), ("huge.png", bytes((64 << 20) + 1))]
    exp.dropped["huge"] = "member_too_large"
    _write(d / "big-001.tgz", members + _goods("big", g, exp, start=g), "w:gz")

    # Structure that breaks a limit: the whole shard is bad, with that reason.
    sparse = tarfile.TarInfo("sparse0.png")
    sparse.type = tarfile.GNUTYPE_SPARSE
    with tarfile.open(d / "sparse-002.tar", "w", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(sparse, io.BytesIO(b""))
    exp.bad_shards["sparse-002.tar"] = "sparse_member"
    pax_sparse = tarfile.TarInfo("paxsparse0.png")
    pax_sparse.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.realsize": "400000000"}
    _write(d / "paxsparse-003.tar", _goods("ps", 2, Expected()) + [(pax_sparse, b"\0" * 512)])
    exp.bad_shards["paxsparse-003.tar"] = "sparse_member"
    long_header = tarfile.TarInfo("hdr0.txt")
    long_header.pax_headers = {"comment": "x" * (8 << 20)}
    _write(d / "header-004.tgz", [(long_header, b"hi")], "w:gz")
    exp.bad_shards["header-004.tgz"] = "header_too_large"

    # Silent loss, on main: a corrupt .tgz (CRC), a truncated .tgz and a truncated .tar keep their intact prefix.
    _write(root / "whole.tgz", _goods("crc", 4, Expected()), "w:gz")
    data = bytearray((root / "whole.tgz").read_bytes())
    data[-6] ^= 0xFF  # inside the CRC32/length trailer: every deflate block still decodes
    (d / "corrupt-005.tgz").write_bytes(bytes(data))
    exp.bad_shards["corrupt-005.tgz"] = "shard_corrupt"
    (root / "whole.tgz").unlink()
    for name, mode in (("cut-006.tar", "w"), ("cut-007.tgz", "w:gz")):
        whole = root / f"whole-{name}"
        lost = f"cut{name[4:7]}last"
        _write(whole, _goods(f"cut{name[4:7]}-", g, exp) + good_sample(lost, 99))
        raw = whole.read_bytes()
        cut = raw.index(b"RIFF", raw.index(f"{lost}.wav".encode()))  # inside the last sample's last member
        data = raw[:cut + 200]
        if mode == "w:gz":
            data = gzip.compress(raw)[: len(gzip.compress(raw[:cut + 200])) - 20]  # the stream ends mid-member
        (d / name).write_bytes(data)
        whole.unlink()
        exp.bad_shards[name] = "shard_truncated"
        exp.salvaged[name] = g
    (root / "spec.yaml").write_text(SPEC.format(root=root), encoding="utf-8")
    return exp


def write_good_split(root: Path, split: str, samples: int) -> Expected:
    """``samples`` good samples in one shard under ``root/split`` (e.g. a val split to train against the corpus)."""
    d = root / split
    d.mkdir(parents=True, exist_ok=True)
    exp = Expected()
    _write(d / f"{split}-000.tar", _goods(f"{split}-", samples, exp))
    return exp


def write_clean(root: Path, samples: int, per_shard: int = 24) -> Expected:
    """Good samples only, ``samples`` of them, in shards of ``per_shard``."""
    d = root / "train"
    d.mkdir(parents=True, exist_ok=True)
    exp = Expected()
    for s, start in enumerate(range(0, samples, per_shard)):
        _write(d / f"clean-{s:03d}.tar", _goods("clean", min(per_shard, samples - start), exp, start=start))
    (root / "spec.yaml").write_text(SPEC.format(root=root), encoding="utf-8")
    return exp


if __name__ == "__main__":
    out = Path(sys.argv[1])
    if "--clean" in sys.argv:
        print(write_clean(out, int(sys.argv[sys.argv.index("--clean") + 1])).samples)
    else:
        print(write_hostile(out).samples)
