"""What the tests share besides fixtures: where the real data is, and small checks on boxes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from faceetl.boxes import box_iou as iou

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FACEETL_SHARED", ROOT.parent / "shared"))
IMAGES = SHARED / "images"
ANNOTATIONS = SHARED / "annotations"
FACE = IMAGES / "single" / "fr_obama_small.jpg"


def load_rgb(path: str | Path) -> np.ndarray:
    from faceetl.images import load_image

    return load_image(path)


def assert_boxes_inside(boxes: np.ndarray, image: np.ndarray) -> None:
    """Every box lies within the image and has positive width and height."""
    h, w = image.shape[:2]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
    assert (boxes[:, 2:] > boxes[:, :2]).all()


def assert_valid_detections(det: object, image: np.ndarray, score_threshold: float = 0.0) -> None:
    """The backend contract for one image's Detections: float32 arrays of matching lengths,
    boxes inside the image with positive size, finite scores in [score_threshold, 1] best first,
    and each landmark point either finite or NaN in both coordinates."""
    from faceetl.backends.base import Detections

    assert isinstance(det, Detections)
    n = len(det)
    assert det.boxes.shape == (n, 4) and det.boxes.dtype == np.float32
    assert det.scores.shape == (n,) and det.scores.dtype == np.float32
    assert det.landmarks.shape == (n, 5, 2) and det.landmarks.dtype == np.float32
    for key, values in det.extra.items():
        assert len(values) == n, key
    assert_boxes_inside(det.boxes, image)
    assert np.isfinite(det.scores).all()
    assert ((det.scores >= score_threshold) & (det.scores <= 1)).all()
    assert (np.diff(det.scores) <= 0).all()  # best first
    assert not np.isinf(det.landmarks).any()
    assert (np.isnan(det.landmarks[..., 0]) == np.isnan(det.landmarks[..., 1])).all()


def recall(pred: np.ndarray, gt: np.ndarray, thr: float = 0.5) -> float:
    """Fraction of ground-truth boxes matched by some prediction at IoU >= thr."""
    if len(gt) == 0:
        return 1.0
    if len(pred) == 0:
        return 0.0
    return float((iou(gt, pred).max(axis=1) >= thr).mean())


def dlib_pascal_boxes() -> dict[str, np.ndarray]:
    """Annotated face boxes (x1 y1 x2 y2) of images/dlib_pascal, from dlib's imglab XML."""
    import xml.etree.ElementTree as ET

    out: dict[str, np.ndarray] = {}
    root = ET.parse(ANNOTATIONS / "dlib_pascal" / "training.xml").getroot()
    for img in root.iter("image"):
        boxes = []
        for b in img.iter("box"):
            t, left = float(b.get("top")), float(b.get("left"))
            w, h = float(b.get("width")), float(b.get("height"))
            boxes.append([left, t, left + w, t + h])
        out[Path(img.get("file")).name] = np.array(boxes)
    return out


def wider_gt() -> dict[str, np.ndarray]:
    """WIDER val GT boxes (x1 y1 x2 y2) of images/wider, keyed by file name."""
    import json

    data = json.loads((ANNOTATIONS / "wider" / "shared_wider_val_gt.json").read_text())
    out = {}
    for d in data:
        boxes = np.array(d["boxes_xywh"], float).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        out[Path(d["image"]).name] = boxes
    return out


def make_bad_inputs(folder) -> dict[str, object]:
    """Files of every awkward kind, built from a real photo; name -> path (or expected error)."""
    src = Image.open(FACE).convert("RGB")
    out = {}
    (folder / "zero.jpg").write_bytes(b"")
    out["zero"] = folder / "zero.jpg"
    data = FACE.read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    out["truncated"] = folder / "truncated.jpg"
    (folder / "text.jpg").write_text("this is not an image\n")
    out["text"] = folder / "text.jpg"
    src.convert("L").save(folder / "gray.png")
    out["gray"] = folder / "gray.png"
    rgba = src.convert("RGBA")
    rgba.putalpha(200)
    rgba.save(folder / "rgba.png")
    out["rgba"] = folder / "rgba.png"
    a16 = (np.asarray(src.convert("L"), np.uint16) * 257).astype(np.uint16)
    Image.fromarray(a16).save(folder / "sixteen.png")
    out["sixteen"] = folder / "sixteen.png"
    src.convert("CMYK").save(folder / "cmyk.jpg")
    out["cmyk"] = folder / "cmyk.jpg"
    # stored rotated 90 degrees; the EXIF orientation tag (6 = rotate 90 CW to view) undoes it
    exif = Image.Exif()
    exif[0x0112] = 6
    src.transpose(Image.Transpose.ROTATE_90).save(folder / "exif_rotated.jpg", exif=exif)
    out["exif"] = folder / "exif_rotated.jpg"
    big = folder / "huge.png"
    Image.new("L", (20000, 20000)).save(big, optimize=False, compress_level=1)
    out["huge"] = big
    uni = folder / "visages_été_顔.jpg"
    uni.write_bytes(data)
    out["unicode"] = uni
    out["missing"] = folder / "does_not_exist.jpg"
    return out


def bad_input_files(folder) -> list[Path]:
    """The files among :func:`make_bad_inputs` (what a decoder is handed as bytes)."""
    return [v for v in make_bad_inputs(folder).values() if isinstance(v, Path) and v.is_file()]


def decoded_pairs(paths, decoded) -> list[tuple[Path, object, np.ndarray]]:
    """Check ``decoded`` (one entry per path, as ``faceetl.batched.decode_jpegs`` returns)
    against the CPU decoder: an input it refuses must come back as the same ImageError. Returns
    (path, decoded tensor, CPU RGB array) of the others, for the caller's pixel check."""
    from faceetl.images import ImageError, load_image

    assert len(decoded) == len(paths)
    pairs = []
    for p, g in zip(paths, decoded, strict=True):
        try:
            want = load_image(p)
        except ImageError as e:
            assert isinstance(g, ImageError) and str(g) == str(e), p
            continue
        assert not isinstance(g, Exception), (p, g)
        pairs.append((p, g, want))
    return pairs


def stop_processes(procs: list) -> None:
    """Terminate started processes (the last started first) and wait for each; kill a process
    that does not end in 30 s."""
    import subprocess

    for p in procs[::-1]:
        p.terminate()
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()

