"""The ``ssd`` backend (OpenCV DNN res10 SSD) on the real shared photos."""

from __future__ import annotations

import numpy as np
import pytest

from faceetl.backends.base import Detections, default_workers, get_backend
from faceetl.weights import WeightsError, fetch, sha256sum
from helpers import IMAGES, assert_valid_detections, dlib_pascal_boxes, load_rgb, recall


@pytest.fixture(scope="module")
def det():
    return get_backend("ssd")


@pytest.fixture(scope="module")
def groups(det) -> dict[str, tuple[np.ndarray, Detections]]:
    names = ["facenet_multiface.jpg", "insightface_t1.jpg"]
    imgs = [load_rgb(IMAGES / "group" / n) for n in names]
    return dict(zip(names, zip(imgs, det.detect_batch(imgs), strict=True), strict=True))


def test_registered_with_workers():
    assert default_workers("ssd") == 4
    assert get_backend("ssd") is get_backend("ssd")


def test_dlib_pascal_recall(det):
    gt = dlib_pascal_boxes()
    names = sorted(gt)
    res = det.detect_batch([load_rgb(IMAGES / "dlib_pascal" / n) for n in names])
    hit = sum(recall(r.boxes, gt[n]) * len(gt[n]) for n, r in zip(names, res, strict=True))
    total = sum(len(gt[n]) for n in names)
    # measured: 17/18 = 0.94 at IoU 0.5
    assert hit / total >= 0.85


def test_group_photo_counts(groups):
    for _name, (img, d) in groups.items():
        assert len(d) == 6
        assert_valid_detections(d, img, score_threshold=0.5)


def test_five_points_inside_box_and_ordered(groups):
    """O-Net's five points (the default) on every face, in ArcFace order, inside the box."""
    for _img, d in groups.values():
        assert np.isfinite(d.landmarks).all()  # every face, turned ones too (Haar: 8 of 12)
        for box, p in zip(d.boxes, d.landmarks, strict=True):
            assert p[0, 0] < p[1, 0] and p[3, 0] < p[4, 0]  # eyes, mouth corners: image order
            assert max(p[0, 1], p[1, 1]) < p[2, 1] < min(p[3, 1], p[4, 1])  # eyes, nose, mouth
            assert (p[:, 0] >= box[0]).all() and (p[:, 0] <= box[2]).all()
            assert (p[:, 1] >= box[1]).all() and (p[:, 1] <= box[3]).all()


def test_haar_eyes_on_request(groups):
    haar = get_backend("ssd", landmarks="haar")
    found_total = 0
    for img, d in groups.values():
        h = haar.detect_batch([img])[0]
        np.testing.assert_array_equal(h.boxes, d.boxes)  # the landmark stage leaves the boxes
        found = ~np.isnan(h.landmarks[:, :2]).any(axis=(1, 2))
        found_total += found.sum()
        for box, e in zip(h.boxes[found], h.landmarks[found, :2], strict=True):
            assert e[0, 0] < e[1, 0]
            assert (e[:, 0] >= box[0]).all() and (e[:, 0] <= box[2]).all()
        assert np.isnan(h.landmarks[:, 2:]).all()  # the eye cascade gives eyes only
    assert found_total >= 7  # measured: 8 of 12 faces (6 + 2; turned faces give no eye pair)
    assert "haarcascade_eye.xml" in haar.provenance()["weights"]
    none = get_backend("ssd", landmarks=None).detect_batch([img])[0]
    assert np.isnan(none.landmarks).all() and len(none) == len(d)


def test_aligned_crops_boxes_inside_image(det):
    """Boxes inside the crops: the contract test (test_backend_contract.py); here their size."""
    paths = sorted((IMAGES / "aligned").iterdir())
    imgs = [load_rgb(p) for p in paths]
    res = det.detect_batch(imgs)
    assert len(res) == len(imgs)
    for img, r in zip(imgs, res, strict=True):
        h, w = img.shape[:2]
        assert (r.boxes[:, 2] - r.boxes[:, 0] >= 4).all() and (
            r.boxes[:, 3] - r.boxes[:, 1] >= 4
        ).all()
        # the spurious boxes hanging off the crop are gone: what is left covers the face centre
        for b in r.boxes:
            assert b[0] < w / 2 < b[2] and b[1] < h / 2 < b[3]


def test_black_image_and_mixed_batch_in_order(det):
    black = np.zeros((240, 320, 3), np.uint8)
    takeo = load_rgb(IMAGES / "landmarks" / "takeo.ppm")
    obama = load_rgb(IMAGES / "single" / "fr_obama_small.jpg")
    couple = load_rgb(IMAGES / "group" / "fr_two_people.jpg")
    batch = [takeo, black, couple, obama]
    res = det.detect_batch(batch)
    assert [len(r) for r in res] == [1, 0, 2, 1]
    for img, r in zip(batch, res, strict=True):
        one = det.detect_batch([img])[0]
        np.testing.assert_allclose(one.boxes, r.boxes, atol=1e-3)
        np.testing.assert_allclose(one.scores, r.scores, atol=1e-5)


