"""Decoding at the edge: every odd input becomes RGB uint8 or an ImageError with a reason."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import IMAGES
from faceetl.io import ImageError, decode_png, encode_png, load_image

FACE = IMAGES / "single" / "fr_obama_small.jpg"


def make_bad_inputs(folder) -> dict[str, object]:
    """Files of every awkward kind, built from a real photo; name -> path (or expected error)."""
    src = Image.open(FACE).convert("RGB")
    out = {}
    (folder / "zero.jpg").write_bytes(b"")
    out["zero"] = folder / "zero.jpg"
    data = FACE.read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    out["truncated"] = folder / "truncated.jpg"
    (folder / "text.jpg").write_text("this is not an image\n")
    out["text"] = folder / "text.jpg"
    src.convert("L").save(folder / "gray.png")
    out["gray"] = folder / "gray.png"
    rgba = src.convert("RGBA")
    rgba.putalpha(200)
    rgba.save(folder / "rgba.png")
    out["rgba"] = folder / "rgba.png"
    a16 = (np.asarray(src.convert("L"), np.uint16) * 257).astype(np.uint16)
    Image.fromarray(a16).save(folder / "sixteen.png")
    out["sixteen"] = folder / "sixteen.png"
    src.convert("CMYK").save(folder / "cmyk.jpg")
    out["cmyk"] = folder / "cmyk.jpg"
    # stored rotated 90 degrees; the EXIF orientation tag (6 = rotate 90 CW to view) undoes it
    exif = Image.Exif()
    exif[0x0112] = 6
    src.transpose(Image.Transpose.ROTATE_90).save(folder / "exif_rotated.jpg", exif=exif)
    out["exif"] = folder / "exif_rotated.jpg"
    big = folder / "huge.png"
    Image.new("L", (20000, 20000)).save(big, optimize=False, compress_level=1)
    out["huge"] = big
    uni = folder / "visages_été_顔.jpg"
    uni.write_bytes(data)
    out["unicode"] = uni
    out["missing"] = folder / "does_not_exist.jpg"
    return out


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    return make_bad_inputs(tmp_path_factory.mktemp("bad"))


@pytest.mark.parametrize(
    "name,reason",
    [
        ("zero", "empty file"),
        ("truncated", "corrupt"),
        ("text", "not an image"),
        ("missing", "not found"),
        ("huge", "too large"),
    ],
)
def test_bad_files_raise_with_reason(bad, name, reason):
    with pytest.raises(ImageError, match=reason):
        load_image(bad[name])


@pytest.mark.parametrize("name", ["gray", "rgba", "sixteen", "cmyk", "unicode"])
def test_odd_formats_decode_to_rgb8(bad, name):
    ref = load_image(FACE)
    img = load_image(bad[name])
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert img.shape == ref.shape
    # same picture: mean absolute difference from the original is small
    diff = np.abs(img.astype(int).mean(axis=2) - ref.astype(int).mean(axis=2)).mean()
    assert diff < 40, (name, diff)


def test_exif_orientation_applied(bad):
    ref = load_image(FACE)
    img = load_image(bad["exif"])
    assert img.shape == ref.shape  # stored transposed, comes back upright
    assert np.abs(img.astype(int) - ref.astype(int)).mean() < 8


def test_ppm_decodes():
    img = load_image(IMAGES / "landmarks" / "takeo.ppm")
    assert img.shape == (225, 150, 3)


def test_max_pixels_guard_is_configurable():
    with pytest.raises(ImageError, match="too large"):
        load_image(FACE, max_pixels=1000)


def test_png_roundtrip():
    img = load_image(FACE)
    assert np.array_equal(decode_png(encode_png(img)), img)
