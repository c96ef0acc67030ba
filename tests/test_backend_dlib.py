"""The dlib backend on the real shared images: HOG boxes, CNN boxes, 68- and 5-point landmarks."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest

from faceetl.backends.base import Detections, backend_spec, get_backend
from faceetl.weights import sha256sum, weights_info
from helpers import (
    ANNOTATIONS,
    IMAGES,
    SHARED,
    assert_valid_detections,
    dlib_pascal_boxes,
    iou,
    load_rgb,
    recall,
)

PASCAL = IMAGES / "dlib_pascal"


@pytest.fixture(scope="module")
def hog():
    return get_backend("dlib")


@pytest.fixture(scope="module")
def pascal_dets(hog) -> dict[str, Detections]:
    names = sorted(p.name for p in PASCAL.glob("*.jpg"))
    dets = hog.detect_batch([load_rgb(PASCAL / n) for n in names])
    return dict(zip(names, dets, strict=True))


def _astronaut() -> np.ndarray:
    import skimage.data

    return skimage.data.astronaut()


def _check_contract(det: Detections, image: np.ndarray) -> None:
    assert_valid_detections(det, image)
    # scores are a monotonic map of the raw dlib margin, best first
    raw = det.extra["raw_score"]
    assert np.all(np.diff(raw) <= 1e-6)


def test_registered_and_cached():
    spec = backend_spec("dlib")
    assert spec.workers == 8 and spec.gpu is False
    assert get_backend("dlib") is get_backend("dlib")


def test_astronaut_one_face(hog):
    img = _astronaut()
    det = hog.detect_batch([img])[0]
    _check_contract(det, img)
    assert len(det) == 1
    x1, y1, x2, y2 = det.boxes[0]
    # the astronaut's face is in the upper middle of the 512x512 image
    assert 150 < (x1 + x2) / 2 < 300 and 50 < (y1 + y2) / 2 < 200
    lm = det.landmarks[0]
    assert np.all(np.isfinite(lm))
    assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0]  # image-left before image-right
    assert lm[0, 1] < lm[2, 1] < lm[3, 1]  # eyes above nose above mouth
    assert np.all((lm[:, 0] > x1) & (lm[:, 0] < x2) & (lm[:, 1] > y1) & (lm[:, 1] < y2))


def test_threshold_zero_finds_the_false_face():
    # the reason for the default threshold: dlib's own threshold (raw 0, score 0.5) reports a
    # second "face"
    det = get_backend("dlib", score_threshold=0.5, landmarks=None).detect_batch([_astronaut()])[0]
    assert len(det) == 2
    assert np.all(np.isnan(det.landmarks))
    assert det.extra["raw_score"].min() < 0.15 < det.extra["raw_score"].max()


def test_pascal_recall(pascal_dets):
    gt = dlib_pascal_boxes()
    per_image = {n: recall(pascal_dets[n].boxes, g) for n, g in gt.items()}
    total = sum(len(g) for g in gt.values())
    overall = sum(per_image[n] * len(g) for n, g in gt.items()) / total
    assert overall >= 0.9, per_image
    assert min(per_image.values()) >= 0.8, per_image
    for n, det in pascal_dets.items():
        _check_contract(det, load_rgb(PASCAL / n))
        # at most one stray detection per image beyond the annotated faces
        assert len(det) <= len(gt[n]) + 1, (n, len(det), len(gt[n]))


def test_eye_order_and_68_consistency(pascal_dets):
    for det in pascal_dets.values():
        p68 = det.extra["landmarks68"]
        assert p68.shape == (len(det), 68, 2)
        lm = det.landmarks
        assert np.all(np.isfinite(lm))
        assert np.all(lm[:, 0, 0] < lm[:, 1, 0])
        assert np.all(lm[:, 3, 0] < lm[:, 4, 0])
        np.testing.assert_allclose(lm[:, 2], p68[:, 30])
        eyes = np.sort(np.stack([p68[:, 36:42].mean(1)[:, 0], p68[:, 42:48].mean(1)[:, 0]]), 0)
        np.testing.assert_allclose(lm[:, 0, 0], eyes[0], atol=1e-3)
        np.testing.assert_allclose(lm[:, 1, 0], eyes[1], atol=1e-3)


def test_68_landmarks_vs_dlib_annotations(pascal_dets):
    root = ET.parse(ANNOTATIONS / "dlib_pascal" / "training_with_face_landmarks.xml").getroot()
    errors = []
    for im in root.iter("image"):
        det = pascal_dets[im.get("file")]
        for b in im.iter("box"):
            t, left, w, h = (float(b.get(k)) for k in ("top", "left", "width", "height"))
            parts = sorted(b.iter("part"), key=lambda p: int(p.get("name")))
            ref = np.array([[float(p.get("x")), float(p.get("y"))] for p in parts])
            assert ref.shape == (68, 2)
            overlap = iou(np.array([[left, t, left + w, t + h]]), det.boxes)[0]
            j = int(overlap.argmax())
            assert overlap[j] >= 0.5
            err = np.linalg.norm(det.extra["landmarks68"][j] - ref, axis=1).mean()
            errors.append(err / np.sqrt(w * h))
    assert len(errors) == 18
    assert np.mean(errors) < 0.05, errors
    assert np.max(errors) < 0.1, errors


def test_68_landmarks_vs_breakingbad_pts(hog):
    img = load_rgb(IMAGES / "landmarks" / "breakingbad.jpg")
    lines = (IMAGES / "landmarks" / "breakingbad.pts").read_text().split("{")[1].split("}")[0]
    ref = np.array(lines.split(), float).reshape(68, 2) - 1.0  # .pts is 1-based
    det = hog.detect_batch([img])[0]
    _check_contract(det, img)
    ref_box = np.r_[ref.min(0), ref.max(0)][None]
    overlap = iou(ref_box, det.boxes)[0]
    j = int(overlap.argmax())
    assert overlap[j] >= 0.4
    size = np.sqrt(np.prod(ref.max(0) - ref.min(0)))
    err = np.linalg.norm(det.extra["landmarks68"][j] - ref, axis=1).mean() / size
    assert err < 0.05, err
    lm = det.landmarks[j]
    ref_left_eye = ref[36:42].mean(0)  # iBUG 36-41: the subject's right eye, image left
    assert np.linalg.norm(lm[0] - ref_left_eye) < 0.05 * size


def test_five_point_mode(pascal_dets):
    five = get_backend("dlib", landmarks="5")
    name = "2008_001322.jpg"
    det5 = five.detect_batch([load_rgb(PASCAL / name)])[0]
    det68 = pascal_dets[name]
    assert "landmarks68" not in det5.extra and det5.extra["landmarks5"].shape == (len(det5), 5, 2)
    assert len(det5) == len(det68) == 3
    np.testing.assert_allclose(det5.boxes, det68.boxes)
    lm = det5.landmarks
    assert np.all(np.isfinite(lm[:, :3])) and np.all(np.isnan(lm[:, 3:]))
    assert np.all(lm[:, 0, 0] < lm[:, 1, 0])
    size = np.sqrt(np.prod(det5.boxes[:, 2:] - det5.boxes[:, :2], axis=1))
    # eye centres from the corner points agree with the 68-point eye centres
    d = np.linalg.norm(lm[:, :2] - det68.landmarks[:, :2], axis=2).max(axis=1)
    assert np.all(d < 0.06 * size), d / size
    assert five.provenance()["weights"].keys() == {"shape_predictor_5_face_landmarks.dat"}


def test_cnn_detector_small_image(hog):
    img = load_rgb(IMAGES / "single" / "fr_obama_small.jpg")
    cnn = get_backend("dlib", detector="cnn")
    det = cnn.detect_batch([img])[0]
    _check_contract(det, img)
    assert len(det) == 1
    assert iou(det.boxes, hog.detect_batch([img])[0].boxes).max() >= 0.5
    assert np.all(np.isfinite(det.landmarks)) and det.landmarks[0, 0, 0] < det.landmarks[0, 1, 0]
    prov = cnn.provenance()
    wf = weights_info("dlib_mmod_human_face_detector")
    assert prov["weights"][wf.filename] == wf.sha256
    assert sha256sum(SHARED / "weights" / "dlib" / wf.filename) == wf.sha256


def test_batch_order_empty_image_and_provenance(hog):
    blank = np.full((240, 320, 3), 128, np.uint8)
    a = load_rgb(PASCAL / "2008_001009.jpg")
    dets = hog.detect_batch([a, blank, a[:, ::-1].copy()])
    assert [len(d) for d in dets] == [2, 0, 2]
    assert dets[1].landmarks.shape == (0, 5, 2) and dets[1].extra["landmarks68"].shape == (0, 68, 2)
    # a mirrored image gives mirrored boxes, eyes still in image-left/right order
    w = a.shape[1]
    mirrored = np.c_[
        w - dets[2].boxes[:, 2], dets[2].boxes[:, 1], w - dets[2].boxes[:, 0], dets[2].boxes[:, 3]
    ]
    assert iou(dets[0].boxes, mirrored).max(axis=1).min() >= 0.5  # HOG is not mirror-exact
    assert np.all(dets[2].landmarks[:, 0, 0] < dets[2].landmarks[:, 1, 0])
    prov = hog.provenance()  # JSON with backend, weights and device: test_backend_contract.py
    assert prov["detector"] == "hog" and prov["upsample"] == 1 and prov["raw_threshold"] == 0.15
    assert prov["score_threshold"] == 1.0 / (1.0 + np.exp(-0.15))
    assert len(prov["weights"]["shape_predictor_68_face_landmarks.dat"]) == 64
