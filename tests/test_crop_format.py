"""Crops as PNG (default), JPEG or WebP: bytes, files, and the setting stored with the output."""

from __future__ import annotations

import dask
import numpy as np
import pytest

import faceetl
from faceetl.images import decode_png, parse_crop_format
from faceetl.pife import SettingsError
from helpers import IMAGES

PHOTO = str(IMAGES / "single" / "fr_obama_small.jpg")
MAGIC = {"png": b"\x89PNG", "jpeg": b"\xff\xd8\xff", "webp": b"RIFF"}


def test_formats_parse_and_unknown_ones_fail_early():
    assert parse_crop_format("png") == ("png", None)
    assert parse_crop_format("JPG:80") == ("jpeg", 80)
    assert parse_crop_format("webp") == ("webp", 90)
    for bad in ("gif", "png:90", "jpeg:0", "webp:102"):
        with pytest.raises(ValueError):
            parse_crop_format(bad)
    with pytest.raises(ValueError, match="unknown crop format"):
        faceetl.extract_faces([PHOTO], backend="opencv", crop_format="tiff")
    with pytest.raises(ValueError, match="unknown crop format"):
        faceetl.Pife("opencv", crop_format="bmp")


@pytest.mark.parametrize("fmt", ["jpeg", "jpeg:70", "webp", "webp:101"])
def test_crop_bytes_and_files_in_each_format(tmp_path, fmt):
    with dask.config.set(scheduler="sync"):
        png = faceetl.extract_faces([PHOTO], backend="opencv").compute()
        got = faceetl.extract_faces(
            [PHOTO], backend="opencv", crop_format=fmt, crop_dir=tmp_path, crop_root=IMAGES
        ).compute()
    name = parse_crop_format(fmt)[0]
    data = bytes(got["crop"].iloc[0])
    assert data.startswith(MAGIC[name])
    ext = {"jpeg": ".jpg", "webp": ".webp"}[name]
    assert got["crop_path"].iloc[0].endswith(f".face0{ext}")
    with open(got["crop_path"].iloc[0], "rb") as f:
        assert f.read() == data
    diff = np.abs(decode_png(data).astype(int) - decode_png(bytes(png["crop"].iloc[0])).astype(int))
    if fmt == "webp:101":
        assert diff.max() == 0  # lossless
    else:
        assert 0 < diff.mean() < (6 if fmt == "jpeg:70" else 4)  # measured 5.1 at q70
    if fmt == "jpeg:70":
        assert len(data) < len(bytes(png["crop"].iloc[0])) / 2


def test_pife_stores_the_crop_format_and_refuses_another(tmp_path):
    out = tmp_path / "out"
    with dask.config.set(scheduler="threads"):
        faces = faceetl.Pife("opencv", 1, progress=False, crop_format="jpeg:80").extract(
            [PHOTO], out
        )
        assert faces["crop_path"].compute().iloc[0].endswith(".jpg")
        with pytest.raises(SettingsError, match=r"crop_format: 'jpeg:80' -> 'png'"):
            faceetl.Pife("opencv", 1, progress=False).extract([PHOTO], out)
