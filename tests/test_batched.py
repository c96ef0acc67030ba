"""The device data path's operations, checked on CPU tensors against the cv2/PIL path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from faceetl import align
from faceetl.backends.base import get_backend
from faceetl.batched import _orient, decode_jpegs, pad_batch, warp_faces
from faceetl.images import load_image
from helpers import IMAGES, bad_input_files, decoded_pairs

PHOTOS = sorted((IMAGES / "group").glob("*.jpg"))[:4] + sorted((IMAGES / "single").glob("*.jpg"))


@pytest.fixture(scope="module")
def faces():
    """Real faces of photos of different sizes: images, image index, transforms per template."""
    det = get_backend("retinaface")
    images = [load_image(p) for p in PHOTOS]
    index, boxes, lms = [], [], []
    for k, d in enumerate(det.detect_batch(images)):
        index += [k] * len(d)
        boxes += list(d.boxes)
        lms += list(d.landmarks)
    assert len(index) >= 15
    return images, index, boxes, lms


@pytest.mark.parametrize("template,size", [("arcface", 112), ("dlib", 150), ("arcface", 224)])
def test_one_batched_warp_equals_cv2_crops(faces, template, size):
    images, index, boxes, lms = faces
    spec = align.AlignSpec(template, size)
    mats = [align.estimate_transform(lm, b, spec)[0] for lm, b in zip(lms, boxes, strict=True)]
    canvas, sizes = pad_batch(images)
    assert sizes.tolist() == [list(im.shape[:2]) for im in images]
    got = warp_faces(canvas, index, mats, size, chunk=7).permute(0, 2, 3, 1).numpy()
    want = np.stack([align.warp(images[i], m, size) for i, m in zip(index, mats, strict=True)])
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    # cv2 samples at 1/32 pixel with fixed-point weights, grid_sample in float: measured on
    # these 3 templates/sizes: max 4/255, mean 0.070-0.073/255
    assert diff.max() <= 4 and diff.mean() < 0.08, (diff.max(), diff.mean())


def test_warp_reads_zeros_outside_the_image_like_cv2():
    img = np.full((40, 60, 3), 200, np.uint8)
    m = np.array([[1.0, 0.0, 30.0], [0.0, 1.0, 20.0]])  # shifted: the crop's corner is outside
    canvas, _ = pad_batch([img, np.zeros((80, 90, 3), np.uint8)])  # padded to 80x90
    got = warp_faces(canvas, [0], [m], 64)[0].permute(1, 2, 0).numpy()
    want = align.warp(img, m, 64)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    assert got[:20].max() == 0 and got[25:55, 35:85].min() == 200


def test_no_faces_gives_an_empty_batch():
    canvas, _ = pad_batch([np.zeros((10, 10, 3), np.uint8)])
    assert warp_faces(canvas, [], np.zeros((0, 2, 3)), 112).shape == (0, 3, 112, 112)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pil(orientation):
    rng = np.random.default_rng(orientation)
    a = rng.integers(0, 255, (5, 7, 3), dtype=np.uint8)
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = orientation
    im.info["exif"] = exif.tobytes()
    want = np.asarray(ImageOps.exif_transpose(im))
    got = _orient(torch.from_numpy(a).permute(2, 0, 1), orientation).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(got, want)


def test_decode_loses_no_image(tmp_path):
    """Every input comes back decoded (as the CPU decoder decodes it) or as its ImageError."""
    paths = [*bad_input_files(tmp_path), *PHOTOS[:2]]
    for p, g, want in decoded_pairs(paths, decode_jpegs([p.read_bytes() for p in paths], "cpu")):
        assert isinstance(g, torch.Tensor), p
        np.testing.assert_array_equal(g.permute(1, 2, 0).numpy(), want)
