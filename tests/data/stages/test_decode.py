"""Image decode: JPEGs decoded at a reduced scale (OpenCV, DCT-domain) when at least twice the target, never below
it, pixels as PIL's draft mode gives them, EXIF orientation as PIL applies it, limits checked from the header."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from pipeline.data.stages.align import resize_image
from pipeline.data.stages.decode import Rejected, decode_image, jpeg_scale

LIMIT = 50_000_000


def photo(w: int, h: int, mode: str = "RGB", quality: int = 90, exif: int | None = None) -> bytes:
    """A smooth, photo-like JPEG (gradients and a little noise)."""
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([128 + 100 * np.sin(x / 37 + y / 53), 128 + 90 * np.cos(x / 23 - y / 41),
                    128 + 80 * np.sin((x + y) / 61)], -1) + np.random.default_rng(0).normal(0, 4, (h, w, 3))
    img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).convert(mode)
    buf = io.BytesIO()
    kwargs = {}
    if exif is not None:
        tags = Image.Exif()
        tags[0x0112] = exif
        kwargs["exif"] = tags.tobytes()
    img.save(buf, "JPEG", quality=quality, **kwargs)
    return buf.getvalue()


def pil_draft(data: bytes, target: tuple[int, int]) -> np.ndarray:
    """What decode_image gave before: PIL with draft mode, EXIF-transposed."""
    img = Image.open(io.BytesIO(data))
    img.draft("RGB", target)
    return np.asarray(ImageOps.exif_transpose(img).convert("RGB"))


@pytest.mark.parametrize("size,target,scale", [
    ((683, 512), (224, 224), 2), ((1024, 768), (224, 224), 2), ((1800, 1800), (224, 224), 8),
    ((900, 900), (224, 224), 4), ((447, 447), (224, 224), 1), ((4000, 300), (224, 224), 1),
    ((683, 512), None, 1), ((64, 64), (64, 64), 1)])
def test_reduction_is_the_largest_that_keeps_both_sides_at_or_above_the_target(size, target, scale):
    assert jpeg_scale(size, target) == scale


@pytest.mark.parametrize("w,h", [(683, 512), (1024, 768), (1800, 1350)])
def test_reduced_decode_matches_pil_draft_and_stays_close_to_a_full_decode(w, h):
    data = photo(w, h)
    out = decode_image(data, 16, LIMIT, draft_size=(224, 224))
    scale = jpeg_scale((w, h), (224, 224))
    assert out.dtype == np.uint8 and out.shape == (-(-h // scale), -(-w // scale), 3)
    assert min(out.shape[:2]) >= 224                                     # never below the target
    assert np.abs(out.astype(int) - pil_draft(data, (224, 224))).mean() < 0.5  # measured 0.0: same libjpeg
    full = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    ours, reference = (resize_image(a, (224, 224), "crop").astype(int) for a in (out, full))
    assert np.abs(ours - reference).mean() < 3.0                          # what the model sees: close to full


def test_without_a_target_the_jpeg_decodes_at_full_size():
    data = photo(320, 240)
    out = decode_image(data, 16, LIMIT)
    assert out.shape == (240, 320, 3)
    assert np.abs(out.astype(int) - np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))).mean() < 0.5


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_pil_does(orientation):
    data = photo(120, 80, exif=orientation)
    out = decode_image(data, 16, LIMIT, draft_size=(40, 40))
    expected = pil_draft(data, (40, 40))
    assert out.shape == expected.shape and np.abs(out.astype(int) - expected).mean() < 0.5


def test_greyscale_and_cmyk_jpegs_give_rgb():
    grey = decode_image(photo(200, 150, mode="L"), 16, LIMIT, draft_size=(64, 64))
    assert grey.shape == (75, 100, 3) and (grey[..., 0] == grey[..., 2]).all()
    cmyk = photo(200, 150, mode="CMYK")                                  # through PIL's conversion
    out = decode_image(cmyk, 16, LIMIT, draft_size=(64, 64))
    assert out.shape[2] == 3 and np.abs(out.astype(int) - pil_draft(cmyk, (64, 64))).mean() < 0.5


@pytest.mark.parametrize("cut", [2, 100, 5000])
def test_truncated_jpegs_are_rejected(cut):
    data = photo(683, 512)
    with pytest.raises(Rejected) as e:
        decode_image(data[:-cut], 16, LIMIT, draft_size=(224, 224))
    assert e.value.reason == "image_undecodable"


def test_corrupt_scan_data_is_rejected_or_decoded_never_a_crash():
    data = bytearray(photo(683, 512))
    data[len(data) // 2: len(data) // 2 + 64] = b"\xff" * 64
    try:
        out = decode_image(bytes(data), 16, LIMIT, draft_size=(224, 224))
        assert out.dtype == np.uint8 and out.ndim == 3
    except Rejected as e:
        assert e.reason == "image_undecodable"


def _with_header_size(data: bytes, w: int, h: int) -> bytes:
    """The JPEG with its SOF0 frame header claiming w x h."""
    at = data.index(b"\xff\xc0")
    return data[:at + 5] + h.to_bytes(2, "big") + w.to_bytes(2, "big") + data[at + 9:]


def test_limits_are_checked_from_the_header_before_any_decode():
    bomb = _with_header_size(photo(64, 64), 8000, 8000)                  # 64 M pixels claimed
    with pytest.raises(Rejected) as e:
        decode_image(bomb, 16, LIMIT, draft_size=(224, 224))
    assert e.value.reason == "image_too_large" and "8000x8000" in e.value.detail
    with pytest.raises(Rejected) as e:
        decode_image(photo(300, 12), 16, LIMIT, draft_size=(224, 224))
    assert e.value.reason == "image_too_small"


def test_a_bomb_refused_by_pil_quotes_the_spec_limit_not_pil_s():
    """PIL refuses a header over twice its limit itself, quoting that doubled limit (issue 18: "80M" for a 40M
    spec); the reason says the spec's."""
    from pipeline.data.tools.demo import _png_with_header_size

    with pytest.raises(Rejected) as e:
        decode_image(_png_with_header_size(30_000, 30_000), 16, 40_000_000)
    assert e.value.reason == "image_too_large"
    assert e.value.detail == "900000000 pixels > max_image_pixels 40000000", e.value.detail
