"""Face-parsing training (``faceetl.train.parsing``) on a tiny CelebAMask-HQ built from real data.

The dataset: the shared 512x512 portrait ``faceparsing_116_ori.png`` and five variants of it
(mirrored, recoloured, zoomed, rotated, darkened), each written as a 1024x1024 JPEG in
``CelebA-HQ-img/`` with ids spread over two annotation folders (id // 2000 = 0 and 1). Part
masks are drawn from the dlib 68-point landmarks found on each variant: skin = hull of the jaw
and the brows raised to the forehead, brows/eyes/nose/lips/mouth = the landmark groups'
polygons, neck = the region under the jaw, hair = a band above the brows that overlaps the top
of the skin hull (merged, the overlap must become hair). ``l_`` is the image-left part (dlib
points 36-41 / 17-21); CelebAMask-HQ's own side convention does not matter here as long as it
is consistent. Training runs on CPU at 128 px (crop 112).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from faceetl.backends.base import get_backend
from faceetl.nets.bisenet import load_bisenet
from faceetl.predictors.parsing import ParsingPredictor, preprocess
from faceetl.train import parsing as tp
from helpers import IMAGES, load_rgb

SAMPLE = IMAGES / "parsing" / "faceparsing_116_ori.png"
IDS = (0, 1, 2, 1999, 2000, 2001)
SIZE = 128  # training resolution (CPU)
CROP = 112

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------- building the tiny dataset
def variants(rgb: np.ndarray) -> list[np.ndarray]:
    """Six 512x512 pictures of the sample: as is and five honest photometric/geometric changes."""
    h, w = rgb.shape[:2]
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    hsv[..., 0] = (hsv[..., 0].astype(int) + 12) % 180
    recolour = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    zoom = cv2.resize(rgb[30:462, 50:482], (w, h), interpolation=cv2.INTER_LINEAR)
    rot = cv2.warpAffine(
        rgb, cv2.getRotationMatrix2D((w / 2, h / 2), 7, 1.0), (w, h), borderMode=cv2.BORDER_REFLECT
    )
    dark = cv2.GaussianBlur(
        np.clip(rgb.astype(np.float32) * 0.7 + 10, 0, 255).astype(np.uint8), (3, 3), 0
    )
    return [rgb, np.ascontiguousarray(rgb[:, ::-1]), recolour, zoom, rot, dark]


def _poly(shape: tuple[int, int], pts: np.ndarray) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    cv2.fillPoly(m, [np.round(pts).astype(np.int32)], 255)
    return m


def _hull(shape: tuple[int, int], pts: np.ndarray) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    cv2.fillConvexPoly(m, cv2.convexHull(np.round(pts).astype(np.int32)), 255)
    return m


def part_masks(p: np.ndarray, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """Binary (0/255) part masks from 68 iBUG landmarks ``p`` (68, 2)."""
    brow_y = p[17:27, 1].mean()
    fh = p[8, 1] - brow_y  # brows to chin
    forehead = p[17:27].copy()
    forehead[:, 1] -= 0.45 * fh
    masks = {"skin": _hull(shape, np.concatenate([p[0:17], forehead]))}
    thick = max(2, int(round(0.05 * fh)))
    for name, sl in (("l_brow", slice(17, 22)), ("r_brow", slice(22, 27))):
        m = np.zeros(shape, np.uint8)
        cv2.polylines(m, [np.round(p[sl]).astype(np.int32)], False, 255, thick)
        masks[name] = m
    masks["l_eye"] = _poly(shape, p[36:42])
    masks["r_eye"] = _poly(shape, p[42:48])
    masks["nose"] = _hull(shape, p[27:36])
    masks["mouth"] = _poly(shape, p[60:68])
    masks["u_lip"] = _poly(shape, p[[48, 49, 50, 51, 52, 53, 54, 64, 63, 62, 61, 60]])
    masks["l_lip"] = _poly(shape, p[[54, 55, 56, 57, 58, 59, 48, 60, 67, 66, 65, 64]])
    bottom = shape[0] - 1
    masks["neck"] = _poly(shape, np.concatenate([p[4:13], [[p[12, 0], bottom], [p[4, 0], bottom]]]))
    # hair: an ellipse over the top of the head, above the brows (overlaps the skin's forehead)
    m = np.zeros(shape, np.uint8)
    cx = p[0:17, 0].mean()
    half_w = 0.65 * (p[16, 0] - p[0, 0])
    cv2.ellipse(
        m, (int(cx), int(brow_y - 0.3 * fh)), (int(half_w), int(0.55 * fh)), 0, 0, 360, 255, -1
    )
    m[int(brow_y - 0.15 * fh) :] = 0
    masks["hair"] = m
    return {k: v for k, v in masks.items() if v.any()}


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, dict]]:
    """A CelebAMask-HQ release layout in tmp; returns (root, {id: part masks})."""
    root = tmp_path_factory.mktemp("celebamask_hq")
    (root / "CelebA-HQ-img").mkdir()
    dlib = get_backend("dlib")
    written: dict[int, dict[str, np.ndarray]] = {}
    for image_id, rgb in zip(IDS, variants(load_rgb(SAMPLE)), strict=True):
        det = dlib.detect_batch([rgb])[0]
        assert len(det) >= 1, f"dlib found no face on variant {image_id}"
        masks = part_masks(det.extra["landmarks68"][0], rgb.shape[:2])
        big = cv2.resize(rgb, (1024, 1024), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(root / "CelebA-HQ-img" / f"{image_id}.jpg"), big[..., ::-1],
                    [cv2.IMWRITE_JPEG_QUALITY, 95])  # fmt: skip
        for part, m in masks.items():
            path = tp.part_mask_path(root / tp.ANNO_DIR, image_id, part)
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), m)
        written[image_id] = masks
    return root, written


@pytest.fixture(scope="module")
def small(dataset_root) -> tp.CelebAMaskHQ:
    """The tiny set at the training resolution, augmented, each image 8 times per epoch."""
    return tp.CelebAMaskHQ(dataset_root[0], image_size=SIZE, crop_size=CROP, repeat=8, cache=True)


@pytest.fixture(scope="module")
def trained(small, tmp_path_factory) -> tuple[torch.nn.Module, object, Path]:
    ckdir = tmp_path_factory.mktemp("parsing_run")
    model, metrics = tp.train(
        small, epochs=4, batch_size=4, lr=1e-2, checkpoint_dir=ckdir, progress=False,
        device="cpu", keep_epochs=False,
    )  # fmt: skip
    return model, metrics, ckdir


# ---------------------------------------------------------------- layout and merge
def test_part_mask_path_layout():
    a = Path("anno")
    assert tp.part_mask_path(a, 7, "skin") == a / "0" / "00007_skin.png"
    assert tp.part_mask_path(a, 1999, "hair") == a / "0" / "01999_hair.png"
    assert tp.part_mask_path(a, 2000, "l_eye") == a / "1" / "02000_l_eye.png"
    assert tp.part_mask_path(a, 29999, "hat") == a / "14" / "29999_hat.png"


def test_merge_later_parts_overwrite_earlier():
    z = np.zeros((8, 8), np.uint8)
    skin, nose, hair = z.copy(), z.copy(), z.copy()
    skin[1:7, 1:7] = 255
    nose[3:5, 3:5] = 255
    hair[0:3, :] = 255
    # dict order must not matter: the merge order is PARTS'
    m = tp.merge_part_masks({"hair": hair, "nose": nose, "skin": skin})
    assert m[2, 2] == tp.PARTS.index("hair") + 1 == 17  # in skin and hair -> hair
    assert m[4, 4] == tp.PARTS.index("nose") + 1 == 10  # in skin and nose -> nose
    assert m[6, 6] == 1 and m[7, 7] == 0 and m[0, 7] == 17
    # CelebAMask-HQ's g_mask.py order labels the same parts differently
    g = tp.merge_part_masks({"skin": skin, "nose": nose, "hair": hair}, parts=tp.G_MASK_PARTS)
    assert g[4, 4] == 2 and g[2, 2] == tp.G_MASK_PARTS.index("hair") + 1
    with pytest.raises(ValueError, match="unknown parts"):
        tp.merge_part_masks({"beard": skin})
    assert tp.merge_part_masks({}, size=4).shape == (4, 4)


def test_release_layout_is_merged_in_order(dataset_root):
    root, written = dataset_root
    assert sorted(p.name for p in (root / tp.ANNO_DIR).iterdir()) == ["0", "1"]
    ds = tp.CelebAMaskHQ(root, augment=False)
    assert ds.layout == "parts" and ds.ids == [str(i) for i in IDS] and len(ds) == 6
    for k, image_id in enumerate(IDS):
        rgb, label = ds.sample(k)
        assert rgb.shape == (512, 512, 3) and label.shape == (512, 512)  # 1024 image resized
        masks = written[image_id]
        expect = np.zeros((512, 512), np.uint8)
        for lab, part in enumerate(tp.PARTS, start=1):
            if part in masks:
                expect[masks[part] > 0] = lab
        np.testing.assert_array_equal(label, expect)
        both = (masks["skin"] > 0) & (masks["hair"] > 0)
        assert both.sum() > 200  # the drawn hair really overlaps the skin hull
        assert (label[both] == 17).all()
        present = {tp.CLASSES[v] for v in np.unique(label)}
        assert {"background", "skin", "l_eye", "r_eye", "nose", "u_lip", "neck", "hair"} <= present
    x, y = ds[0]
    assert x.dtype == torch.float32 and x.shape == (3, 512, 512)
    assert y.dtype == torch.int64 and y.shape == (512, 512)


def test_prepared_layout_matches(dataset_root, tmp_path):
    root, _ = dataset_root
    prep = tmp_path / "prepared"
    (prep / "CelebA-HQ-img").mkdir(parents=True)
    for p in (root / "CelebA-HQ-img").iterdir():
        (prep / "CelebA-HQ-img" / p.name).symlink_to(p)
    out = tp.write_label_maps(root, prep / "mask")
    assert sorted(q.name for q in out.iterdir()) == sorted(f"{i}.png" for i in IDS)
    a = tp.CelebAMaskHQ(root, augment=False, image_size=256)
    b = tp.CelebAMaskHQ(prep, augment=False, image_size=256)
    assert b.layout == "labels" and b.ids == a.ids
    for k in range(len(a)):
        np.testing.assert_array_equal(a.label(k), b.label(k))
        np.testing.assert_array_equal(a.sample(k)[0], b.sample(k)[0])
    with pytest.raises(FileNotFoundError):
        tp.CelebAMaskHQ(tmp_path / "nothing")


# ---------------------------------------------------------------- augmentation
def test_flip_swaps_left_and_right(dataset_root):
    ds = tp.CelebAMaskHQ(
        dataset_root[0], image_size=256, crop_size=256, scales=(1.0,), flip=1.0, jitter=None
    )
    rgb, label = ds.sample(0)
    img, lab = ds.transform(rgb, label)
    np.testing.assert_array_equal(img, rgb[:, ::-1])
    swapped = label[:, ::-1].copy()
    for a, b in tp.FLIP_PAIRS:
        swapped[label[:, ::-1] == a] = b
        swapped[label[:, ::-1] == b] = a
    np.testing.assert_array_equal(lab, swapped)
    # the image-left eye of the original is the image-right eye after the flip: now r_eye
    assert (label == 4).any() and (lab == 5).sum() == (label == 4).sum()
    assert ((lab == 5) == (label == 4)[:, ::-1]).all()


def test_random_scale_crop_and_jitter(dataset_root):
    ds = tp.CelebAMaskHQ(dataset_root[0], image_size=256, crop_size=224, cache=True)
    rgb, label = ds.sample(0)
    torch.manual_seed(0)
    sizes = set()
    for _ in range(12):
        x, y = ds[0]
        assert x.shape == (3, 224, 224) and y.shape == (224, 224)
        assert set(np.unique(y.numpy())) <= set(np.unique(label))
        sizes.add(int((y > 0).sum()))
    assert len(sizes) > 3  # different scales / crops
    # jitter changes the colours only: same label with jitter on and off
    ds2 = tp.CelebAMaskHQ(dataset_root[0], image_size=256, crop_size=256, scales=(1.0,), flip=0.0)
    torch.manual_seed(1)
    img, lab = ds2.transform(rgb, label)
    np.testing.assert_array_equal(lab, label)
    assert np.abs(img.astype(int) - rgb.astype(int)).mean() > 1.0
    # a crop larger than the scaled image enlarges it first
    ds3 = tp.CelebAMaskHQ(dataset_root[0], image_size=128, crop_size=200, scales=(0.75,))
    x, y = ds3[1]
    assert x.shape == (3, 200, 200) and y.shape == (200, 200)


# ---------------------------------------------------------------- loss and schedule
def test_ohem_keeps_at_least_n_min_and_ignores_255():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 19, (2, 16, 16), generator=g)
    labels[0, :4] = 255  # 64 ignored pixels
    valid = labels != 255
    # confident and right almost everywhere: few pixels exceed the 0.7 threshold
    logits = torch.full((2, 19, 16, 16), -4.0)
    logits.scatter_(1, labels.clamp(max=18).unsqueeze(1), 6.0)
    logits[1, :, 0, :3] = 0.0  # three hard pixels
    logits.requires_grad_(True)
    crit = tp.OhemCELoss(0.7, n_min=50)
    loss = crit(logits, labels)
    ce = torch.nn.functional.cross_entropy(logits, labels, ignore_index=255, reduction="none")
    expect = ce[valid].topk(50).values.mean()
    torch.testing.assert_close(loss, expect)
    loss.backward()
    used = logits.grad.abs().sum(1) > 0
    assert int(used.sum()) == 50 and not used[~valid].any()  # n_min pixels, none ignored

    # changing the logits of ignored pixels changes nothing
    l2 = logits.detach().clone()
    l2[0, :, :4] = torch.randn(19, 4, 16, generator=g) * 10
    torch.testing.assert_close(crit(l2, labels), loss.detach())

    # random logits: most pixels are hard, the loss is their mean (more than n_min of them)
    rnd = torch.randn(2, 19, 16, 16, generator=g)
    ce = torch.nn.functional.cross_entropy(rnd, labels, ignore_index=255, reduction="none")[valid]
    hard = ce[ce > -np.log(0.7)]
    assert hard.numel() > 50
    torch.testing.assert_close(crit(rnd, labels), hard.mean())
    # default n_min: 1/16 of the pixels of the batch (face-parsing's 16*448*448//16 for 16 images)
    easy = logits.detach()
    ce_easy = torch.nn.functional.cross_entropy(easy, labels, ignore_index=255, reduction="none")
    k = labels.numel() // 16
    torch.testing.assert_close(
        tp.OhemCELoss(0.7)(easy, labels), ce_easy[valid].topk(k).values.mean()
    )
    # all ignored: zero, still differentiable
    z = tp.OhemCELoss()(rnd.requires_grad_(True), torch.full_like(labels, 255))
    assert z.requires_grad and float(z.detach()) == 0.0


def test_schedule_and_param_groups():
    lr = [tp.learning_rate(i, 1e-2, 100, 10) for i in range(101)]
    assert lr[0] == pytest.approx(1e-5) and lr[10] == pytest.approx(1e-2)
    assert all(a < b for a, b in zip(lr[:10], lr[1:11], strict=True))  # warm-up rises
    assert all(a > b for a, b in zip(lr[10:99], lr[11:100], strict=True))  # poly decays
    assert lr[55] == pytest.approx(1e-2 * 0.5**0.9) and lr[100] == 0.0
    net = tp.build_model()
    groups = tp.param_groups(net, 5e-4)
    ids = {id(p): g for g in groups for p in g["params"]}
    assert len(ids) == len(list(net.parameters()))
    assert (
        ids[id(net.ffm.conv1.weight)]["lr_mul"] == 10
        and ids[id(net.conv_out.conv_out.weight)]["lr_mul"] == 10
    )
    assert ids[id(net.conv_out16.conv.bn.bias)]["weight_decay"] == 0.0
    assert ids[id(net.cp.resnet.conv1.weight)]["lr_mul"] == 1
    assert ids[id(net.cp.resnet.conv1.weight)]["weight_decay"] == 5e-4
    assert ids[id(net.cp.resnet.bn1.weight)]["weight_decay"] == 0.0
    x = torch.randn(2, 3, 64, 64)
    outs = tp.forward_heads(net.eval(), x)
    assert [tuple(o.shape) for o in outs] == [(2, 19, 64, 64)] * 3
    torch.testing.assert_close(outs[0], net(x))  # main head = the predictor's forward


# ---------------------------------------------------------------- evaluation
def test_iou_confusion_and_absent_classes():
    label = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 255, 255]])
    pred = np.array([[0, 0, 1, 0], [0, 0, 1, 1], [2, 1, 5, 7]])
    cm = tp.confusion_matrix(pred, label)
    assert cm.sum() == 10  # the two ignored pixels are not counted
    r = tp.iou_from_confusion(cm)
    assert r["iou"]["background"] == pytest.approx(4 / 5)
    assert r["iou"]["skin"] == pytest.approx(3 / 5)
    assert r["iou"]["l_brow"] == pytest.approx(1 / 2)
    assert np.isnan(r["iou"]["hat"])  # absent from both: not in the mean
    assert r["n_classes"] == 3
    assert r["miou"] == pytest.approx((4 / 5 + 3 / 5 + 1 / 2) / 3)
    assert r["pixel_accuracy"] == pytest.approx(8 / 10)
    nb = tp.iou_from_confusion(cm, include_background=False)
    assert nb["miou"] == pytest.approx((3 / 5 + 1 / 2) / 2)
    # a class predicted but absent from the labels counts, with IoU 0
    r2 = tp.iou_from_confusion(tp.confusion_matrix(np.array([3, 1]), np.array([1, 1])))
    assert r2["iou"]["r_brow"] == 0.0 and r2["miou"] == pytest.approx(0.25)


# ---------------------------------------------------------------- training
def best_constant_miou(ds: tp.CelebAMaskHQ) -> float:
    """The best mIoU a predictor giving every pixel one class reaches on ``ds``."""
    counts = np.zeros(tp.N_CLASSES)
    for k in range(len(ds.ids)):
        counts += np.bincount(ds.label(k).ravel(), minlength=tp.N_CLASSES)[: tp.N_CLASSES]
    present = int((counts > 0).sum())
    return float(counts.max() / counts.sum() / present)


@pytest.mark.slow
def test_training_lowers_loss_and_learns(trained, small):
    model, metrics, ckdir = trained
    assert list(metrics["epoch"]) == [1, 2, 3, 4]
    assert metrics["iterations"].iloc[-1] == 4 * 12
    first, last = metrics["train_loss"].iloc[0], metrics["train_loss"].iloc[-1]
    assert last < 0.7 * first, metrics[["epoch", "train_loss"]]
    assert metrics["lr"].iloc[-1] < metrics["lr"].max()  # the poly decay ran
    ev_ds = small.with_augment(False)
    res = tp.evaluate(model, ev_ds, batch_size=6)
    const = best_constant_miou(ev_ds)
    untrained = tp.evaluate(tp.build_model(), ev_ds, batch_size=6)
    # 12 classes present, background ~45% of the pixels: a constant predictor reaches ~0.04
    assert const < 0.06
    assert res["miou"] > 3 * const, (res["miou"], const, untrained["miou"])
    assert res["miou"] > untrained["miou"] + 0.1
    # 48 steps from scratch at 128 px learn the large regions; eyes, brows and lips (a few
    # pixels at this size) need longer training
    for c in ("background", "skin", "hair"):
        assert res["iou"][c] > 0.5, (c, res["iou"])
    assert np.isnan(res["iou"]["hat"]) and res["pixel_accuracy"] > 0.7
    assert sorted(p.name for p in ckdir.iterdir()) == ["last.pt"]


@pytest.mark.slow
def test_resume_repeats_an_uninterrupted_run(dataset_root, tmp_path):
    ds = tp.CelebAMaskHQ(dataset_root[0], image_size=64, crop_size=56, cache=True)
    kw = dict(epochs=2, batch_size=3, lr=1e-2, progress=False, device="cpu")
    full, m_full = tp.train(ds, checkpoint_dir=tmp_path / "a", **kw)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "epoch_001.pt",
        "epoch_002.pt",
        "last.pt",
    ]
    # a run that died after its first epoch: only epoch 1's checkpoint is there
    (tmp_path / "b").mkdir()
    shutil.copy(tmp_path / "a" / "epoch_001.pt", tmp_path / "b" / "last.pt")
    resumed, m2 = tp.train(ds, checkpoint_dir=tmp_path / "b", **kw)
    assert list(m2["epoch"]) == [1, 2]
    assert m2["seconds"].iloc[0] == m_full["seconds"].iloc[0]  # epoch 1 was not rerun
    np.testing.assert_allclose(m2["train_loss"], m_full["train_loss"], rtol=1e-5)
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    ck = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert ck["epoch"] == 2 and ck["iteration"] == 4 and ck["config"]["max_iter"] == 4
    # a finished run resumed to the same number of epochs trains nothing more
    again, m3 = tp.train(ds, checkpoint_dir=tmp_path / "b", **kw)
    assert len(m3) == 2
    torch.testing.assert_close(again.state_dict(), b)
    # more epochs continue from the last one (with a warning: the schedule is re-planned)
    _, m4 = tp.train(ds, checkpoint_dir=tmp_path / "b", **(kw | {"epochs": 3}))
    assert list(m4["epoch"]) == [1, 2, 3] and m4["iterations"].iloc[-1] == 6
    # resume=False starts over
    _, m5 = tp.train(ds, checkpoint_dir=tmp_path / "b", resume=False, **(kw | {"epochs": 1}))
    assert len(m5) == 1


def test_checkpoint_loads_into_parsing_predictor(trained, tmp_path):
    model, _, ckdir = trained
    rgb = load_rgb(SAMPLE)
    with torch.no_grad():
        expect = model.eval()(torch.from_numpy(preprocess([rgb]))).argmax(1)[0].numpy()
    pred = ParsingPredictor(weights=ckdir / "last.pt", device="cpu")
    got = pred.masks([rgb])[0]
    np.testing.assert_array_equal(got, expect)
    assert {"background", "skin"} <= {tp.CLASSES[v] for v in np.unique(got)}
    # the bare state dict: the released file's layout, loaded strictly
    bare = tp.export_weights(ckdir, tmp_path / "bisenet.pth")
    sd = torch.load(bare, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in sd.values()) and "cp.resnet.conv1.weight" in sd
    net = load_bisenet(bare)
    np.testing.assert_array_equal(
        ParsingPredictor(weights=bare, device="cpu").masks([rgb])[0], expect
    )
    torch.testing.assert_close(net.state_dict()["conv_out.conv_out.weight"],
                               model.state_dict()["conv_out.conv_out.weight"])  # fmt: skip
    # and it initialises a new training run (init=), as does a torchvision-named ResNet-18
    again = tp.build_model(init=bare)
    torch.testing.assert_close(again.state_dict()["ffm.conv1.weight"], sd["ffm.conv1.weight"])
    backbone = {
        k.removeprefix("cp.resnet."): v for k, v in sd.items() if k.startswith("cp.resnet.")
    }
    backbone["fc.weight"] = torch.zeros(1000, 512)
    net2 = tp.build_model(init=backbone)
    torch.testing.assert_close(
        net2.cp.resnet.layer4[1].conv2.weight, sd["cp.resnet.layer4.1.conv2.weight"]
    )
    with pytest.raises(ValueError, match="do not fit"):
        tp.build_model(init={"cp.resnet.conv1.weight": torch.zeros(1)} | {"bogus": torch.zeros(1)})


@pytest.mark.slow
def test_ddp_two_processes(dataset_root, tmp_path):
    """torch.distributed with gloo: two CPU processes, three of the six images each per step."""
    ds = tp.CelebAMaskHQ(dataset_root[0], image_size=64, crop_size=56, cache=True)
    model, metrics = tp.train(
        ds, epochs=2, batch_size=6, lr=1e-2, progress=False, device="cpu", world_size=2,
        checkpoint_dir=tmp_path, keep_checkpoints=1, val=ds.with_augment(False),
    )  # fmt: skip
    assert list(metrics["epoch"]) == [1, 2]
    assert list(metrics["iterations"]) == [1, 2]  # one step of 3 + 3 images per epoch
    assert (metrics["images"] == 6).all()  # summed over both processes
    assert np.isfinite(metrics["train_loss"]).all() and metrics["val_miou"].notna().all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_002.pt", "last.pt"]
    ck = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ck["config"]["world_size"] == 2 and ck["config"]["max_iter"] == 2
    for k, v in model.state_dict().items():
        assert torch.equal(ck["state_dict"][k], v), k
    torch.manual_seed(0)  # train() draws its initial weights the same way
    start = tp.build_model().state_dict()
    for k in ("conv_out.conv_out.weight", "conv_out16.conv_out.weight", "cp.resnet.conv1.weight"):
        assert not torch.equal(start[k], model.state_dict()[k]), k  # every head trained
    torch.testing.assert_close(load_bisenet(tmp_path / "last.pt").state_dict(), model.state_dict())
