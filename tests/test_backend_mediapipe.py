"""The mediapipe backend (BlazeFace via the Tasks API) on the real shared images."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from faceetl.backends.base import Detections, get_backend
from faceetl.weights import WeightsError
from helpers import (
    IMAGES,
    SHARED,
    assert_valid_detections,
    dlib_pascal_boxes,
    iou,
    load_rgb,
    recall,
)

SHORT_SHA = "3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633"
FULL_SHA = "671dd2f9ed11a78436fc21cc42357a803dfc6f73e9fb86541be942d5716c2dce"

# faces found at the defaults (score_threshold 0.5, nms_threshold 0.3), measured with mediapipe 1.2.2
GROUP_COUNTS = {
    "short": {
        "deepface_couple.jpg": 2,
        "deepface_selfie-many-people.jpg": 3,
        "dlib_bald_guys.jpg": 3,
        "facenet_multiface.jpg": 0,
        "fr_two_people.jpg": 2,
        "insightface_t1.jpg": 0,
        "retinaface_curve_test.jpg": 0,
    },
    "full": {
        "deepface_couple.jpg": 2,
        "deepface_selfie-many-people.jpg": 4,
        "dlib_bald_guys.jpg": 15,
        "facenet_multiface.jpg": 5,
        "fr_two_people.jpg": 2,
        "insightface_t1.jpg": 4,
        "retinaface_curve_test.jpg": 3,
    },
}


@pytest.fixture(scope="module")
def short():
    return get_backend("mediapipe")


@pytest.fixture(scope="module")
def full():
    return get_backend("mediapipe", model="full")


@pytest.fixture(scope="module")
def full_unrefined():
    return get_backend("mediapipe", model="full", refine=False)


@pytest.fixture(scope="module")
def group_images() -> dict[str, np.ndarray]:
    return {f.name: load_rgb(f) for f in sorted((IMAGES / "group").glob("*.jpg"))}


def _check(det: Detections, image: np.ndarray) -> None:
    assert_valid_detections(det, image, score_threshold=0.5)
    n = len(det)
    assert det.extra["keypoints6"].shape == (n, 6, 2)
    assert det.extra["refined"].shape == (n,) and det.extra["refined"].dtype == bool


def test_tasks_api_refuses_the_legacy_model_as_is():
    """Why the backend adds metadata: the bare legacy model is refused by the Tasks API."""
    from mediapipe.tasks.python import BaseOptions, vision

    path = SHARED / "weights" / "mediapipe" / "face_detection_short_range.tflite"
    opts = vision.FaceDetectorOptions(
        base_options=BaseOptions(model_asset_path=str(path)),
        running_mode=vision.RunningMode.IMAGE,
    )
    with pytest.raises(Exception, match="NormalizationOptions"):
        vision.FaceDetector.create_from_options(opts)


def test_single_faces(short, full):
    files = sorted((IMAGES / "single").glob("*.jpg"))
    assert len(files) == 5
    for f in files:
        img = load_rgb(f)
        for det in (short.detect_batch([img])[0], full.detect_batch([img])[0]):
            _check(det, img)
            assert len(det) == 1, f.name
            x1, y1, x2, y2 = det.boxes[0]
            eyes_nose = det.landmarks[0, :3]
            assert np.all(np.isfinite(eyes_nose)), f.name
            assert np.all((eyes_nose[:, 0] > x1) & (eyes_nose[:, 0] < x2)), f.name
            assert np.all((eyes_nose[:, 1] > y1) & (eyes_nose[:, 1] < y2)), f.name
            assert eyes_nose[0, 0] < eyes_nose[1, 0]  # left eye = smaller x
            assert np.all(np.isnan(det.landmarks[0, 3:]))  # no mouth corners from BlazeFace
            # the 5 points come from the 6 keypoints: eyes (either order) and the nose tip
            kp = det.extra["keypoints6"][0]
            assert {tuple(kp[0]), tuple(kp[1])} == {tuple(eyes_nose[0]), tuple(eyes_nose[1])}
            np.testing.assert_array_equal(kp[2], eyes_nose[2])
            # mouth centre below the nose, ear tragions outside the eyes
            assert kp[3, 1] > kp[2, 1]
            assert (
                min(kp[4, 0], kp[5, 0])
                < eyes_nose[0, 0]
                < eyes_nose[1, 0]
                < max(kp[4, 0], kp[5, 0])
            )
            eye_dist = eyes_nose[1, 0] - eyes_nose[0, 0]
            assert 0.2 * (x2 - x1) < eye_dist < 0.7 * (x2 - x1)


@pytest.mark.parametrize("model", ["short", "full"])
def test_group_counts(model, short, full, group_images):
    det = short if model == "short" else full
    got = {
        name: len(d)
        for name, d in zip(group_images, det.detect_batch(list(group_images.values())), strict=True)
    }
    want = GROUP_COUNTS[model]
    assert set(got) == set(want)
    for name, n in want.items():
        assert abs(got[name] - n) <= (0 if n <= 2 else 1), (name, got[name], n)


def test_full_range_finds_the_distant_faces(short, full, group_images):
    """Short range is for selfie distance; the full-range model finds the faces in group photos."""
    imgs = list(group_images.values())
    n_short = sum(len(d) for d in short.detect_batch(imgs))
    n_full = sum(len(d) for d in full.detect_batch(imgs))
    assert n_full >= 30 and n_full > 2 * n_short
    hits = {"short": 0.0, "full": 0.0}
    total = 0
    for name, gt in dlib_pascal_boxes().items():
        img = load_rgb(IMAGES / "dlib_pascal" / name)
        total += len(gt)
        for key, det in (("short", short), ("full", full)):
            hits[key] += recall(det.detect_batch([img])[0].boxes, gt) * len(gt)
    assert total == 18
    assert hits["full"] / total >= 0.9
    assert hits["short"] / total < 0.5


def test_mixed_batch(short):
    imgs = [
        load_rgb(IMAGES / "group" / "deepface_couple.jpg"),
        load_rgb(IMAGES / "landmarks" / "takeo.ppm"),
        load_rgb(IMAGES / "aligned" / "insightface_Tom_Hanks_54745.png"),
        np.full((50, 80, 3), 128, np.uint8),
        load_rgb(IMAGES / "single" / "fr_obama_small.jpg"),
    ]
    out = short.detect_batch(imgs)
    assert len(out) == len(imgs)
    for det, img in zip(out, imgs, strict=True):
        _check(det, img)
    assert [len(d) for d in out] == [2, 1, 1, 0, 1]
    # same answer alone as in the batch
    alone = short.detect_batch([imgs[4]])[0]
    np.testing.assert_array_equal(alone.boxes, out[4].boxes)


def test_detector_reused_and_thread_safe(short, group_images):
    imgs = list(group_images.values())[:4]
    first = short.detect_batch(imgs)
    detector = short._detector
    with ThreadPoolExecutor(4) as ex:
        threaded = list(ex.map(lambda im: short.detect_batch([im])[0], imgs * 2))
    assert short._detector is detector
    for a, b in zip(first * 2, threaded, strict=True):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.scores, b.scores)


def test_provenance(short, full, full_unrefined):
    short_file, full_file = (
        "face_detection_short_range.tflite",
        "face_detection_full_range_sparse.tflite",
    )
    for det, weights, refine in (
        (short, {short_file: SHORT_SHA}, True),
        # refinement runs the short-range model on face crops, so "full" then uses both files
        (full, {full_file: FULL_SHA, short_file: SHORT_SHA}, True),
        (full_unrefined, {full_file: FULL_SHA}, False),
    ):
        p = det.provenance()
        json.dumps(p)
        assert p["weights"] == weights
        assert p["refine"] is refine and p["refine_scale"] == 2.0
        assert p["score_threshold"] == 0.5 and p["nms_threshold"] == 0.3
        assert set(p["task_model_sha256"]) == set(weights)
        for fname, sha in p["task_model_sha256"].items():
            assert len(sha) == 64 and sha != weights[fname]
    assert full._refiner is not full._detector and short._refiner is short._detector
    assert full_unrefined._refiner is None


def _dlib68_eye_errors(det, dlib_dets, images) -> tuple[np.ndarray, np.ndarray]:
    """Per matched face (box IoU >= 0.5): the larger eye error / eye distance, and which refined.

    The reference eyes are the centres of dlib's 68-point eye contours (points 36-41, 42-47).
    """
    errs, refined = [], []
    for img, ref in zip(images, dlib_dets, strict=True):
        got = det.detect_batch([img])[0]
        if not len(got) or not len(ref):
            continue
        m = iou(got.boxes, ref.boxes)
        for i in range(len(got)):
            j = int(m[i].argmax())
            if m[i, j] < 0.5:
                continue
            p68 = ref.extra["landmarks68"][j]
            eyes = np.array(sorted([p68[36:42].mean(0), p68[42:48].mean(0)], key=lambda p: p[0]))
            eye_dist = np.linalg.norm(eyes[1] - eyes[0])
            errs.append(np.linalg.norm(got.landmarks[i, :2] - eyes, axis=1).max() / eye_dist)
            refined.append(bool(got.extra["refined"][i]))
    return np.array(errs), np.array(refined)


def test_refined_eyes_agree_with_dlib68(full, full_unrefined, group_images):
    """Refinement re-detects each face on a crop where it is large: eyes land near dlib's.

    Measured on the 7 group photos (34 faces matched to dlib HOG, upsample 0), error as a
    fraction of the eye distance: first pass median 0.19, 90th pct 0.42, max 0.47; refined
    median 0.07, 90th pct 0.14, max 0.18.
    """
    imgs = list(group_images.values())
    dlib_dets = get_backend("dlib", upsample=0).detect_batch(imgs)
    before, _ = _dlib68_eye_errors(full_unrefined, dlib_dets, imgs)
    after, refined = _dlib68_eye_errors(full, dlib_dets, imgs)
    assert len(before) >= 30 and len(after) == len(before)
    assert refined.mean() >= 0.9
    assert np.median(before) > 0.15 and before.max() > 0.4  # the coarse first pass
    assert np.median(after) < 0.09
    assert np.quantile(after, 0.9) < 0.17
    assert after.max() < 0.22
    assert np.median(after) < 0.5 * np.median(before)


def test_refinement_keeps_faces_and_scores(full, full_unrefined, group_images):
    """Refinement moves keypoints and boxes only: same faces, same scores; unrefined unchanged."""
    imgs = list(group_images.values())
    for a, b in zip(full.detect_batch(imgs), full_unrefined.detect_batch(imgs), strict=True):
        assert len(a) == len(b)
        np.testing.assert_array_equal(a.scores, b.scores)
        assert not b.extra["refined"].any()
        keep = ~a.extra["refined"]
        np.testing.assert_array_equal(a.boxes[keep], b.boxes[keep])
        np.testing.assert_array_equal(a.extra["keypoints6"][keep], b.extra["keypoints6"][keep])
        # a refined face stays the same face
        if len(a):
            assert np.all(np.diag(iou(a.boxes, b.boxes)) > 0.5)
    with pytest.raises(ValueError, match="refine_scale"):
        get_backend("mediapipe", refine_scale=1.0)


def test_missing_model_offline(tmp_path, monkeypatch):
    from faceetl.backends.mediapipe import MediaPipeDetector

    monkeypatch.setenv("FACEETL_HOME", str(tmp_path))
    monkeypatch.setenv("FACEETL_OFFLINE", "1")
    with pytest.raises(WeightsError, match="face_detection_full_range_sparse.tflite"):
        MediaPipeDetector(model="full")
    with pytest.raises(ValueError, match="model must be"):
        MediaPipeDetector(model="long")


def test_metadata_writer_refuses_a_second_patch():
    from faceetl.backends.mediapipe import with_task_metadata

    raw = (SHARED / "weights" / "mediapipe" / "face_detection_short_range.tflite").read_bytes()
    patched = with_task_metadata(raw)
    assert patched[4:8] == b"TFL3" and b"TFLITE_METADATA" in patched
    with pytest.raises(ValueError, match="already has"):
        with_task_metadata(patched)


def test_full_range_model_warns_once_not_46_times():
    """LiteRT logs a sparsity warning per sparse tensor from C++; it comes out once, counted."""
    import subprocess
    import sys

    code = "import faceetl; faceetl.get_backend('mediapipe', model='full')"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    sparsity = [line for line in r.stderr.splitlines() if "Sparsity tensors" in line]
    assert len(sparsity) == 1 and sparsity[0].endswith(")") and "(x" in sparsity[0], sparsity