def test_score_threshold(groups):
    img, d = groups["insightface_t1.jpg"]
    strict = get_backend("ssd", score_threshold=0.95).detect_batch([img])[0]
    assert len(strict) == int((d.scores >= 0.95).sum())
    assert len(strict) < len(d)


def test_provenance_has_weight_hashes(det):
    prov = det.provenance()
    shas = prov["weights"]
    assert shas["opencv_face_detector_uint8.pb"] == sha256sum(fetch("ssd_tf_uint8"))
    assert shas["opencv_face_detector.pbtxt"] == sha256sum(fetch("ssd_tf_pbtxt"))
    assert shas["onet.pt"] == sha256sum(fetch("mtcnn_onet"))  # the landmark stage's weights
    assert "haarcascade_eye.xml" not in shas
    assert prov["landmarks"] == "onet" and prov["landmark_stage"]["box_scale"] == 0.8
    assert prov["model"] == "tensorflow" and prov["score_threshold"] == 0.5
    assert prov["min_face_size"] == 4.0


def test_caffe_model_missing_offline_names_the_file():
    # the caffemodel is not in ../shared; offline, the error says which file to get
    with pytest.raises(WeightsError, match="res10_300x300_ssd_iter_140000.caffemodel"):
        get_backend("ssd", model="caffe")


def test_bad_model_name():
    with pytest.raises(ValueError):
        get_backend("ssd", model="onnx")


def _shared_photos() -> list[np.ndarray]:
    folders = ("group", "single", "dlib_pascal")
    paths = sorted(p for f in folders for p in (IMAGES / f).iterdir())
    return [load_rgb(p) for p in paths if p.suffix.lower() in {".jpg", ".png"}]


def test_torch_network_equals_the_opencv_graph():
    """Every feature map the heads read, the encoded boxes, the scores and the priors: the
    torch module against OpenCV's forward of the same released graph, on a real blob."""
    import cv2
    import torch

    from faceetl.nets.res10_ssd import detect, from_opencv

    model, config = fetch("ssd_tf_uint8"), fetch("ssd_tf_pbtxt")
    ssd, priors = from_opencv(model, config)
    net = cv2.dnn.readNetFromTensorflow(str(model), str(config))
    img = load_rgb(IMAGES / "group" / "insightface_t1.jpg")
    blob = cv2.dnn.blobFromImage(img, 1.0, (300, 300), (104, 177, 123), swapRB=True)
    with torch.inference_mode():
        feats = ssd.features(torch.from_numpy(blob))
        loc, conf = ssd(torch.from_numpy(blob))
    net.setInput(blob)
    names = ["conv4_3_norm/mul_1", "last_relu"] + [f"conv{i}_2_h/Relu" for i in (6, 7, 8, 9)]
    ref = net.forward([*names, "mbox_loc", "mbox_conf_flatten", "detection_out"])
    for name, want, got in zip(names, ref, feats, strict=False):
        np.testing.assert_allclose(got.numpy(), want, atol=1e-4, err_msg=name)
    np.testing.assert_allclose(loc.numpy().reshape(-1), ref[-3].reshape(-1), atol=1e-4)
    np.testing.assert_allclose(conf.numpy().reshape(-1), ref[-2].reshape(-1, 2)[:, 1], atol=1e-5)
    assert priors.shape == (8892, 4)
    want = ref[-1].reshape(-1, 7)
    want = want[want[:, 2] > 0.01]
    (got,) = detect(loc, conf, priors)
    assert len(got) == len(want) > 50  # the graph's own output, every candidate over 0.01
    np.testing.assert_allclose(got[:, :4], want[:, 3:7], atol=1e-4)
    np.testing.assert_allclose(got[:, 4], want[:, 2], atol=1e-5)


def test_torch_engine_finds_what_opencv_finds():
    """The default runtime against OpenCV DNN on the 16 shared photos, batched and not."""
    photos = _shared_photos()
    ours = get_backend("ssd", landmarks=None)
    cv = get_backend("ssd", landmarks=None, engine="opencv")
    assert ours.engine == "torch" and ours.provenance()["engine"] == "torch"
    assert cv.provenance()["engine"] == "opencv"
    batched = ours.detect_batch(photos)
    faces = 0
    for img, b in zip(photos, batched, strict=True):
        one, ref = ours.detect_batch([img])[0], cv.detect_batch([img])[0]
        assert len(one) == len(ref) == len(b)
        tol = 1e-4 * max(img.shape[:2])  # measured: under 2e-7 of the image side
        np.testing.assert_allclose(one.boxes, ref.boxes, atol=tol)
        np.testing.assert_allclose(b.boxes, ref.boxes, atol=tol)
        np.testing.assert_allclose(one.scores, ref.scores, atol=1e-4)
        faces += len(ref)
    assert faces >= 70  # measured: 79


def test_engine_choices():
    with pytest.raises(ValueError, match="engine"):
        get_backend("ssd", engine="tflite")
    with pytest.raises(ValueError, match="tensorflow"):
        get_backend("ssd", model="caffe", engine="torch")
