"""Decode and validate one member of each modality. Each decoder returns its value or raises ``Rejected``.

Checks that need only a header (image dimensions, WAV chunk sizes) run before any full decode, so a
decompression bomb is refused without allocating its pixels.

JPEGs at least 2, 4 or 8 times the target size are decoded at that reduced scale inside the DCT (libjpeg-turbo's
scaled IDCT, through OpenCV: the fastest decoder here, 1.6x PIL's draft mode on a 683x512 photo). The pixels are
those of PIL's draft mode at the same scale; the result is never smaller than the target.
"""

from __future__ import annotations

import io
import re
import struct
import warnings

import cv2
import numpy as np
import soundfile as sf
from PIL import Image, ImageOps, UnidentifiedImageError

# Raster formats we decode. Others PIL knows (EPS runs Ghostscript, for one) are refused whatever the extension.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
# Characters that make a text look non-empty without any content.
_INVISIBLE = dict.fromkeys(map(ord, "\x00\u200b\u200c\u200d\u2060\ufeff"), None)


class Rejected(Exception):
    """A member that fails validation: ``reason`` is a stable drop-reason id, ``detail`` says what exactly."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


def decode_image(data: bytes, min_side: int, max_pixels: int, draft_size: tuple[int, int] | None = None
                 ) -> np.ndarray:
    """Bytes -> uint8 ``(H, W, 3)`` RGB. ``draft_size`` (W, H) lets JPEG decode at a reduced scale, never below it."""
    Image.MAX_IMAGE_PIXELS = max_pixels  # PIL's own bomb guard, at our limit, for formats sized only on load
    try:
        with warnings.catch_warnings():  # over the limit is refused just below, with our reason
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
        w, h = img.size
    except Image.DecompressionBombError as e:
        raise _too_large(e, max_pixels) from None
    except UnidentifiedImageError:
        raise Rejected("image_undecodable", "not a recognised image format") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise Rejected("image_undecodable", str(e)[:200]) from None
    if w * h > max_pixels:
        raise Rejected("image_too_large", f"{w}x{h} = {w * h} pixels > max_image_pixels {max_pixels}")
    if min(w, h) < min_side:
        raise Rejected("image_too_small", f"{w}x{h} < min_image_side {min_side}")
    if img.format == "JPEG" and img.mode in ("RGB", "L"):  # CMYK and YCCK go through PIL's conversion
        return _decode_jpeg(data, img, jpeg_scale((w, h), draft_size))
    try:
        if draft_size and img.format == "JPEG":
            img.draft("RGB", draft_size)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.load()  # the full decode: truncated data fails here
            img = ImageOps.exif_transpose(img) or img
            rgb = _to_rgb(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise _too_large(e, max_pixels) from None
    except (OSError, ValueError, SyntaxError) as e:
        raise Rejected("image_undecodable", str(e)[:200]) from None
    return np.asarray(rgb)


def _too_large(bomb: Exception, max_pixels: int) -> Rejected:
    """PIL's bomb guard, in our words: its message quotes its own limit (twice ours, for an error), not the spec's."""
    found = re.search(r"\((\d+) pixels\)", str(bomb))
    size = f"{found.group(1)} pixels" if found else "the image's size"
    return Rejected("image_too_large", f"{size} > max_image_pixels {max_pixels}")


def jpeg_scale(size: tuple[int, int], target: tuple[int, int] | None) -> int:
    """The reduction (1, 2, 4 or 8) a JPEG of ``size`` (W, H) decodes at: the largest the source is at least that
    many times ``target`` (W, H) on both sides (PIL's draft rule), so the decoded image is never below the target."""
    if not target:
        return 1
    room = min(size[0] // max(1, target[0]), size[1] // max(1, target[1]))
    return next(r for r in (8, 4, 2, 1) if r <= max(room, 1))


# Stages run one per CPU (a Ray read task holds one; DataLoader workers likewise): OpenCV's own thread pool would
# only oversubscribe the cores.
cv2.setNumThreads(1)
# OpenCV's flags per reduction; RGB order (no BGR copy); orientation applied below from the EXIF PIL already read.
_CV2_FLAGS = {r: (flag & ~cv2.IMREAD_COLOR) | cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION
              for r, flag in ((1, cv2.IMREAD_COLOR), (2, cv2.IMREAD_REDUCED_COLOR_2),
                              (4, cv2.IMREAD_REDUCED_COLOR_4), (8, cv2.IMREAD_REDUCED_COLOR_8))}
# EXIF orientation -> the array operation PIL's exif_transpose applies.
_ORIENT = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1),
           7: lambda a: a[::-1, ::-1].transpose(1, 0, 2), 8: lambda a: np.rot90(a, 1)}


