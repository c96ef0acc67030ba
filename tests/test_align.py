"""Alignment: templates as insightface and dlib define them, similarity fits, fallbacks."""

from __future__ import annotations

import numpy as np
import pytest

from faceetl.align import (
    ARCFACE_112,
    AlignmentError,
    AlignSpec,
    align_face,
    arcface_template,
    dlib_template,
    estimate_transform,
    invert,
    similarity_from_points,
    transform_points,
)
from helpers import IMAGES, load_rgb


def test_arcface_template_sizes():
    assert np.allclose(arcface_template(112), ARCFACE_112)
    assert np.allclose(arcface_template(224), ARCFACE_112 * 2)
    t128 = arcface_template(128)
    assert np.allclose(t128[:, 0], ARCFACE_112[:, 0] + 8) and np.allclose(
        t128[:, 1], ARCFACE_112[:, 1]
    )
    t256 = arcface_template(256)
    assert np.allclose(t256, (ARCFACE_112 + [8, 0]) * 2)
    with pytest.raises(ValueError):
        arcface_template(100)


def test_dlib_template_fairface_geometry():
    t = dlib_template(300, 0.25)
    # eyes level and symmetric about the chip centre, mouth below the nose below the eyes
    assert t[0, 1] == pytest.approx(t[1, 1])
    assert (t[0, 0] + t[1, 0]) / 2 == pytest.approx(150, abs=3)
    assert t[0, 1] < t[2, 1] < t[3, 1]
    # padding 0 puts dlib's mean face in the unit square scaled to the chip
    t0 = dlib_template(100, 0.0)
    assert np.all((t0 > 0) & (t0 < 100))


def test_similarity_recovers_a_known_transform():
    ang = np.deg2rad(17)
    rot = 1.7 * np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    src = ARCFACE_112 @ rot.T + [40, -12]
    m = similarity_from_points(src, ARCFACE_112)
    assert np.allclose(transform_points(m, src), ARCFACE_112, atol=1e-6)
    assert np.allclose(transform_points(invert(m), ARCFACE_112), src, atol=1e-6)


def test_eyes_only_land_exactly_on_template_eyes():
    lm = np.full((5, 2), np.nan)
    lm[:2] = [[100, 120], [160, 110]]
    m, method = estimate_transform(lm, None, AlignSpec())
    assert method == "eyes"
    assert np.allclose(transform_points(m, lm[:2]), ARCFACE_112[:2], atol=1e-6)


def test_no_landmarks_falls_back_to_box():
    m, method = estimate_transform(
        np.full((5, 2), np.nan), np.array([100, 100, 200, 220]), AlignSpec()
    )
    assert method == "box"
    centre = transform_points(m, [[150, 160]])[0]
    assert 40 < centre[0] < 72 and 50 < centre[1] < 90
    with pytest.raises(AlignmentError):
        estimate_transform(None, None, AlignSpec())


def test_aligning_an_aligned_crop_is_identity():
    img = load_rgb(IMAGES / "aligned" / "insightface_Tom_Hanks_54745.png")
    crop, m, method = align_face(img, ARCFACE_112, spec=AlignSpec("arcface", 112))
    assert method == "landmarks"
    assert np.allclose(m, [[1, 0, 0], [0, 1, 0]], atol=1e-6)
    assert np.abs(crop.astype(int) - img.astype(int)).mean() < 1


def test_crop_sizes_and_templates():
    img = load_rgb(IMAGES / "single" / "fr_obama_small.jpg")
    lm = np.array([[130, 100], [175, 100], [152, 125], [135, 150], [170, 150]], float)
    for spec in (
        AlignSpec("arcface", 112),
        AlignSpec("arcface", 128),
        AlignSpec("dlib", 300, 0.25),
    ):
        crop, _, _ = align_face(img, lm, spec=spec)
        assert crop.shape == (spec.size, spec.size, 3) and crop.dtype == np.uint8
    with pytest.raises(ValueError):
        AlignSpec("nope", 112)


def test_square_crop_bilinear_samples_like_resize():
    """``area=False`` (MediaPipe's sampling) lands on the same pixel centres as cv2.resize's
    bilinear resize of the square, and is zero past the borders like the area-averaged crop."""
    import cv2

    from faceetl.align import square_crop

    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8), (0, 0), 3)
    for side, size in ((200, 128), (100, 128), (96, 48)):
        want = cv2.resize(img[50 : 50 + side, 60 : 60 + side], (size, size))
        got = square_crop(img, 60, 50, side, size, area=False)
        assert got.shape == (size, size, 3) and got.dtype == np.uint8
        assert np.abs(got.astype(int) - want).max() <= 1
    # a square hanging 100 px off the left edge: that part is black, never stretched
    got = square_crop(img, -100, 0, 200, 100, area=False)
    area = square_crop(img, -100, 0, 200, 100)
    assert (got[:, :49] == 0).all() and (got[:, 51:] > 0).any(axis=2).all()
    assert np.abs(got[:, 52:].astype(int) - area[:, 52:]).mean() < 3
