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


def test_pixel_limit_works_both_ways(tmp_path, monkeypatch):
    """Above Pillow's own default guard (~89 MP) when asked, and 0 turns the limit off."""
    from PIL import Image

    big = tmp_path / "big.png"
    Image.new("L", (10000, 10000)).save(big, optimize=False, compress_level=1)  # 100 MP
    # faceetl's default limit (144 MP) lets it through; Pillow's own guard alone refused it
    assert load_image(big).shape == (10000, 10000, 3)
    assert load_image(big, max_pixels=101_000_000).shape == (10000, 10000, 3)
    assert load_image(big, max_pixels=0).shape == (10000, 10000, 3)
    monkeypatch.setenv("FACEETL_MAX_PIXELS", "0")
    assert load_image(big).shape == (10000, 10000, 3)
    monkeypatch.setenv("FACEETL_MAX_PIXELS", "5000")
    with pytest.raises(ImageError, match=r"too large \(10000x10000 > 5000 pixels\)"):
        load_image(big)
    assert Image.MAX_IMAGE_PIXELS is not None  # Pillow's guard is left as it was


def test_non_regular_files_and_links_say_what_they_are(tmp_path):
    import os
    import socket

    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    with pytest.raises(ImageError, match="^not a regular file$"):
        load_image(fifo)  # refused without opening it: opening a FIFO would block
    sock_path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(sock_path))
        with pytest.raises(ImageError, match="^not a regular file$"):
            load_image(sock_path)
    with pytest.raises(ImageError, match="^not a regular file$"):
        load_image("/dev/null")
    loop = tmp_path / "loop.jpg"
    os.symlink(loop, loop)
    with pytest.raises(ImageError, match="^symlink loop$"):
        load_image(loop)
    dangling = tmp_path / "dangling.jpg"
    os.symlink(tmp_path / "nowhere.jpg", dangling)
    with pytest.raises(ImageError, match="^broken symlink$"):
        load_image(dangling)
    with pytest.raises(ImageError, match="^file not found$"):
        load_image(tmp_path / "nowhere.jpg")


def test_non_utf8_names_round_trip(tmp_path):
    import os

    from faceetl.images import file_path, frame_path

    name = os.fsencode(tmp_path) + b"/caf\xe9_\xff.jpg"
    with open(name, "wb") as f:
        f.write(FACE.read_bytes())
    shown = frame_path(name)
    shown.encode("utf-8")  # storable as Arrow text
    assert "\\xe9" in shown and os.fsencode(file_path(shown)) == name
    assert load_image(shown).shape == load_image(FACE).shape
    assert frame_path(str(FACE)) == str(FACE) and file_path(str(FACE)) == str(FACE)
