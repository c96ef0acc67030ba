"""RetinaFace training (faceetl.train.retinaface) on CPU: readers, augmentation, matching, loss,
fine-tuning from the released MobileNet-0.25 on the shared WIDER + PASCAL photos, a short run
from scratch, resuming and DDP (gloo, two processes).

The machine is small and shared: torch runs single-threaded in this module (two OpenMP threads on
two busy cores were measured 4-15x slower than one), and images are small (128-320 px).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from faceetl.backends.retinaface import RetinaFaceDetector
from faceetl.nets.retinaface import RetinaFace
from faceetl.nets.retinaface_priors import decode_boxes, decode_landmarks, priors_for
from faceetl.train import retinaface as rt
from faceetl.weights import WeightsError
from helpers import ANNOTATIONS, IMAGES, dlib_pascal_boxes, iou, load_rgb, recall, wider_gt

WIDER_TXT = ANNOTATIONS / "wider" / "shared_wider_val_gt.txt"
PASCAL_XML = ANNOTATIONS / "dlib_pascal" / "training_with_face_landmarks.xml"
log = logging.getLogger(__name__)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def shared_annotations() -> list[rt.ImageAnnotation]:
    """The 6 shared photos: WIDER GT boxes (no landmarks), PASCAL boxes + 68->5 landmarks.

    Paths are relative to ../shared/images. PASCAL boxes are helpers.py's (training.xml); each
    takes the five points of the face of the 68-point XML it overlaps most.
    """
    anns = []
    for name, boxes in sorted(wider_gt().items()):
        anns.append(rt.ImageAnnotation(f"wider/{name}", boxes))
    xml = {a.path: a for a in rt.read_dlib_xml(PASCAL_XML)}
    for name, boxes in sorted(dlib_pascal_boxes().items()):
        src = xml[name]
        j = iou(boxes, src.boxes).argmax(axis=1)
        assert (iou(boxes, src.boxes).max(axis=1) > 0.5).all()
        anns.append(rt.ImageAnnotation(f"dlib_pascal/{name}", boxes, src.landmarks[j]))
    return anns


# ----------------------------------------------------------------------------- readers


def test_read_wider_bbx_gt_shared_file() -> None:
    anns = rt.read_wider_bbx_gt(WIDER_TXT)
    gt = wider_gt()
    assert [Path(a.path).name for a in anns] == list(gt)
    assert anns[0].path == "0--Parade/0_Parade_marchingband_1_765.jpg"
    for a in anns:
        np.testing.assert_array_equal(a.boxes, gt[Path(a.path).name])
        assert set(a.attributes) == set(rt.WIDER_ATTRIBUTES)
        assert all(len(v) == len(a) for v in a.attributes.values())
        assert not a.has_landmarks.any()
        assert (a.targets()[:, 14] == -1).all()
    # the first face line is "311 131 8 9 1 0 0 0 0 0": blur 1, box 311,131 -> 319,140
    np.testing.assert_array_equal(anns[0].boxes[0], [311, 131, 319, 140])
    assert anns[0].attributes["blur"][0] == 1 and anns[0].attributes["occlusion"][2] == 1
    assert rt.annotation_format(WIDER_TXT) == "bbx_gt"


def test_read_wider_bbx_gt_empty_images(tmp_path: Path) -> None:
    p = tmp_path / "wider_face_train_bbx_gt.txt"
    p.write_text(
        "0--Parade/a.jpg\n2\n10 20 30 40 0 0 0 0 0 0 \n1 2 3 4 2 1 1 1 2 1 \n"
        "1--Handshaking/empty.jpg\n0\n0 0 0 0 0 0 0 0 0 0 \n"
        "2--Demonstration/b.jpg\n1\n5 6 7 8 0 0 0 0 0 0 \n"
    )
    anns = rt.read_wider_bbx_gt(p)
    assert [a.path for a in anns] == [
        "0--Parade/a.jpg",
        "1--Handshaking/empty.jpg",
        "2--Demonstration/b.jpg",
    ]
    assert [len(a) for a in anns] == [2, 0, 1]
    np.testing.assert_array_equal(anns[0].boxes, [[10, 20, 40, 60], [1, 2, 4, 6]])
    assert anns[0].attributes["invalid"].tolist() == [0, 1]
    assert anns[0].attributes["pose"].tolist() == [0, 1]
    # the invalid face is left out of the dataset, the empty image stays (no faces)
    ds = rt.RetinaFaceDataset(anns, tmp_path, image_size=64)
    assert [len(t) for _, t in ds.items] == [1, 0, 1]
    p.write_text("0--Parade/a.jpg\n2\n10 20 30 40 0 0 0 0 0 0 \n")
    with pytest.raises(ValueError, match="not a face line"):
        rt.read_wider_bbx_gt(p)


def test_read_retinaface_labels(tmp_path: Path) -> None:
    p = tmp_path / "label.txt"
    p.write_text(
        "# 0--Parade/0_Parade_marchingband_1_849.jpg\n"
        "449 330 122 149 488.906 373.643 0.0 542.089 376.442 0.0 515.031 412.83 0.0 "
        "485.174 425.893 0.0 538.357 431.491 0.0 0.82\n"
        "# 0--Parade/0_Parade_Parade_0_904.jpg\n"
        "361 98 263 339 424.143 251.656 0.0 547.134 232.571 0.0 494.121 325.875 0.0 "
        "453.83 368.286 0.0 561.978 342.839 0.0 0.89\n"
        "78 221 7 8 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0\n"
        "10 11 12 13\n"
    )
    anns = rt.read_retinaface_labels(p)
    assert rt.annotation_format(p) == "label"
    assert [a.path for a in anns] == [
        "0--Parade/0_Parade_marchingband_1_849.jpg",
        "0--Parade/0_Parade_Parade_0_904.jpg",
    ]
    np.testing.assert_allclose(anns[0].boxes, [[449, 330, 571, 479]])
    np.testing.assert_allclose(anns[0].landmarks[0, 1], [542.089, 376.442], rtol=1e-6)
    np.testing.assert_allclose(anns[0].landmarks[0, 4], [538.357, 431.491], rtol=1e-6)
    assert anns[1].has_landmarks.tolist() == [True, False, False]
    t = anns[1].targets()
    assert t.shape == (3, 15) and t[:, 14].tolist() == [1, -1, -1]
    np.testing.assert_allclose(t[0, 4:6], [424.143, 251.656], rtol=1e-6)
    assert anns[1].attributes["score"][0] == pytest.approx(0.89)
    # the reference dataset: images/ beside label.txt
    (tmp_path / "images").mkdir()
    ds = rt.RetinaFaceDataset.from_file(p)
    assert ds.image_root == tmp_path / "images" and len(ds) == 2
    assert ds.image_path(0) == tmp_path / "images" / anns[0].path
    # the dataset itself takes parsed annotations; a path still works, deprecated
    with pytest.warns(DeprecationWarning, match="from_file"):
        old = rt.RetinaFaceDataset(p)
    assert old.image_root == ds.image_root and [i[0] for i in old.items] == [i[0] for i in ds.items]
    same = rt.RetinaFaceDataset(anns, tmp_path / "images")
    for (pa, ta), (pb, tb) in zip(same.items, ds.items, strict=True):
        assert pa == pb
        np.testing.assert_array_equal(ta, tb)
    # a wrongly laid out folder: the error names the file it looked for
    from faceetl.images import ImageError

    with pytest.raises(ImageError, match=f"{tmp_path / 'images' / anns[0].path}: file not found"):
        ds.load(0)


def test_dlib_xml_to_label_txt(tmp_path: Path) -> None:
    anns = rt.read_dlib_xml(PASCAL_XML)
    boxes = dlib_pascal_boxes()
    assert sorted(a.path for a in anns) == sorted(boxes)
    assert sum(len(a) for a in anns) == 18
    for a in anns:
        assert a.has_landmarks.all()
        # the same faces as training.xml (one box there differs by 6 px)
        assert (iou(a.boxes, boxes[a.path]).max(axis=1) > 0.7).all()
        lm = a.landmarks
        assert (lm[:, 0, 0] < lm[:, 1, 0]).all() and (lm[:, 3, 0] < lm[:, 4, 0]).all()
        eyes_y = lm[:, :2, 1].mean(axis=1)
        assert (eyes_y < lm[:, 2, 1]).all() and (lm[:, 2, 1] < lm[:, 3:, 1].mean(axis=1)).all()
        inside = (lm >= a.boxes[:, None, :2] - 2) & (lm <= a.boxes[:, None, 2:] + 2)
        assert inside.all()
    # eye centres are the means of the six eye-contour points of the 68
    import xml.etree.ElementTree as ET

    box = next(ET.parse(PASCAL_XML).getroot().iter("box"))
    p68 = np.array([[float(q.get("x")), float(q.get("y"))] for q in box.iter("part")])
    five = rt.five_from_68(p68)
    np.testing.assert_allclose(five[0], p68[36:42].mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(five[2], p68[30])
    np.testing.assert_allclose(five[[3, 4]], p68[[48, 54]])

    label = rt.write_retinaface_labels(anns, tmp_path / "train" / "label.txt")
    assert rt.annotation_format(label) == "label"
    back = rt.read_retinaface_labels(label)
    assert [a.path for a in back] == [a.path for a in anns]
    for a, b in zip(anns, back, strict=True):
        np.testing.assert_allclose(b.boxes, a.boxes, atol=1e-3)
        np.testing.assert_allclose(b.landmarks, a.landmarks, atol=1e-3)
        assert b.has_landmarks.all()
    # ... and as a training set with the images beside the XML
    ds = rt.RetinaFaceDataset.from_file(label, IMAGES / "dlib_pascal", image_size=160)
    x, t = ds[0]
    assert x.shape == (3, 160, 160) and x.dtype == torch.float32
    assert t.shape[1] == 15 and (t[:, 14] == 1).all()


# ----------------------------------------------------------------------------- augmentation


def test_dataset_items_are_normalised(shared_annotations) -> None:
    ds = rt.RetinaFaceDataset(shared_annotations, IMAGES, image_size=160, seed=3)
    seen_mirror = False
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            x, t = ds[i]
            assert x.shape == (3, 160, 160)
            assert len(t) >= 1  # the crop keeps a face at least
            assert (t[:, :4] >= 0).all() and (t[:, :4] <= 1).all()
            assert (t[:, 2] > t[:, 0]).all() and (t[:, 3] > t[:, 1]).all()
            with_lm = t[:, 14] == 1
            assert (t[~with_lm, 4:14] == -1).all()
            lm = t[with_lm, 4:14].reshape(-1, 5, 2)
            assert ((lm >= 0) & (lm <= 1)).all()
            # eye / mouth order survives mirroring (left = smaller x)
            assert (lm[:, 0, 0] <= lm[:, 1, 0]).all()
            seen_mirror |= bool(len(lm))
    assert seen_mirror
    # reproducible per (seed, epoch, index), different across epochs
    ds.set_epoch(1)
    a = ds[2]
    assert torch.equal(ds[2][0], a[0]) and torch.equal(ds[2][1], a[1])
    ds.set_epoch(2)
    assert not torch.equal(ds[2][0], a[0])
    # mean subtracted BGR: the padding of the deterministic transform is exactly zero
    ev = rt.RetinaFaceDataset(shared_annotations, IMAGES, image_size=160, augment=False)
    x, t = ev[0]
    img_h, img_w = load_rgb(IMAGES / shared_annotations[0].path).shape[:2]
    assert img_w > img_h
    h = round(img_h / img_w * 160)
    assert float(x[:, h + 2 :].abs().max()) == 0.0 and float(x[:, : h - 2].abs().max()) > 0
    np.testing.assert_allclose(t[:, :4].numpy() * img_w, shared_annotations[0].boxes, atol=1e-2)


def test_random_crop_keeps_faces_centred_inside() -> None:
    rng = np.random.default_rng(0)
    image = np.zeros((400, 600, 3), np.uint8)
    targets = np.array(
        [
            [10, 10, 60, 60] + [-1] * 10 + [-1],
            [300, 200, 360, 260] + [310, 220, 350, 220, 330, 235, 315, 250, 345, 250] + [1],
            [560, 350, 640, 420] + [-1] * 10 + [-1],  # centre at x=600: outside any crop
        ],
        np.float32,
    )
    for _ in range(50):
        crop, t, pad = rt.random_crop(image, targets, 640, rng)
        assert not pad
        side = crop.shape[0]
        assert crop.shape[:2] == (side, side) and 0.3 * 400 - 1 <= side <= 400
        assert 1 <= len(t) <= 2
        assert (t[:, :2] >= 0).all() and (t[:, 2:4] <= side).all()
        lm = t[t[:, 14] == 1, 4:14]
        assert ((lm >= 0) & (lm <= side)).all()
    # tiny faces (at the training size) are dropped
    crop, t, pad = rt.random_crop(image, targets[1:2], 10, rng, min_face=8)
    assert pad and len(t) == 1  # the face is <= 5 px at 10 px: no crop accepted
    # mirror twice is the identity, the pairs swap once
    img = (np.arange(4 * 600 * 3) % 251).astype(np.uint8).reshape(4, 600, 3)
    m1, t1 = rt.mirror(img, targets)
    assert t1[1, 4] == 600 - 350 and t1[1, 6] == 600 - 310  # right eye became left
    m2, t2 = rt.mirror(m1, t1)
    np.testing.assert_array_equal(m2, img)
    np.testing.assert_allclose(t2, targets)


def test_crop_scale_is_drawn_as_the_reference_draws_it() -> None:
    """Pytorch_Retinaface's ``_crop``: ``random.choice([0.3, 0.45, 0.6, 0.8, 1.0])``, each value
    with p = 1/5, expectation (0.3 + 0.45 + 0.6 + 0.8 + 1.0) / 5 = 0.63; the old draw
    (``continuous_scale=True``): 1.0 with p = 0.2, else uniform in 0.3-1, expectation
    0.2 + 0.8 * 0.65 = 0.72."""
    n = 20_000
    rng = np.random.default_rng(0)
    drawn = np.array([rt.draw_crop_scale(rng) for _ in range(n)])
    assert rt.PRE_SCALES == (0.3, 0.45, 0.6, 0.8, 1.0)
    values, counts = np.unique(drawn, return_counts=True)
    assert tuple(values) == rt.PRE_SCALES
    np.testing.assert_allclose(counts / n, 0.2, atol=0.012)  # binomial sd 0.0028
    assert abs(drawn.mean() - 0.63) < 0.008  # sd of the mean 0.0018
    old = np.array([rt.draw_crop_scale(rng, continuous_scale=True) for _ in range(n)])
    assert old.min() >= 0.3 and old.max() == 1.0
    assert abs((old == 1.0).mean() - 0.2) < 0.012 and len(np.unique(old)) > n * 0.7
    assert abs(old.mean() - 0.72) < 0.008  # sd of the mean 0.0016
    # random_crop's squares: the five sides of a 400-px short side, or any side with the option
    image = np.zeros((400, 600, 3), np.uint8)
    face = np.array([[280, 180, 320, 220] + [-1] * 10 + [-1]], np.float32)  # in every crop
    sides = {rt.random_crop(image, face, 640, rng)[0].shape[0] for _ in range(300)}
    assert sides == {120, 180, 240, 320, 400}
    sides = {
        rt.random_crop(image, face, 640, rng, continuous_scale=True)[0].shape[0] for _ in range(300)
    }
    assert len(sides) > 20 and min(sides) >= 120 and max(sides) == 400


# ----------------------------------------------------------------------------- matching, loss


def _gt(n: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    c = torch.rand(n, 2, generator=g) * 0.6 + 0.2
    s = torch.rand(n, 1, generator=g) * 0.3 + 0.03
    boxes = torch.cat([c - s / 2, c + s / 2], 1)
    offs = torch.tensor([[-0.2, -0.1], [0.2, -0.1], [0.0, 0.05], [-0.15, 0.2], [0.15, 0.2]])
    lms = (c[:, None] + offs[None] * s[:, None]).reshape(n, 10)
    labels = torch.ones(n)
    labels[::3] = -1
    return boxes, lms, labels


def test_encode_decode_round_trip() -> None:
    priors = rt.normalised_priors(320)
    assert priors.shape == (2 * (40 * 40 + 20 * 20 + 10 * 10), 4)
    boxes, lms, _ = _gt(20)
    idx = torch.randint(0, len(priors), (20,), generator=torch.Generator().manual_seed(1))
    p = priors[idx]
    np.testing.assert_allclose(decode_boxes(rt.encode(boxes, p), p), boxes, atol=1e-6)
    np.testing.assert_allclose(
        decode_landmarks(rt.encode_landm(lms, p), p).reshape(-1, 10), lms, atol=1e-6
    )
    # the backend's pixel priors are the same anchors
    np.testing.assert_allclose(priors * 320, priors_for(320, 320), atol=1e-4)


def test_match() -> None:
    priors = rt.normalised_priors(320)
    boxes, lms, labels = _gt(6)
    tiny = torch.tensor([[0.5, 0.5, 0.505, 0.505]])  # best prior IoU < 0.2: not forced
    truths = torch.cat([boxes, tiny])
    all_lms = torch.cat([lms, torch.full((1, 10), -1.0)])
    all_labels = torch.cat([labels, torch.ones(1)])
    loc_t, conf_t, landm_t = rt.match(truths, all_labels, all_lms, priors, 0.35)
    ov = rt.box_iou(truths, rt.point_form(priors))
    best = ov.argmax(1)
    for j in range(len(boxes)):  # each face's best prior is positive, labelled as the face
        assert conf_t[best[j]] == labels[j]
        np.testing.assert_allclose(
            decode_boxes(loc_t[best[j] : best[j] + 1], priors[best[j] : best[j] + 1])[0],
            boxes[j],
            atol=1e-5,
        )
    assert conf_t[best[-1]] == 0 and ov[-1].max() < 0.2
    # positives: IoU >= 0.35 with some face, or forced; the rest background
    max_ov = ov.max(0).values
    assert (
        (conf_t != 0) == ((max_ov >= 0.35) | torch.isin(torch.arange(len(priors)), best[:-1]))
    ).all()
    # landmark targets decode to the matched face's points
    pos = torch.nonzero(conf_t == 1).squeeze(1)
    face = ov[:, pos].argmax(0)
    np.testing.assert_allclose(
        decode_landmarks(landm_t[pos], priors[pos]).reshape(-1, 10), all_lms[face], atol=1e-5
    )
    # no faces: all background
    _, c0, _ = rt.match(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, 10), priors)
    assert (c0 == 0).all()


def test_multibox_loss_and_hard_negatives() -> None:
    priors = rt.normalised_priors(160)
    targets = []
    for s in range(3):
        b, lm, lab = _gt(2 + 2 * s, seed=s)
        targets.append(torch.cat([b, lm, lab[:, None]], 1))
    targets.append(torch.zeros(0, 15))  # an image without faces
    g = torch.Generator().manual_seed(0)
    P = len(priors)
    preds = (torch.randn(4, P, 4, generator=g), torch.randn(4, P, 2, generator=g),
             torch.randn(4, P, 10, generator=g))  # fmt: skip
    crit = rt.MultiBoxLoss()
    out = crit(preds, priors, targets)
    assert all(torch.isfinite(v) and v > 0 for v in (out.loc, out.conf, out.landm))
    _, conf_t, _ = crit.targets(priors, targets)
    pos = conf_t != 0
    npos = pos.sum(1)
    assert out.num_pos == int(npos.sum()) and out.num_neg == int((7 * npos).sum())
    assert out.num_pos_landm == int((conf_t > 0).sum()) < out.num_pos
    # the negatives are the 7 x positives highest-loss background priors of each image
    per = torch.logsumexp(preds[1], 2) - preds[1][..., 0]
    neg = rt.hard_negatives(per, pos, 7)
    for i in range(4):
        k = int(7 * npos[i])
        assert int(neg[i].sum()) == k and not (neg[i] & pos[i]).any()
        if k:
            bg = per[i].masked_fill(pos[i], -np.inf)
            assert set(torch.topk(bg, k).indices.tolist()) == set(
                torch.nonzero(neg[i]).squeeze(1).tolist()
            )
    # perfect regressions: no box or landmark loss; confident right classes: tiny class loss
    loc_t, conf_t, landm_t = crit.targets(priors, targets)
    logits = torch.where(
        (conf_t != 0)[..., None], torch.tensor([-20.0, 20.0]), torch.tensor([20.0, -20.0])
    )
    perfect = crit((loc_t, logits, landm_t), priors, targets)
    assert float(perfect.loc) == 0 and float(perfect.landm) == 0 and float(perfect.conf) < 1e-6


def test_schedule() -> None:
    assert rt.default_milestones("mobilenet0.25", 250) == pytest.approx((190, 220))
    assert rt.default_milestones("resnet50", 100) == pytest.approx((70, 90))
    assert rt.default_milestones("mobilenet0.25", 25) == pytest.approx((19, 22))
    lr = [rt.learning_rate(i, 1e-3, (190, 220), 0.1, 10) for i in (0, 5, 10, 189, 190, 219, 220)]
    assert lr[0] == pytest.approx(1e-6) and 1e-6 < lr[1] < 1e-3
    assert lr[2:] == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4, 1e-5])


def test_init_and_load(tmp_path: Path) -> None:
    with pytest.raises(WeightsError):
        rt.resolve_init("no_such_weights.pth", "mobilenet0.25")
    path = rt.resolve_init("mobilenet0.25_Final.pth", "mobilenet0.25")
    assert (
        path == rt.resolve_init("released", "mobilenet0.25")
        and path.name == "mobilenet0.25_Final.pth"
    )
    assert rt.resolve_init(None, "mobilenet0.25") is None
    released = rt.load_model(path)
    assert rt.infer_network(released.state_dict()) == "mobilenet0.25"
    # backbone-only ImageNet-style weights ("module." prefix, an fc head) go into the body
    body = {f"module.{k}": v for k, v in released.body.state_dict().items()}
    body["module.fc.weight"] = torch.zeros(1000, 256)
    torch.save({"state_dict": body}, tmp_path / "mobilenetV1X0.25_pretrain.tar")
    torch.manual_seed(0)
    fresh = RetinaFace("mobilenet0.25")
    assert rt.load_init(fresh, tmp_path / "mobilenetV1X0.25_pretrain.tar") == "body"
    for k, v in released.body.state_dict().items():
        assert torch.equal(fresh.body.state_dict()[k], v)
    assert not torch.equal(fresh.ClassHead[0].conv1x1.weight, released.ClassHead[0].conv1x1.weight)
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(WeightsError):
        rt.load_init(fresh, tmp_path / "other.pth")


# ----------------------------------------------------------------------------- training


def _recall_hits(det: RetinaFaceDetector, annotations) -> list[float]:
    out = []
    for a in annotations:
        d = det.detect_batch([load_rgb(IMAGES / a.path)])[0]
        out.append(recall(d.boxes, a.boxes) * len(a))
    return out


@pytest.mark.slow
def test_finetune_lowers_loss_keeps_recall(shared_annotations, tmp_path: Path) -> None:
    size = 320
    train_ds = rt.RetinaFaceDataset(shared_annotations, IMAGES, image_size=size)
    fixed = rt.RetinaFaceDataset(shared_annotations, IMAGES, image_size=size, augment=False)
    released = rt.load_model(rt.resolve_init("released", "mobilenet0.25"))
    before = rt.evaluate_loss(released, fixed, batch_size=6)
    t0 = time.perf_counter()
    model, metrics = rt.train(
        train_ds, network="mobilenet0.25", epochs=4, batch_size=6, lr=1e-3,
        init="mobilenet0.25_Final.pth", checkpoint_dir=tmp_path, progress=False, val=fixed,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    after = rt.evaluate_loss(model, fixed, batch_size=6)
    log.info("fine-tune %.1fs, %s -> %s\n%s", seconds, before, after, metrics)
    assert list(metrics["epoch"]) == [1, 2, 3, 4]
    assert (metrics["images"] == 6).all() and np.isfinite(metrics["loss"]).all()
    assert metrics["lr"].iloc[0] == pytest.approx(1e-3) and metrics["lr"].iloc[-1] < 1e-3
    assert after["loss"] < 0.97 * before["loss"]
    assert metrics["val_loss"].iloc[-1] == pytest.approx(after["loss"], rel=1e-5)
    # the checkpoint loads into the backend (biubug6 layout) and holds the trained weights
    for f in ("last.pt", "epoch_004.pt", "mobilenet0.25_Final.pth"):
        assert (tmp_path / f).is_file()
    tuned = RetinaFaceDetector(weights=str(tmp_path / "last.pt"))
    final = RetinaFaceDetector(weights=str(tmp_path / "mobilenet0.25_Final.pth"))
    sd = model.state_dict()
    for k, v in tuned.model.state_dict().items():
        assert torch.equal(v.cpu(), sd[k].cpu()) and torch.equal(final.model.state_dict()[k], v)
    assert not torch.equal(sd["fpn.merge1.0.weight"], released.state_dict()["fpn.merge1.0.weight"])
    base_hits = _recall_hits(RetinaFaceDetector(), shared_annotations)
    tuned_hits = _recall_hits(tuned, shared_annotations)
    total = sum(len(a) for a in shared_annotations)
    log.info("recall released %s -> fine-tuned %s", base_hits, tuned_hits)
    assert sum(base_hits) / total > 0.7  # 142 of 187 faces at conf 0.5
    assert sum(tuned_hits) >= sum(base_hits)
    assert tuned_hits[2:] == base_hits[2:]  # all PASCAL faces, before and after


@pytest.mark.slow
def test_scratch_run_learns(shared_annotations) -> None:
    """From random weights, 120 steps on the six photos (no augmentation: they are memorised)."""
    ds = rt.RetinaFaceDataset(shared_annotations, IMAGES, image_size=160, augment=False)
    torch.manual_seed(1)  # train() draws its initial weights the same way
    before = rt.evaluate_loss(RetinaFace("mobilenet0.25"), ds, batch_size=6)["loss"]
    model, metrics = rt.train(
        ds, epochs=40, batch_size=2, lr=1e-2, init=None, progress=False, seed=1
    )
    loss = metrics["loss"].to_numpy()
    after = rt.evaluate_loss(model, ds, batch_size=6)["loss"]
    log.info("from scratch: %s; eval loss %.2f -> %.2f", np.round(loss, 2), before, after)
    assert len(loss) == 40 and np.isfinite(loss).all()
    assert loss[0] > 20 and before > 20  # an untrained network
    assert loss[-3:].mean() < 0.3 * loss[0]  # measured 0.09-0.11 over seeds 0-2
    terms = metrics[["loss_loc", "loss_conf", "loss_landm"]]
    assert terms.iloc[-3:].mean().lt(0.5 * terms.iloc[0]).all()
    assert after < 0.5 * before  # in eval mode (running BatchNorm statistics) too


def test_resume_repeats_the_uninterrupted_run(shared_annotations, tmp_path: Path, caplog) -> None:
    anns = shared_annotations[2:]  # the PASCAL photos
    ds = rt.RetinaFaceDataset(anns, IMAGES, image_size=128)
    kw = dict(epochs=3, batch_size=2, lr=1e-2, init=None, progress=False)
    full, m_full = rt.train(ds, checkpoint_dir=tmp_path / "a", **kw)
    # an interruption after epoch 2: last.pt is epoch 2's checkpoint
    ck = tmp_path / "b"
    shutil.copytree(tmp_path / "a", ck)
    (ck / "epoch_003.pt").unlink()
    shutil.copy(ck / "epoch_002.pt", ck / "last.pt")
    assert torch.load(ck / "last.pt", weights_only=True)["epoch"] == 2
    with caplog.at_level(logging.INFO, logger="faceetl.train.retinaface"):
        resumed, m_res = rt.train(ds, checkpoint_dir=ck, **kw)
    assert "resuming" in caplog.text and "epoch 3 of 3" in caplog.text
    assert list(m_res["epoch"]) == [1, 2, 3]
    np.testing.assert_allclose(m_res["loss"], m_full["loss"], rtol=1e-5)
    assert m_res["seconds"].iloc[:2].tolist() == m_full["seconds"].iloc[:2].tolist()  # kept
    for k, v in full.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, rtol=1e-5, atol=1e-6)
    assert torch.load(ck / "last.pt", weights_only=True)["epoch"] == 3
    # a finished run resumes to nothing; resume=False starts again
    again, m_again = rt.train(ds, checkpoint_dir=ck, **kw)
    assert len(m_again) == 3 and m_again["seconds"].tolist() == m_res["seconds"].tolist()
    _, m_new = rt.train(ds, checkpoint_dir=ck, resume=False, **(kw | {"epochs": 1}))
    assert len(m_new) == 1 and torch.load(ck / "last.pt", weights_only=True)["epoch"] == 1
    with pytest.raises(ValueError, match="image_size"):
        rt.train(rt.RetinaFaceDataset(anns, IMAGES, image_size=96), checkpoint_dir=ck, **kw)


@pytest.mark.slow
def test_ddp_two_processes(shared_annotations, tmp_path: Path) -> None:
    """torch.distributed with gloo: two CPU processes, one image each per step."""
    ds = rt.RetinaFaceDataset(shared_annotations[2:], IMAGES, image_size=128)
    model, metrics = rt.train(
        ds, epochs=2, batch_size=2, lr=1e-2, init="released", progress=False,
        world_size=2, checkpoint_dir=tmp_path, keep_checkpoints=1,
    )  # fmt: skip
    assert list(metrics["epoch"]) == [1, 2]
    assert (metrics["images"] == 4).all()  # summed over both processes
    assert [p.name for p in tmp_path.glob("epoch_*.pt")] == ["epoch_002.pt"]
    ck = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ck["config"]["world_size"] == 2 and ck["config"]["epoch_size"] == 2
    for k, v in model.state_dict().items():
        assert torch.equal(ck["state_dict"][k], v)
    released = rt.load_model(rt.resolve_init("released", "mobilenet0.25"))
    assert not torch.equal(
        model.state_dict()["body.stage1.0.0.weight"], released.body.stage1[0][0].weight
    )
    RetinaFaceDetector(weights=str(tmp_path / "last.pt"))  # loads
