"""The retinaface backend on the real shared images and weights."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from faceetl.backends.base import Detections, backend_spec, get_backend
from faceetl.backends.retinaface import RetinaFaceDetector
from faceetl.weights import WeightsError, fetch, sha256sum
from helpers import (
    IMAGES,
    assert_valid_detections,
    dlib_pascal_boxes,
    iou,
    load_rgb,
    recall,
    wider_gt,
)

MOBILENET_SHA = "2979b33ffafda5d74b6948cd7a5b9a7a62f62b949cef24e95fd15d2883a65220"
GROUP = sorted((IMAGES / "group").glob("*.jpg"))

# recall of the reference pipeline (biubug6 test_widerface.py, original scale, one image)
WIDER_REFERENCE = {
    ("0_Parade_marchingband_1_765.jpg", 0.5): 0.856,
    ("0_Parade_marchingband_1_765.jpg", 0.02): 0.939,
    ("11_Meeting_Meeting_11_Meeting_Meeting_11_26.jpg", 0.5): 0.297,
    ("11_Meeting_Meeting_11_Meeting_Meeting_11_26.jpg", 0.02): 0.757,
}


@pytest.fixture(scope="module")
def det() -> RetinaFaceDetector:
    return RetinaFaceDetector()


@pytest.fixture(scope="module")
def group_images() -> dict[str, np.ndarray]:
    return {p.name: load_rgb(p) for p in GROUP}


@pytest.fixture(scope="module")
def group_dets(det: RetinaFaceDetector, group_images) -> dict[str, Detections]:
    return {n: det.detect_batch([img])[0] for n, img in group_images.items()}


def _matched_max_diff(a: Detections, b: Detections) -> float:
    """Largest coordinate difference between each face of ``a`` and its best IoU match in ``b``."""
    j = iou(a.boxes, b.boxes).argmax(axis=1)
    return float(
        max(np.abs(a.boxes - b.boxes[j]).max(), np.abs(a.landmarks - b.landmarks[j]).max())
    )


def test_registry_entry() -> None:
    spec = backend_spec("retinaface")
    assert spec.workers == 2 and spec.gpu
    d = get_backend("retinaface")
    assert isinstance(d, RetinaFaceDetector) and d is get_backend("retinaface")


@pytest.mark.parametrize("name,conf", sorted(WIDER_REFERENCE))
def test_wider_recall_matches_reference(name: str, conf: float) -> None:
    d = get_backend("retinaface", score_threshold=conf, max_side=None)
    img = load_rgb(IMAGES / "wider" / name)
    got = recall(d.detect_batch([img])[0].boxes, wider_gt()[name])
    assert abs(got - WIDER_REFERENCE[(name, conf)]) <= 0.01, got


def test_mixed_batch_equals_alone(det: RetinaFaceDetector, group_images) -> None:
    """Padding into one canvas with bigger images changes nothing (faces at the edges too)."""
    names = ["deepface_selfie-many-people.jpg", "retinaface_curve_test.jpg"]
    imgs = [group_images[n] for n in names] + [load_rgb(IMAGES / "single" / "fr_obama_small.jpg")]
    one = RetinaFaceDetector(batch_pixels=10**9, pad_waste=math.inf)
    assert one._groups([i.shape[:2] for i in imgs]) == [[2, 0, 1]]  # really one canvas
    batched = one.detect_batch(imgs)
    for img, b in zip(imgs, batched, strict=True):
        a = det.detect_batch([img])[0]
        assert len(a) == len(b) > 0
        assert _matched_max_diff(a, b) <= 1.0
        assert np.allclose(np.sort(a.scores), np.sort(b.scores), atol=1e-3)


def test_inexact_padding_is_close_inside(group_images) -> None:
    """Without the padding mask the canvas still finds the same faces."""
    imgs = [
        group_images["facenet_multiface.jpg"],
        load_rgb(IMAGES / "single" / "deepface_img5.jpg"),
    ]
    d = RetinaFaceDetector(batch_pixels=10**9, pad_waste=math.inf, exact_padding=False)
    for img, b, n in zip(imgs, d.detect_batch(imgs), [6, 1], strict=True):
        assert len(b) == n
        a = get_backend("retinaface").detect_batch([img])[0]
        assert _matched_max_diff(a, b) <= 3.0


def test_group_photos(group_dets, group_images) -> None:
    counts = {}
    for name, img in group_images.items():
        d = group_dets[name]
        assert_valid_detections(d, img, score_threshold=0.5)
        assert np.isfinite(d.landmarks).all()
        counts[name] = len(d)
    print("retinaface faces per group photo:", counts)
    assert counts["facenet_multiface.jpg"] == 6
    assert counts["insightface_t1.jpg"] == 6
    assert counts["fr_two_people.jpg"] == 2
    assert counts["deepface_selfie-many-people.jpg"] >= 5
    assert 20 <= counts["retinaface_curve_test.jpg"] <= 40
    assert 20 <= counts["dlib_bald_guys.jpg"] <= 40
    assert counts["deepface_couple.jpg"] >= 2


def test_dlib_pascal_recall(det: RetinaFaceDetector) -> None:
    gts = dlib_pascal_boxes()
    imgs = [load_rgb(IMAGES / "dlib_pascal" / n) for n in gts]
    dets = det.detect_batch(imgs)
    r = np.mean([recall(d.boxes, g) for d, g in zip(dets, gts.values(), strict=True)])
    print("retinaface dlib_pascal recall:", r)
    assert r >= 0.9


def test_landmark_order(group_dets) -> None:
    lm = np.concatenate([d.landmarks for d in group_dets.values()])
    assert len(lm) > 50
    assert (lm[:, 0, 0] < lm[:, 1, 0]).all()  # left eye has the smaller x
    assert (lm[:, 3, 0] < lm[:, 4, 0]).all()  # left mouth corner too
    eyes_y = lm[:, :2, 1].max(axis=1)
    assert (eyes_y < lm[:, 3:, 1].min(axis=1)).all()  # eyes above the mouth
    assert ((lm[:, 2, 1] > lm[:, :2, 1].min(axis=1)) & (lm[:, 2, 1] < lm[:, 3:, 1].max(1))).all()


def test_landmarks_against_annotation(det: RetinaFaceDetector) -> None:
    """The 5 points match the 68-point annotation of a frontal face: eye points are pupils."""
    lines = (IMAGES / "landmarks" / "takeo.pts").read_text().splitlines()
    pts = np.array([[float(v) for v in ln.split()] for ln in lines if ln[:1].isdigit()]) - 1.0
    assert pts.shape == (68, 2)
    d = det.detect_batch([load_rgb(IMAGES / "landmarks" / "takeo.ppm")])[0]
    assert len(d) == 1
    want = np.stack(
        [pts[36:42].mean(axis=0), pts[42:48].mean(axis=0), pts[30], pts[48], pts[54]]
    )  # eye-contour centres, nose tip, mouth corners
    interocular = np.linalg.norm(want[1] - want[0])
    err = np.linalg.norm(d.landmarks[0] - want, axis=1) / interocular
    assert (err < 0.1).all(), err


def test_max_side_maps_back_to_input_pixels(group_images, group_dets) -> None:
    img = group_images["dlib_bald_guys.jpg"]  # 1986 x 1545
    full = group_dets["dlib_bald_guys.jpg"]
    small = RetinaFaceDetector(max_side=1024).detect_batch([img])[0]
    assert len(small) >= 10
    best = iou(small.boxes, full.boxes).max(axis=1)
    assert np.median(best) > 0.7  # same faces, in input pixels
    assert small.boxes[:, 2].max() > 1024  # not left at the downscaled size


def test_tiny_inputs(det: RetinaFaceDetector) -> None:
    out = det.detect_batch([np.zeros((20, 30, 3), np.uint8), np.full((64, 48, 3), 255, np.uint8)])
    assert [len(d) for d in out] == [0, 0]
    with pytest.raises(ValueError, match="max_side must be >= 32"):
        RetinaFaceDetector(max_side=16)


def test_provenance(det: RetinaFaceDetector) -> None:
    prov = det.provenance()  # JSON with backend, weights and device: test_backend_contract.py
    assert prov["weights"] == {"mobilenet0.25_Final.pth": MOBILENET_SHA}
    assert sha256sum(fetch("retinaface_mobilenet0.25")) == MOBILENET_SHA
    assert prov["network"] == "mobilenet0.25" and prov["score_threshold"] == 0.5
    assert prov["nms_threshold"] == 0.4 and prov["keep_top_k"] == 750


def _released_resnet50_layout() -> dict[str, torch.Tensor]:
    """Random tensors under the key names and shapes of biubug6's Resnet50_Final.pth."""
    g = torch.Generator().manual_seed(0)
    sd: dict[str, torch.Tensor] = {}

    def conv(key: str, cout: int, cin: int, k: int, bias: bool = False) -> None:
        sd[f"{key}.weight"] = torch.randn(cout, cin, k, k, generator=g) * 0.05
        if bias:
            sd[f"{key}.bias"] = torch.randn(cout, generator=g) * 0.05

    def bn(key: str, c: int) -> None:
        sd[f"{key}.weight"] = 1 + 0.1 * torch.randn(c, generator=g)
        sd[f"{key}.bias"] = 0.1 * torch.randn(c, generator=g)
        sd[f"{key}.running_mean"] = 0.1 * torch.randn(c, generator=g)
        sd[f"{key}.running_var"] = 1 + torch.rand(c, generator=g)
        sd[f"{key}.num_batches_tracked"] = torch.tensor(1000)

    conv("body.conv1", 64, 3, 7)
    bn("body.bn1", 64)
    cin = 64
    for li, (planes, blocks) in enumerate([(64, 3), (128, 4), (256, 6), (512, 3)], start=1):
        for b in range(blocks):
            key = f"body.layer{li}.{b}"
            conv(f"{key}.conv1", planes, cin, 1)
            bn(f"{key}.bn1", planes)
            conv(f"{key}.conv2", planes, planes, 3)
            bn(f"{key}.bn2", planes)
            conv(f"{key}.conv3", planes * 4, planes, 1)
            bn(f"{key}.bn3", planes * 4)
            if b == 0:
                conv(f"{key}.downsample.0", planes * 4, cin, 1)
                bn(f"{key}.downsample.1", planes * 4)
            cin = planes * 4
    for i, c in enumerate([512, 1024, 2048], start=1):
        conv(f"fpn.output{i}.0", 256, c, 1)
        bn(f"fpn.output{i}.1", 256)
    for i in (1, 2):
        conv(f"fpn.merge{i}.0", 256, 256, 3)
        bn(f"fpn.merge{i}.1", 256)
    for s in (1, 2, 3):
        for name, cout, cin_ in [
            ("conv3X3", 128, 256),
            ("conv5X5_1", 64, 256),
            ("conv5X5_2", 64, 64),
            ("conv7X7_2", 64, 64),
            ("conv7x7_3", 64, 64),
        ]:
            conv(f"ssh{s}.{name}.0", cout, cin_, 3)
            bn(f"ssh{s}.{name}.1", cout)
    for head, n in [("ClassHead", 4), ("BboxHead", 8), ("LandmarkHead", 20)]:
        for i in range(3):
            conv(f"{head}.{i}.conv1x1", n, 256, 1, bias=True)
    return {f"module.{k}": v for k, v in sd.items()}  # saved from DataParallel, as released


