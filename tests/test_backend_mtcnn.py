"""The mtcnn backend on the real shared images: weights, batched vs per-image fidelity, recall,
landmarks."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch

from faceetl.backends.base import Detections, backend_spec, get_backend
from faceetl.weights import fetch, load_state_dict, weights_info
from helpers import (
    ANNOTATIONS,
    IMAGES,
    assert_valid_detections,
    dlib_pascal_boxes,
    iou,
    load_rgb,
    recall,
)

GROUP = IMAGES / "group"


@pytest.fixture(scope="module")
def det():
    torch.set_num_threads(2)
    return get_backend("mtcnn", device="cpu")


@pytest.fixture(scope="module")
def ref():
    from faceetl.backends.mtcnn import MTCNNDetector

    return MTCNNDetector(device="cpu", batched=False)


def _check(d: Detections, image: np.ndarray) -> None:
    assert_valid_detections(d, image, score_threshold=0.7)
    assert not np.isnan(d.landmarks).any()


def test_registry_weights_and_provenance(det) -> None:
    spec = backend_spec("mtcnn")
    assert spec.workers == 4 and spec.gpu
    prov = det.provenance()
    assert prov["weights"] == {
        "pnet.pt": "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f",
        "rnet.pt": "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86",
        "onet.pt": "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d",
    }
    assert prov["stage_thresholds"] == [0.6, 0.7] and prov["score_threshold"] == 0.7
    assert prov["factor"] == 0.709
    for n in ("pnet", "rnet", "onet"):
        wf = weights_info(f"mtcnn_{n}")
        assert wf.filename == f"{n}.pt" and wf.url.startswith("https://raw.githubusercontent.com/")
        # every tensor of the file is in the network, unchanged (loaded strict=True)
        sd = load_state_dict(fetch(f"mtcnn_{n}"))
        net = getattr(det, n).state_dict()
        assert sorted(sd) == sorted(net)
        assert all(torch.equal(sd[k], net[k].cpu()) for k in sd)


def test_batched_mixed_sizes_equals_per_image(det, ref) -> None:
    names = ["facenet_multiface.jpg", "deepface_selfie-many-people.jpg"]
    images = [load_rgb(GROUP / n) for n in names]
    images += [load_rgb(IMAGES / "single" / "fr_obama_small.jpg")]
    images += [load_rgb(IMAGES / "landmarks" / "takeo.ppm")]
    images += [load_rgb(IMAGES / "dlib_pascal" / "2007_007763.jpg")]
    batched = det.detect_batch(images)
    # the shared padded canvases a GPU batch takes (on the CPU, each size goes on its own)
    with torch.inference_mode():
        raw = det._detect_batched(images)
    canvases = [
        Detections(*r).clip(im.shape[1], im.shape[0]) for r, im in zip(raw, images, strict=True)
    ]
    singles = [ref.detect_batch([im])[0] for im in images]
    assert sum(len(d) for d in batched) >= 10
    for im, a, c, b in zip(images, batched, canvases, singles, strict=True):
        _check(a, im)
        assert len(a) == len(c) == len(b)
        if len(a):
            for got in (a, c):
                assert iou(got.boxes, b.boxes).max(axis=1).min() >= 0.99
                np.testing.assert_allclose(got.scores, b.scores, atol=1e-4)
                np.testing.assert_allclose(got.landmarks, b.landmarks, atol=0.5)
    # the batch order does not change any image's result
    rev = det.detect_batch(images[::-1])[::-1]
    for a, b in zip(batched, rev, strict=True):
        assert len(a) == len(b) and (len(a) == 0 or iou(a.boxes, b.boxes).max(1).min() >= 0.99)


def test_dlib_pascal_recall(det) -> None:
    gt = dlib_pascal_boxes()
    names = sorted(gt)
    out = det.detect_batch([load_rgb(IMAGES / "dlib_pascal" / n) for n in names])
    hit = sum(recall(d.boxes, gt[n]) * len(gt[n]) for n, d in zip(names, out, strict=True))
    assert hit / sum(len(g) for g in gt.values()) >= 0.9  # measured 17/18


def _dlib_landmarks() -> dict[str, np.ndarray]:
    """(faces, 5, 2) reference points from dlib's 68-point XML: eye centres, nose, mouth."""
    root = ET.parse(ANNOTATIONS / "dlib_pascal" / "training_with_face_landmarks.xml").getroot()
    out = {}
    for img in root.iter("image"):
        faces = []
        for box in img.iter("box"):
            p = {int(q.get("name")): (float(q.get("x")), float(q.get("y"))) for q in box}
            pts = np.array([p[i] for i in range(68)])
            faces.append([pts[36:42].mean(0), pts[42:48].mean(0), pts[30], pts[48], pts[54]])
        out[img.get("file").split("/")[-1]] = np.array(faces)
    return out


def test_landmarks_against_dlib_annotations(det) -> None:
    ref_pts = _dlib_landmarks()
    names = sorted(ref_pts)
    out = det.detect_batch([load_rgb(IMAGES / "dlib_pascal" / n) for n in names])
    errs = []
    for n, d in zip(names, out, strict=True):
        for g in ref_pts[n]:
            centre = g.mean(0)
            c = d.landmarks.mean(1)
            j = int(np.argmin(((c - centre) ** 2).sum(1)))
            iod = np.linalg.norm(g[1] - g[0])
            errs.append(np.linalg.norm(d.landmarks[j] - g, axis=1).mean() / iod)
    errs = np.array(errs)
    assert len(errs) == 18
    assert np.median(errs) < 0.15, errs


def test_single_faces_and_landmark_geometry(det) -> None:
    paths = sorted((IMAGES / "single").glob("*.jpg")) + [IMAGES / "landmarks" / "takeo.ppm"]
    images = [load_rgb(p) for p in paths]
    for p, im, d in zip(paths, images, det.detect_batch(images), strict=True):
        _check(d, im)
        assert len(d) == 1, p.name
        lm = d.landmarks[0]
        x1, y1, x2, y2 = d.boxes[0]
        assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0], p.name  # left (smaller x) first
        assert max(lm[0, 1], lm[1, 1]) < min(lm[3, 1], lm[4, 1]), p.name  # eyes above mouth
        assert np.all((lm[:, 0] > x1) & (lm[:, 0] < x2) & (lm[:, 1] > y1) & (lm[:, 1] < y2))


def test_group_counts(det) -> None:
    names = ["facenet_multiface.jpg", "fr_two_people.jpg", "deepface_couple.jpg"]
    out = det.detect_batch([load_rgb(GROUP / n) for n in names])
    assert [len(d) for d in out] == [6, 2, 2]


def test_no_faces_tiny_inputs_and_bad_thresholds(det) -> None:
    from faceetl.backends.mtcnn import MTCNNDetector

    flat = np.full((300, 400, 3), 128, np.uint8)
    tiny = load_rgb(IMAGES / "single" / "fr_obama_small.jpg")[:15, :15].copy()
    out = det.detect_batch([flat, tiny])
    assert [len(d) for d in out] == [0, 0]
    with pytest.raises(ValueError, match="stage_thresholds must be two numbers"):
        MTCNNDetector(stage_thresholds=(0.6, 0.7, 0.7))
    with pytest.raises(ValueError, match="thresholds must be three numbers"):
        MTCNNDetector(thresholds=(0.6, 0.7))
