"""The landmark stage of box-only detectors (O-Net on each box, or the Haar eye search)."""

from __future__ import annotations

import numpy as np
import pytest

from faceetl.backends.base import get_backend
from faceetl.backends.landmarks import (
    ONET_SIZE,
    HaarEyes,
    ONetLandmarks,
    landmark_stage,
    onet_crops,
)
from helpers import IMAGES, load_rgb


@pytest.fixture(scope="module")
def onet():
    return ONetLandmarks()


@pytest.fixture(scope="module")
def photos():
    names = ["facenet_multiface.jpg", "insightface_t1.jpg", "fr_two_people.jpg"]
    return [load_rgb(IMAGES / "group" / n) for n in names]


def test_crops_are_squares_zero_past_the_border():
    img = np.full((100, 200, 3), 200, np.uint8)
    # a tall box at the left edge: its square reaches past x=0 and is padded, never stretched
    crops, squares = onet_crops(img, np.array([[-10, 20, 30, 100], [50, 10, 90, 50]], float))
    assert crops.shape == (2, ONET_SIZE, ONET_SIZE, 3) and crops.dtype == np.uint8
    np.testing.assert_array_equal(squares[0], [-30, 20, 80])  # side = the larger side (80)
    left = int(30 / 80 * ONET_SIZE)  # 30 of its 80 columns lie left of the image
    assert (crops[0, :, : left - 1] == 0).all() and (crops[0, :, left + 1 :] == 200).all()
    assert (crops[0, : int(0.95 * ONET_SIZE)] != 0).any(axis=(1, 2)).all()  # rows inside
    assert (crops[1] == 200).all()  # wholly inside: no padding
    out, _ = onet_crops(img, np.array([[300, 300, 340, 340]], float))  # wholly outside: zeros
    assert (out == 0).all()
    z, s = onet_crops(img, np.zeros((0, 4)))
    assert z.shape == (0, ONET_SIZE, ONET_SIZE, 3) and s.shape == (0, 3)


def test_points_on_ssd_boxes_agree_with_dlib68(onet, photos):
    """Every face gets five finite points; its eyes are near dlib's 68-point eye centres."""
    ssd = get_backend("ssd", landmarks=None)
    ref = get_backend("dlib")
    boxes = [d.boxes for d in ssd.detect_batch(photos)]
    points = onet(photos, boxes)
    errs = []
    for img, b, p in zip(photos, boxes, points, strict=True):
        assert p.shape == (len(b), 5, 2) and p.dtype == np.float32 and np.isfinite(p).all()
        r = ref.detect_batch([img])[0]
        for box, pts in zip(b, p, strict=True):
            c = (box[:2] + box[2:]) / 2
            j = np.argmin(np.linalg.norm((r.boxes[:, :2] + r.boxes[:, 2:]) / 2 - c, axis=1))
            eyes = r.landmarks[j, :2]
            iod = np.linalg.norm(eyes[1] - eyes[0])
            if iod >= 30 and np.linalg.norm((r.boxes[j, :2] + r.boxes[j, 2:]) / 2 - c) < iod:
                errs.append(np.linalg.norm(pts[:2] - eyes, axis=1).mean() / iod)
    # measured: 14 faces with eyes 30 px apart or more, median 0.046, max 0.126 of the eye distance
    assert len(errs) >= 10
    assert np.median(errs) < 0.07 and max(errs) < 0.2


def test_batch_equals_one_by_one_and_mirror(onet, photos):
    ssd = get_backend("ssd", landmarks=None)
    boxes = [d.boxes for d in ssd.detect_batch(photos)]
    batch = onet(photos, boxes)
    for img, b, p in zip(photos, boxes, batch, strict=True):
        np.testing.assert_allclose(onet([img], [b])[0], p, atol=1e-3)
    # the mirrored photo with mirrored boxes gives the mirrored points, up to the network's own
    # asymmetry (measured on these 6 faces: 0.03-0.10 of the eye distance; on turned faces up to
    # 0.18; averaging each crop with its mirror did not lower the error against dlib's eyes)
    img, b, p = photos[0], boxes[0], batch[0]
    w = img.shape[1]
    fb = b.copy()
    fb[:, [0, 2]] = w - b[:, [2, 0]]
    fp = onet([np.ascontiguousarray(img[:, ::-1])], [fb])[0]
    fp[..., 0] = w - fp[..., 0]
    fp = fp[:, [1, 0, 2, 4, 3]]  # image order again: the mirrored left eye is the right one
    iod = np.linalg.norm(p[:, 1] - p[:, 0], axis=1)
    assert (np.linalg.norm(fp - p, axis=2).max(axis=1) / iod < 0.15).all()


def test_empty_images_and_boxes(onet):
    img = np.zeros((50, 60, 3), np.uint8)
    out = onet([img, img], [np.zeros((0, 4)), np.array([[5, 5, 40, 40]], float)])
    assert out[0].shape == (0, 5, 2) and out[1].shape == (1, 5, 2)
    assert onet([], []) == []


def test_methods_and_the_old_eyes_parameter():
    assert isinstance(landmark_stage("onet"), ONetLandmarks)
    assert isinstance(landmark_stage("haar"), HaarEyes)
    assert landmark_stage(None) is None
    with pytest.raises(ValueError, match="landmarks must be one of"):
        landmark_stage("dlib")
    with pytest.raises(ValueError, match="landmarks must be one of"):
        get_backend("ssd", landmarks="eyes")
    with pytest.raises(ValueError, match="box_scale"):
        ONetLandmarks(box_scale=0)
    # eyes= is the old name: eyes=False is boxes only, eyes=True the Haar eye search it meant
    for backend in ("ssd", "opencv"):
        with pytest.warns(FutureWarning, match="'eyes' is deprecated.*'landmarks'"):
            off = get_backend(backend, eyes=False)
        assert off.provenance()["landmarks"] is None
        with pytest.warns(FutureWarning):
            assert get_backend(backend, eyes=True).provenance()["landmarks"] == "haar"
        with pytest.raises(TypeError, match="both 'eyes' and 'landmarks'"):
            get_backend(backend, eyes=True, landmarks="onet")
