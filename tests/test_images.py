"""Decoding at the edge: every odd input becomes RGB uint8 or an ImageError with a reason."""

from __future__ import annotations

import numpy as np
import pytest

from faceetl.images import ImageError, decode_png, encode_png, load_image
from helpers import FACE, IMAGES, make_bad_inputs


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