def _decode_jpeg(data: bytes, header: Image.Image, scale: int) -> np.ndarray:
    """An RGB or greyscale JPEG whose header passed the limits -> uint8 RGB at 1/``scale``, EXIF-oriented.
    OpenCV refuses truncated and corrupt data (None) where PIL raises."""
    rgb = cv2.imdecode(np.frombuffer(data, np.uint8), _CV2_FLAGS[scale])
    if rgb is None or rgb.ndim != 3:
        raise Rejected("image_undecodable", "JPEG data is truncated or corrupt")
    try:
        orientation = header.getexif().get(0x0112)
    except (OSError, ValueError, SyntaxError) as e:  # as PIL's exif_transpose fails on it in the PIL path
        raise Rejected("image_undecodable", f"EXIF: {str(e)[:200]}") from None
    turn = _ORIENT.get(orientation)
    return np.ascontiguousarray(turn(rgb)) if turn else rgb


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB, scaling 16-bit and float images to 8 bits (PIL's own convert clips them to white)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / hi * 255.0, 0, 255).astype(np.uint8))
    return img.convert("RGB")


def text_byte_limit(max_chars: int) -> int:
    """Bytes a text of ``max_chars`` characters can take in UTF-8 (4 per character, and a BOM)."""
    return 4 * max_chars + 3


def decode_text(data: bytes, max_chars: int) -> str:
    if len(data) > text_byte_limit(max_chars):  # refused before decoding: no string of it is ever built
        raise Rejected("text_too_long", f"{len(data)} bytes: more than max_text_chars {max_chars} characters")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Rejected("text_invalid_utf8", f"byte {e.start}: {e.reason}") from None
    text = text.lstrip("\ufeff")
    if not text.translate(_INVISIBLE).strip():
        raise Rejected("text_empty")
    if len(text) > max_chars:
        raise Rejected("text_too_long", f"{len(text)} characters > max_text_chars {max_chars}")
    return text


def wav_truncation(data: bytes) -> str | None:
    """Why a RIFF/WAVE file is cut short, or None. libsndfile silently decodes a truncated WAV as a shorter clip."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    pos = 12
    while pos + 8 <= len(data):
        chunk, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        if chunk == b"data":
            have = len(data) - pos - 8
            if size != 0xFFFFFFFF and have < size:
                return f"data chunk declares {size} bytes, file holds {have}"
            return None
        pos += 8 + size + (size & 1)
    return "no data chunk"


def decode_audio(data: bytes, min_seconds: float, silence_peak: float, max_seconds: float = float("inf"),
                 max_channels: int = 1 << 16, max_bytes: int = 1 << 62) -> tuple[np.ndarray, int]:
    """Bytes -> (float32 ``(frames, channels)``, sample rate). The format is sniffed from the content (a ``.wav``
    member may hold FLAC), so the limits are checked on what the decoder reports, and decoding itself stops one
    frame past them whatever the header claimed: never more than ``max_bytes`` of samples are allocated."""
    cut = wav_truncation(data)
    if cut:
        raise Rejected("audio_undecodable", f"truncated WAV: {cut}")
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            rate, channels = f.samplerate, f.channels
            if channels > max_channels:
                raise Rejected("audio_too_many_channels", f"{channels} channels > max_audio_channels {max_channels}")
            if rate <= 0:
                raise Rejected("audio_undecodable", f"sample rate {rate}")
            cap = int(min(max_seconds * rate, max_bytes // (4 * channels)))
            wave = f.read(frames=cap + 1, dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, ValueError, TypeError) as e:
        raise Rejected("audio_undecodable", str(e)[:200]) from None
    if len(wave) > cap:
        raise Rejected("audio_too_long", f"more than {cap} frames at {rate} Hz x {channels} channels "
                                         f"(max_audio_seconds {max_seconds:g}, at most {max_bytes} decoded bytes)")
    if not np.isfinite(wave).all():
        raise Rejected("audio_undecodable", "contains NaN or infinite samples")
    seconds = len(wave) / rate
    if seconds < min_seconds:
        raise Rejected("audio_too_short", f"{seconds:.3f}s < min_audio_seconds {min_seconds}")
    peak = float(np.abs(wave).max()) if wave.size else 0.0
    if peak < silence_peak:
        raise Rejected("audio_silent", f"peak {peak:.2e} < silence_peak {silence_peak}")
    return wave, int(rate)
