"""Shared fixtures: the real data in ../shared, and a temporary FACEETL_HOME filled from it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from faceetl.backends.base import box_iou as iou  # noqa: F401 (tests import it from here)

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FACEETL_SHARED", ROOT.parent / "shared"))
IMAGES = SHARED / "images"
ANNOTATIONS = SHARED / "annotations"

if not (SHARED / "weights").is_dir():
    raise RuntimeError(
        f"test data not found at {SHARED}: the tests need ../shared beside the checkout"
    )

# no test may touch the network: weights come from the temporary home below
os.environ["FACEETL_OFFLINE"] = "1"


@pytest.fixture(scope="session", autouse=True)
def faceetl_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A FACEETL_HOME holding copies of every weight file in ../shared/weights."""
    home = tmp_path_factory.mktemp("faceetl_home")
    for f in (SHARED / "weights").rglob("*"):
        if f.is_file():
            shutil.copy2(f, home / f.name)
    old = os.environ.get("FACEETL_HOME")
    os.environ["FACEETL_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("FACEETL_HOME", None)
    else:
        os.environ["FACEETL_HOME"] = old


def load_rgb(path: str | Path) -> np.ndarray:
    from faceetl.io import load_image

    return load_image(path)


def assert_boxes_inside(boxes: np.ndarray, image: np.ndarray) -> None:
    """Every box lies within the image and has positive width and height."""
    h, w = image.shape[:2]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
    assert (boxes[:, 2:] > boxes[:, :2]).all()


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


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for a module (training tests: on a busy 2-core machine two threads
    ran up to 5x slower), restored afterwards."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
