"""The mediapipe backend (BlazeFace in LiteRT, MediaPipe's graph ported) on the real shared
images, and its equality with MediaPipe's own Tasks API: against the recorded reference
(tests/data/mediapipe_reference.json, made by tests/data/make_mediapipe_reference.py) always, and
live where the ``mediapipe`` package imports."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from faceetl.backends.base import Detections, get_backend
from faceetl.weights import WeightsError, fetch, sha256sum
from helpers import (
    IMAGES,
    assert_valid_detections,
    dlib_pascal_boxes,
    iou,
    load_rgb,
    recall,
)

DATA = Path(__file__).parent / "data"
REFERENCE = DATA / "mediapipe_reference.json"

SHORT_SHA = "3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633"
FULL_SHA = "671dd2f9ed11a78436fc21cc42357a803dfc6f73e9fb86541be942d5716c2dce"

# faces found at the defaults (score_threshold 0.5, nms_threshold 0.3), measured with mediapipe
# 1.2.2's Tasks API; the LiteRT port finds the same
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


# MediaPipe's own keypoints, refined by its own model (the default, "onet", is tested below)
@pytest.fixture(scope="module")
def short():
    return get_backend("mediapipe", refine="blazeface")


@pytest.fixture(scope="module")
def full():
    return get_backend("mediapipe", model="full", refine="blazeface")


@pytest.fixture(scope="module")
def short_all():
    """Every face refined, as the reference (and MediaPipe's graph run twice) does."""
    return get_backend("mediapipe", refine="blazeface", refine_min_zoom=0)


@pytest.fixture(scope="module")
def full_all():
    return get_backend("mediapipe", model="full", refine="blazeface", refine_min_zoom=0)


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
    default = get_backend("mediapipe", model="full")  # registers O-Net's weights on loading it
    onet = {"onet.pt": sha256sum(fetch("mtcnn_onet"))}
    for det, weights, refine in (
        (short, {short_file: SHORT_SHA}, "blazeface"),
        # refinement runs the short-range model on face crops, so "full" then uses both files
        (full, {full_file: FULL_SHA, short_file: SHORT_SHA}, "blazeface"),
        (full_unrefined, {full_file: FULL_SHA}, None),
        (default, {full_file: FULL_SHA, **onet}, "onet"),
    ):
        p = det.provenance()
        json.dumps(p)
        assert p["weights"] == weights
        assert p["refine"] == refine and p["refine_scale"] == 2.0
        assert ("landmark_stage" in p) is (refine == "onet")
        assert p["score_threshold"] == 0.5 and p["nms_threshold"] == 0.3
        assert p["litert"] == importlib.metadata.version("ai-edge-litert")
        assert p["normalization"] == {"mean": 127.5, "std": 127.5}
        assert "mediapipe" not in p
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
    median 0.08, 90th pct 0.13, max 0.22 (crops placed from the fractional boxes of the LiteRT
    port and sampled bilinearly; area-averaged crops gave 0.08, 0.13, 0.20).
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
    assert after.max() < 0.24
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


def test_refines_only_faces_it_would_enlarge(short, short_all, group_images):
    """A face the refinement crop would show less than refine_min_zoom (1.5) times larger than
    the first pass did keeps its first-pass keypoints; the others are refined as before."""
    first = get_backend("mediapipe", refine=False)
    imgs = [*group_images.values(), *(load_rgb(p) for p in sorted((IMAGES / "single").iterdir()))]
    skipped = refined = 0
    for img in imgs:
        a, b, c = (d.detect_batch([img])[0] for d in (short, short_all, first))
        assert len(a) == len(b) == len(c)
        side = (c.boxes[:, 2:] - c.boxes[:, :2]).max(axis=1) * 128 / max(img.shape[:2])
        zoom = (128 / 2.0) / side
        small = zoom >= 1.5
        assert not a.extra["refined"][~small].any()
        np.testing.assert_array_equal(a.extra["keypoints6"][~small], c.extra["keypoints6"][~small])
        np.testing.assert_array_equal(a.extra["keypoints6"][small], b.extra["keypoints6"][small])
        np.testing.assert_array_equal(a.boxes[small], b.boxes[small])
        skipped += int((~small).sum())
        refined += int(a.extra["refined"].sum())
    # measured (short model): 3 faces large enough to skip, 11 refined
    assert skipped >= 2 and refined >= 8, (skipped, refined)
    with pytest.raises(ValueError, match="refine_min_zoom"):
        get_backend("mediapipe", refine_min_zoom=-1)


def test_missing_model_offline(tmp_path, monkeypatch):
    from faceetl.backends.mediapipe import MediaPipeDetector

    monkeypatch.setenv("FACEETL_HOME", str(tmp_path))
    monkeypatch.setenv("FACEETL_OFFLINE", "1")
    with pytest.raises(WeightsError, match="face_detection_full_range_sparse.tflite"):
        MediaPipeDetector(model="full")
    with pytest.raises(ValueError, match="model must be"):
        MediaPipeDetector(model="long")


def test_without_litert_the_module_imports_and_the_backend_names_the_extra():
    code = (
        "import sys\n"
        "sys.modules['ai_edge_litert'] = None  # as if not installed\n"
        "import faceetl.backends.mediapipe\n"
        "from faceetl.extras import MissingExtraError\n"
        "try:\n"
        "    faceetl.backends.mediapipe.MediaPipeDetector()\n"
        "except MissingExtraError as exc:\n"
        "    print(exc)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "pip install 'faceetl[mediapipe]'" in r.stdout and "mediapipe backend" in r.stdout


def test_litert_native_log_lines_come_once():
    """LiteRT logs from C++ straight to the process's stderr. Loading both models (full range
    with refinement) and detecting prints no line twice: mediapipe's Tasks API repeated a
    sparsity warning 46 times for the full-range model, LiteRT's Interpreter prints one INFO line
    (measured with ai-edge-litert 1.0.0, 1.0.1 and 2.3.0)."""
    code = (
        "import numpy as np, faceetl\n"
        "d = faceetl.get_backend('mediapipe', model='full')\n"
        "d.detect_batch([np.zeros((120, 200, 3), np.uint8)] * 2)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == len(set(lines)), lines
    assert not any("Sparsity" in line for line in lines), lines


# ------------------------------------------------------------------ equality with MediaPipe
# The LiteRT port against mediapipe's Tasks API (vision.FaceDetector). Measured, LiteRT 2.3.0
# against mediapipe 1.2.3, 12 images, 55 faces (15 short range, 40 full range):
#: first-pass and refined keypoints: max difference 3e-4 px (float noise; the JSON rounds to 1e-4)
KEYPOINT_TOL_PX = 0.01
#: scores: max difference 1.1e-7
SCORE_TOL = 1e-5
#: boxes as the Tasks API gives them (whole pixels): all equal; 1 px would be float noise on an
#: integer boundary
BOX_TOL_PX = 1


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads(REFERENCE.read_text())


def tasks_pixel_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Fractional x1 y1 x2 y2 as the Tasks API reports them: origin and size each truncated to
    whole pixels, then clamped to [0, image side] (MediaPipe's DetectionTransformationCalculator)."""
    b = boxes.astype(np.float32)
    side = np.array([width, height], np.float32)
    origin = np.clip(np.trunc(b[:, :2]), 0, side)
    size = np.clip(np.trunc(b[:, 2:] - b[:, :2]), 0, side)
    return np.concatenate([origin, origin + size], axis=1)


def _arrays(entry: dict, prefix: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Boxes (N, 4) and keypoints (N, 6, 2) of a reference entry."""
    boxes = np.array(entry[prefix + "boxes"], np.float32).reshape(-1, 4)
    return boxes, np.array(entry[prefix + "keypoints6"], np.float32).reshape(-1, 6, 2)


def assert_first_pass_equal(det, img, boxes, scores, kp6, what: str = "") -> int:
    """``det``'s first pass (before refinement and clipping) on ``img`` is MediaPipe's."""
    got_boxes, got_scores, got_kp6 = det._run(det._detector, img)
    assert len(got_scores) == len(scores), what
    np.testing.assert_allclose(got_scores, scores, rtol=0, atol=SCORE_TOL, err_msg=what)
    np.testing.assert_allclose(got_kp6, kp6, rtol=0, atol=KEYPOINT_TOL_PX, err_msg=what)
    h, w = img.shape[:2]
    pixel_boxes = tasks_pixel_boxes(got_boxes, w, h)
    np.testing.assert_allclose(pixel_boxes, boxes, rtol=0, atol=BOX_TOL_PX, err_msg=what)
    return len(scores)


def assert_refine_step_equal(
    det, img, first_boxes, first_kp6, boxes, kp6, refined, what: str = ""
) -> None:
    """From the same first pass, ``det``'s refinement is MediaPipe's: the same faces refined,
    keypoints to float noise, and boxes apart only by the Tasks API's truncation of the crop
    detection to whole crop pixels: x1, y1 by [0, 1) and x2, y2 by [0, 2) crop pixels (measured
    up to 1.97)."""
    got_boxes, got_kp6, got_refined = det._refine(img, first_boxes, first_kp6)
    np.testing.assert_array_equal(got_refined, refined, err_msg=what)
    np.testing.assert_allclose(got_kp6, kp6, rtol=0, atol=KEYPOINT_TOL_PX, err_msg=what)
    from faceetl.backends.mediapipe import REFINE_INPUT

    side = np.round(det.refine_scale * (first_boxes[:, 2:] - first_boxes[:, :2]).max(axis=1))
    crop_px = (got_boxes - boxes) / (side / REFINE_INPUT)[:, None]
    eps = 1e-3
    assert (crop_px > -eps).all(), (what, crop_px)
    assert (crop_px[:, :2] < 1 + eps).all() and (crop_px[:, 2:] < 2 + eps).all(), (what, crop_px)


def test_reference_covers_the_test_images(reference):
    names = sorted(
        str(p.relative_to(IMAGES)) for g in ("single", "group") for p in (IMAGES / g).glob("*.jpg")
    )
    assert reference["images"] == names and set(reference["results"]) == {"short", "full"}
    assert reference["score_threshold"] == 0.5 and reference["nms_threshold"] == 0.3
    assert reference["refine_scale"] == 2.0
    faces = {m: sum(len(e["scores"]) for e in r.values()) for m, r in reference["results"].items()}
    assert faces == {"short": 15, "full": 40}


@pytest.mark.parametrize("model", ["short", "full"])
def test_first_pass_equals_mediapipe_reference(model, short, full, reference):
    """Without refinement: MediaPipe's faces, scores, keypoints and (whole-pixel) boxes."""
    det = short if model == "short" else full
    for name, entry in reference["results"][model].items():
        boxes, kp6 = _arrays(entry)
        img = load_rgb(IMAGES / name)
        assert_first_pass_equal(det, img, boxes, entry["scores"], kp6, name)


@pytest.mark.parametrize("model", ["short", "full"])
def test_refine_step_equals_mediapipe_reference(model, short_all, full_all, reference):
    det = short_all if model == "short" else full_all
    for name, entry in reference["results"][model].items():
        first_boxes, first_kp6 = _arrays(entry)
        boxes, kp6 = _arrays(entry, "refined_")
        img = load_rgb(IMAGES / name)
        refined = entry["refined"]
        assert_refine_step_equal(det, img, first_boxes, first_kp6, boxes, kp6, refined, name)


@pytest.mark.parametrize("model", ["short", "full"])
def test_refined_results_close_to_mediapipe_reference(model, short_all, full_all, reference):
    """With every face refined, end to end: the same faces, scores and refined faces, and
    keypoints and boxes close, not equal. The port places each crop from its fractional first-pass
    box, the Tasks API from whole pixels; a crop shifted by under a pixel moves BlazeFace's
    keypoints by up to a few percent of the face. Measured max: keypoints 0.067, boxes 0.044 of
    the face's size (the larger side of its box)."""
    det = short_all if model == "short" else full_all
    for name, entry in reference["results"][model].items():
        got = det._detect_one(load_rgb(IMAGES / name))
        boxes, kp6 = _arrays(entry, "refined_")
        assert len(got) == len(boxes)
        np.testing.assert_allclose(got.scores, entry["scores"], rtol=0, atol=SCORE_TOL)
        np.testing.assert_array_equal(got.extra["refined"], entry["refined"])
        size = (boxes[:, 2:] - boxes[:, :2]).max(axis=1)
        kp_err = np.abs(got.extra["keypoints6"] - kp6).max(axis=(1, 2)) / size
        box_err = np.abs(got.boxes - boxes).max(axis=1) / size
        assert (kp_err < 0.1).all() and (box_err < 0.1).all(), (name, kp_err, box_err)


def _live_images() -> dict[str, np.ndarray]:
    """Shared photos that the reference leaves out, and letterbox cases: a face cut by the left
    border, a tall and a wide canvas, an odd-sized small image."""
    images = {
        p.name: load_rgb(p)
        for d in ("dlib_pascal", "landmarks", "aligned", "wider")
        for p in sorted((IMAGES / d).iterdir())
        if p.suffix in (".jpg", ".png", ".ppm")
    }
    face = load_rgb(IMAGES / "single" / "fr_obama_small.jpg")
    h, w = face.shape[:2]
    images["cut_left"] = np.ascontiguousarray(face[:, int(w * 0.42) :])
    images["tall"] = np.pad(face, ((h // 2, 2 * h + 1), (0, 0), (0, 0)))
    images["wide"] = np.pad(face, ((0, 0), (3 * w, 7), (0, 0)), mode="edge")
    images["small_odd"] = np.ascontiguousarray(face[1::3, ::3])
    return images


@pytest.mark.parametrize(
    "model,score_threshold,nms_threshold",
    [("short", 0.5, 0.3), ("full", 0.5, 0.3), ("full", 0.4, 0.6)],
)
def test_live_equal_to_mediapipe(model, score_threshold, nms_threshold):
    """Where the ``mediapipe`` package imports: the port against its Tasks API run now, on other
    images than the reference's and with other thresholds."""
    pytest.importorskip("mediapipe.tasks.python.vision")
    spec = importlib.util.spec_from_file_location(
        "mp_reference", DATA / "make_mediapipe_reference.py"
    )
    tasks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tasks)
    params = {"score_threshold": score_threshold, "nms_threshold": nms_threshold}
    det = get_backend("mediapipe", model=model, refine="blazeface", refine_min_zoom=0, **params)
    mp_det = tasks.TasksBlazeFace(model, **params)
    mp_refiner = tasks.TasksBlazeFace("short", **params)
    faces = refined = 0
    for name, img in _live_images().items():
        boxes, scores, kp6 = mp_det.detect(img)
        faces += assert_first_pass_equal(det, img, boxes, scores, kp6, name)
        r_boxes, r_kp6, r_refined = tasks.refine(mp_refiner, img, boxes, kp6)
        assert_refine_step_equal(det, img, boxes, kp6, r_boxes, r_kp6, r_refined, name)
        refined += int(r_refined.sum())
    mp_det.close()
    mp_refiner.close()
    assert faces >= 10 and refined >= 0.8 * faces, (faces, refined)


def test_letterbox_of_an_input_sized_crop_is_the_warp_it_skips():
    """A refinement crop is already the model's input: the identity warp is skipped, with the
    same tensor and mapping as the graph's warp would give."""
    import cv2

    from faceetl.backends.mediapipe import letterbox

    crop = np.random.default_rng(1).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    tensor, (side, x0, y0) = letterbox(crop, 128)
    warped = cv2.warpPerspective(crop, np.eye(3), (128, 128), flags=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(tensor[0], warped.astype(np.float32) * np.float32(2 / 255) - 1)
    assert (side, x0, y0) == (128.0, 0.0, 0.0)
    wide, (side, x0, y0) = letterbox(np.zeros((64, 128, 3), np.uint8), 128)  # not square: warped
    assert wide.shape == (1, 128, 128, 3) and (side, x0, y0) == (128.0, 0.0, -32.0)


def test_default_takes_five_onet_points_for_every_face(group_images):
    """``refine="onet"`` (the default): the first pass's faces, boxes, scores and keypoints
    stay; every face gets O-Net's five points, mouth corners included, in one pass a batch."""
    imgs = list(group_images.values())
    default = get_backend("mediapipe", model="full")
    first = get_backend("mediapipe", model="full", refine=None)
    assert default.refine == "onet" and get_backend("mediapipe").refine == "onet"
    got, want = default.detect_batch(imgs), first.detect_batch(imgs)
    faces = 0
    for img, a, b in zip(imgs, got, want, strict=True):
        _check(a, img)
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.scores, b.scores)
        np.testing.assert_array_equal(a.extra["keypoints6"], b.extra["keypoints6"])
        assert a.extra["refined"].all() and not b.extra["refined"].any()
        p = a.landmarks
        assert np.isfinite(p).all()
        assert (p[:, 0, 0] < p[:, 1, 0]).all() and (p[:, 3, 0] < p[:, 4, 0]).all()
        assert (np.maximum(p[:, 0, 1], p[:, 1, 1]) < np.minimum(p[:, 3, 1], p[:, 4, 1])).all()
        faces += len(a)
    assert faces >= 30


def test_onet_eyes_nearer_dlib68_than_either_blazeface_pass(full, full_unrefined, group_images):
    """Measured on the 7 group photos (34 faces matched to dlib's), the eye error as a fraction
    of the eye distance: O-Net median 0.053, 90th pct 0.076, max 0.15; BlazeFace's second pass
    0.080, 0.124, 0.22; the first pass 0.19, 0.42, 0.47."""
    imgs = list(group_images.values())
    dlib_dets = get_backend("dlib", upsample=0).detect_batch(imgs)
    onet, refined = _dlib68_eye_errors(get_backend("mediapipe", model="full"), dlib_dets, imgs)
    blaze, _ = _dlib68_eye_errors(full, dlib_dets, imgs)
    assert len(onet) == len(blaze) >= 30 and refined.all()
    assert np.median(onet) < 0.065 and np.quantile(onet, 0.9) < 0.1 and onet.max() < 0.2
    assert np.median(onet) < np.median(blaze)


def test_refine_spellings():
    assert get_backend("mediapipe", refine=True).refine == "blazeface"  # its meaning before
    assert get_backend("mediapipe", refine=False).refine is None
    with pytest.raises(ValueError, match="refine must be one of"):
        get_backend("mediapipe", refine="dlib")