def test_resnet50_loads_released_layout(tmp_path) -> None:
    sd = _released_resnet50_layout()
    path = tmp_path / "Resnet50_Final.pth"
    torch.save(sd, path)
    d = RetinaFaceDetector(network="resnet50", weights=str(path))
    own = d.model.state_dict()
    assert len(own) == len(sd)
    for k, v in sd.items():
        assert torch.equal(own[k.removeprefix("module.")], v), k
    assert d.provenance()["weights"] == {"Resnet50_Final.pth": sha256sum(path)}
    img = load_rgb(IMAGES / "single" / "fr_obama_small.jpg")
    out = d.detect_batch([img, img[:100, :150]])  # random weights: shapes, not faces
    assert len(out) == 2 and all(isinstance(o, Detections) for o in out)


def test_resnet50_release_needs_its_file() -> None:
    with pytest.raises(WeightsError, match="Resnet50_Final.pth"):
        RetinaFaceDetector(network="resnet50")


def test_wrong_state_dict_is_refused(tmp_path) -> None:
    mobilenet = str(fetch("retinaface_mobilenet0.25"))
    with pytest.raises(WeightsError, match=r"not a RetinaFace resnet50 state dict.*missing keys"):
        RetinaFaceDetector(network="resnet50", weights=mobilenet)
    sd = torch.load(mobilenet, map_location="cpu", weights_only=True)
    sd.pop("LandmarkHead.2.conv1x1.bias")
    sd["ClassHead.0.conv1x1.weight"] = torch.zeros(4, 32, 1, 1)
    bad = tmp_path / "bad.pth"
    torch.save(sd, bad)
    with pytest.raises(WeightsError, match=r"1 missing keys.*LandmarkHead.2.conv1x1.bias"):
        RetinaFaceDetector(weights=str(bad))
    with pytest.raises(ValueError, match="unknown RetinaFace network"):
        RetinaFaceDetector(network="vgg")


def test_speed_one_core(det: RetinaFaceDetector, group_images) -> None:
    """Images/s on one CPU thread for the group photos (reported, loosely bounded)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        imgs = list(group_images.values())
        t = time.perf_counter()
        for img in imgs:
            det.detect_batch([img])
        rate = len(imgs) / (time.perf_counter() - t)
    finally:
        torch.set_num_threads(threads)
    print(f"retinaface mobilenet0.25, 1 thread: {rate:.2f} images/s on the group photos")
    assert rate > 0.2


def test_large_faces_found_once():
    """Faces larger than the anchors: the reference output doubles them, the default does not."""
    import cv2

    from faceetl.backends.base import get_backend

    couple = load_rgb(IMAGES / "group" / "deepface_couple.jpg")
    assert len(get_backend("retinaface").detect_batch([couple])[0]) == 2
    assert len(get_backend("retinaface", large_face_pass=False).detect_batch([couple])[0]) > 2
    small = load_rgb(IMAGES / "single" / "fr_obama_small.jpg")
    big = cv2.resize(small, (small.shape[1] * 6, small.shape[0] * 6), interpolation=cv2.INTER_CUBIC)
    (det,) = get_backend("retinaface").detect_batch([big])
    assert len(det) == 1
    (ref,) = get_backend("retinaface").detect_batch([small])
    assert np.abs(det.boxes[0] / 6 - ref.boxes[0]).max() < 6  # same face, same place


def test_keep_top_k_holds_after_the_large_face_pass():
    """The second pass adds faces: the result is still cut to keep_top_k (752 came back with
    750 asked), best first."""
    couple = load_rgb(IMAGES / "group" / "deepface_couple.jpg")
    for k in (1, 2):
        (det,) = get_backend("retinaface", keep_top_k=k, score_threshold=0.02).detect_batch(
            [couple]
        )
        assert len(det) == k
        assert (np.diff(det.scores) <= 0).all()


@pytest.mark.slow
def test_low_scores_do_not_start_the_large_face_pass(group_images):
    """At the WIDER setting (score 0.02) spurious large low-score boxes must not start the
    second pass: the confident faces come out where they do at the default threshold."""
    wider = get_backend("retinaface", score_threshold=0.02)
    default = get_backend("retinaface")
    photos = dict(group_images)
    for p in sorted((IMAGES / "single").glob("*.jpg")) + sorted((IMAGES / "wider").glob("*.jpg")):
        photos[p.name] = load_rgb(p)
    for name, img in photos.items():
        (low,) = wider.detect_batch([img])
        (high,) = default.detect_batch([img])
        confident = low.select(low.scores >= 0.5)
        assert len(confident) == len(high), name
        if len(high):
            assert _matched_max_diff(confident, high) < 1e-3, name


def test_activation_bytes_per_pixel_scales_with_the_body():
    from faceetl.backends.retinaface import activation_bytes_per_pixel
    from faceetl.nets.retinaface import RetinaFace

    small = RetinaFace("mobilenet0.25").eval()
    big = RetinaFace("resnet50").eval()
    a, b = activation_bytes_per_pixel(small, 128), activation_bytes_per_pixel(small, 256)
    assert a == pytest.approx(b, rel=0.02)  # a fully convolutional net: per pixel, any size
    assert 100 < a < activation_bytes_per_pixel(big, 128)  # measured: 353 and 2,753
    # an upper bound of what one forward holds: at least its largest single output
    with torch.inference_mode():
        feats = small.body(torch.zeros(1, 3, 256, 256))
    largest = max(t.numel() * 4 for t in feats) / 256**2
    assert a > largest


def test_batch_pixels_for_free_memory():
    from faceetl.backends.retinaface import AUTO_PIXELS_RANGE, batch_pixels_for

    gib = 1 << 30
    assert batch_pixels_for(8 * gib, 2_000) == int(0.5 * 8 * gib / 2_000)
    assert batch_pixels_for(8 * gib, 2_000, half=True) == int(0.5 * 8 * gib / 1_000)
    assert batch_pixels_for(0, 2_000) == AUTO_PIXELS_RANGE[0]  # a photo always runs (or OOMs)
    assert batch_pixels_for(1 << 50, 2_000) == AUTO_PIXELS_RANGE[1]


def test_cpu_batch_pixels_default_runs_images_alone(det):
    assert not det.auto_batch and det.batch_pixels == 0
    assert det._groups([(480, 640), (480, 640), (600, 800)]) == [[0], [1], [2]]
