"""Train and fine-tune RetinaFace (Deng et al. 2019) as biubug6/Pytorch_Retinaface does.

>>> model, metrics = train("widerface/train/label.txt", network="mobilenet0.25",
...                        checkpoint_dir="runs/retinaface")
>>> det = RetinaFaceDetector(weights="runs/retinaface/last.pt")   # faceetl's retinaface backend

Annotations come from the official WIDER FACE ``wider_face_train_bbx_gt.txt`` layout
(:func:`read_wider_bbx_gt`), the RetinaFace ``label.txt`` layout with five landmarks
(:func:`read_retinaface_labels`) or dlib imglab XML (:func:`read_dlib_xml`, 68 points reduced to
the five). :class:`RetinaFaceDataset` applies the published training augmentation (random square
crop, photometric distortion, mirror with landmark swap, resize to 640 / 840, BGR mean
subtraction) and gives ``(image, targets)`` with targets ``(N, 15)``: x1 y1 x2 y2, ten landmark
coordinates (all normalised to [0, 1]) and a label (1: the face has landmarks, -1: it has not).

The loss is the multibox loss of the reference code: priors matched to faces at IoU 0.35 (each
face also gets its best prior), offsets encoded with variances (0.1, 0.2), hard negative mining
at 7 negatives per positive, smooth-L1 on boxes (weight 2) and on the landmarks of faces that
have them. SGD (momentum 0.9, weight decay 5e-4, lr 1e-3) divides the learning rate by ten at
76 % and 88 % of the epochs (mobilenet: 190 and 220 of 250; resnet50: 70 and 90 of 100).
Mixed precision runs on CUDA; with ``world_size > 1`` (or under ``torchrun``) training is
data-parallel with ``torch.distributed`` (DDP). Every epoch writes a resumable checkpoint whose
``state_dict`` has the released files' key layout, so it loads into the backend as ``weights=``.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..align import five_from_68
from ..images import load_image
from ..nets import list_weights
from ..nets.nms import box_iou
from ..nets.retinaface import ALIASES as _ALIASES
from ..nets.retinaface import CONFIGS, MEAN_BGR, RetinaFace
from ..nets.retinaface_priors import (
    VARIANCE,
    encode,
    encode_landm,
    match,
    normalised_priors,
    point_form,
)
from ..weights import WeightsError, fetch, load_state_dict, weights_info
from ._common import LAST, autocast, plain, save
from ._common import progress as progress_bar

log = logging.getLogger(__name__)

#: the published training settings (biubug6 data/config.py cfg_mnet / cfg_re50)
PUBLISHED: dict[str, dict[str, Any]] = {
    "mobilenet0.25": {"image_size": 640, "batch_size": 32, "epochs": 250, "decay": (190, 220)},
    "resnet50": {"image_size": 840, "batch_size": 24, "epochs": 100, "decay": (70, 90)},
}
WIDER_ATTRIBUTES = ("blur", "expression", "illumination", "invalid", "occlusion", "pose")
CHECKPOINT_VERSION = 1
_INTERPOLATIONS = (
    cv2.INTER_LINEAR,
    cv2.INTER_CUBIC,
    cv2.INTER_AREA,
    cv2.INTER_NEAREST,
    cv2.INTER_LANCZOS4,
)


# ============================================================================ annotations


@dataclass
class ImageAnnotation:
    """The faces of one image.

    ``path`` is as written in the annotation file (relative to an image root); ``boxes`` (N, 4)
    x1 y1 x2 y2 in pixels (``x2 = x + w``, as the reference code reads ``x y w h``);
    ``landmarks`` (N, 5, 2) in the RetinaFace order (left eye, right eye, nose, left and right
    mouth corner, "left" = smaller image x), -1 where a face has none; ``attributes`` holds
    per-face arrays (WIDER's blur ... pose, label.txt's landmark flags and score).
    """

    path: str
    boxes: np.ndarray
    landmarks: np.ndarray | None = None
    attributes: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4)
        n = len(self.boxes)
        if self.landmarks is None:
            self.landmarks = np.full((n, 5, 2), -1.0, np.float32)
        self.landmarks = np.asarray(self.landmarks, np.float32).reshape(n, 5, 2)

    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def has_landmarks(self) -> np.ndarray:
        """(N,) bool: all ten landmark coordinates given (none negative)."""
        assert self.landmarks is not None
        return (self.landmarks >= 0).all(axis=(1, 2))

    def targets(self) -> np.ndarray:
        """(N, 15) float32 in pixels: x1 y1 x2 y2, l0x l0y ... l4x l4y, label (1 / -1)."""
        assert self.landmarks is not None
        label = np.where(self.has_landmarks, 1.0, -1.0).astype(np.float32)
        return np.concatenate(
            [self.boxes, self.landmarks.reshape(-1, 10), label[:, None]], axis=1
        ).astype(np.float32)


def _floats(line: str) -> list[float] | None:
    """The numbers of a line, or None when it is not all numbers."""
    parts = line.split()
    try:
        return [float(p) for p in parts]
    except ValueError:
        return None


def _lines(path: str | os.PathLike) -> list[str]:
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def read_wider_bbx_gt(path: str | os.PathLike) -> list[ImageAnnotation]:
    """Read the official ``wider_face_{train,val}_bbx_gt.txt`` layout.

    Per image: its path, the face count, then one line per face
    ``x y w h blur expression illumination invalid occlusion pose``. A count of 0 is followed by
    a line of zeros (skipped). The six attributes come back in ``attributes``; no landmarks.
    """
    lines = _lines(path)
    out: list[ImageAnnotation] = []
    i = 0
    while i < len(lines):
        name = lines[i]
        if i + 1 >= len(lines):
            raise ValueError(f"{path}: image {name!r} has no face count (truncated file?)")
        try:
            count = int(float(lines[i + 1]))
        except ValueError:
            raise ValueError(f"{path}: line {i + 2} should be the face count of {name!r}") from None
        i += 2
        rows: list[list[float]] = []
        if count == 0:
            nums = _floats(lines[i]) if i < len(lines) else None
            if nums is not None and len(nums) >= 4:  # the zeros line of an empty image
                i += 1
        for _ in range(count):
            nums = _floats(lines[i]) if i < len(lines) else None
            if nums is None or len(nums) < 4:
                raise ValueError(f"{path}: line {i + 1} is not a face line of {name!r}")
            rows.append((nums + [0.0] * 6)[:10])
            i += 1
        arr = np.asarray(rows, np.float32).reshape(-1, 10)
        boxes = np.concatenate([arr[:, :2], arr[:, :2] + arr[:, 2:4]], axis=1)
        attrs = {k: arr[:, 4 + j].astype(np.int64) for j, k in enumerate(WIDER_ATTRIBUTES)}
        out.append(ImageAnnotation(name, boxes, None, attrs))
    return out


def read_retinaface_labels(path: str | os.PathLike) -> list[ImageAnnotation]:
    """Read the RetinaFace ``label.txt`` layout (the InsightFace WIDER annotations).

    ``# <image path>`` starts an image; each following line is a face
    ``x y w h l0x l0y f0 l1x l1y f1 ... l4x l4y f4 score`` with -1 for missing landmarks
    (lines of only ``x y w h`` have none). Flags and score go to ``attributes``.
    """
    out: list[ImageAnnotation] = []
    name: str | None = None
    rows: list[list[float]] = []

    def flush() -> None:
        if name is None:
            return
        arr = np.asarray(rows, np.float32).reshape(-1, 20)
        boxes = np.concatenate([arr[:, :2], arr[:, :2] + arr[:, 2:4]], axis=1)
        lms = arr[:, [4, 5, 7, 8, 10, 11, 13, 14, 16, 17]].reshape(-1, 5, 2)
        attrs = {"landmark_flags": arr[:, [6, 9, 12, 15, 18]], "score": arr[:, 19]}
        out.append(ImageAnnotation(name, boxes, lms, attrs))

    for k, line in enumerate(_lines(path), start=1):
        if line.startswith("#"):
            flush()
            tokens = line[1:].split()
            if not tokens:
                raise ValueError(f"{path}: line {k} has no image path")
            # some label files add the image size after the path: "# path width height"
            if len(tokens) >= 3 and tokens[-1].isdigit() and tokens[-2].isdigit():
                tokens = tokens[:-2]
            name, rows = " ".join(tokens), []
            continue
        nums = _floats(line)
        if name is None or nums is None or len(nums) < 4:
            raise ValueError(f"{path}: line {k} is not a face line (x y w h ...): {line[:60]!r}")
        if len(nums) < 18:  # a box without landmarks
            nums = nums[:4] + [-1.0] * 16
        rows.append((nums + [-1.0] * 20)[:20])
    flush()
    return out


def read_dlib_xml(path: str | os.PathLike, keep_ignored: bool = False) -> list[ImageAnnotation]:
    """Read dlib imglab XML: boxes (``x2 = left + width``), 68 parts reduced to the five.

    Boxes marked ``ignore='1'`` are dropped unless ``keep_ignored``; boxes without all 68
    parts get no landmarks.
    """
    root = ET.parse(path).getroot()
    out = []
    for img in root.iter("image"):
        boxes, lms = [], []
        for b in img.iter("box"):
            if b.get("ignore", "0") == "1" and not keep_ignored:
                continue
            t, left = float(b.get("top", 0)), float(b.get("left", 0))
            w, h = float(b.get("width", 0)), float(b.get("height", 0))
            boxes.append([left, t, left + w, t + h])
            parts = {p.get("name"): (float(p.get("x")), float(p.get("y"))) for p in b.iter("part")}
            names = [f"{i:02d}" for i in range(68)]
            if all(n in parts for n in names):
                lms.append(five_from_68(np.array([parts[n] for n in names])))
            else:
                lms.append(np.full((5, 2), -1.0, np.float32))
        out.append(
            ImageAnnotation(
                img.get("file", ""),
                np.asarray(boxes, np.float32).reshape(-1, 4),
                np.asarray(lms, np.float32).reshape(-1, 5, 2),
            )
        )
    return out


def _fmt(v: float) -> str:
    return f"{float(v):.3f}".rstrip("0").rstrip(".") if v != -1 else "-1.0"


def write_retinaface_labels(
    annotations: Iterable[ImageAnnotation], path: str | os.PathLike
) -> Path:
    """Write annotations in the RetinaFace ``label.txt`` layout (readable by the reference code)."""
    lines = []
    for ann in annotations:
        lines.append(f"# {ann.path}")
        assert ann.landmarks is not None
        score = ann.attributes.get("score")
        for k in range(len(ann)):
            x1, y1, x2, y2 = ann.boxes[k]
            vals = [x1, y1, x2 - x1, y2 - y1]
            if ann.has_landmarks[k]:
                for px, py in ann.landmarks[k]:
                    vals += [px, py, 0.0]
                vals.append(1.0 if score is None or score[k] < 0 else score[k])
            else:
                vals += [-1.0] * 16
            lines.append(" ".join(_fmt(v) for v in vals))
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def annotation_format(path: str | os.PathLike) -> str:
    """``"label"`` (RetinaFace label.txt), ``"bbx_gt"`` (WIDER) or ``"xml"`` (dlib imglab)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            s = line.strip()
            if not s:
                continue
            if s.startswith("<"):
                return "xml"
            return "label" if s.startswith("#") else "bbx_gt"
    return "label"


def read_annotations(path: str | os.PathLike) -> list[ImageAnnotation]:
    """Read any of the three layouts (see :func:`annotation_format`)."""
    fmt = annotation_format(path)
    if fmt == "xml":
        return read_dlib_xml(path)
    return read_retinaface_labels(path) if fmt == "label" else read_wider_bbx_gt(path)


def default_image_root(path: str | os.PathLike) -> Path:
    """Where the images of an annotation file are by default.

    label.txt: ``images/`` beside it (the reference layout ``train/label.txt``,
    ``train/images/``); the WIDER bbx_gt file (in ``wider_face_split/``):
    ``../WIDER_train/images`` or ``../WIDER_val/images`` when there; else the file's folder.
    """
    p = Path(path)
    if (p.parent / "images").is_dir():
        return p.parent / "images"
    for split in ("train", "val", "test"):
        if split in p.name:
            cand = p.parent.parent / f"WIDER_{split}" / "images"
            if cand.is_dir():
                return cand
    return p.parent


# ============================================================================ augmentation


def matrix_iof(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over the area of each box of ``a`` (N, 4) with each box of ``b`` (M, 4)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(rb - lt, axis=2) * (lt < rb).all(axis=2)
    area = np.prod(a[:, 2:] - a[:, :2], axis=1)
    return inter / np.maximum(area[:, None], 1)


def random_crop(
    image: np.ndarray,
    targets: np.ndarray,
    image_size: int,
    rng: np.random.Generator,
    min_face: float = 0.0,
    tries: int = 250,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """A random square crop (side 0.3 .. 1 of the short side; the whole side with p = 0.2).

    A crop is accepted when it wholly contains one face at least; the faces whose centres are
    strictly inside are kept (clipped to it, landmarks clamped into it), those smaller than
    ``min_face`` pixels at ``image_size`` are dropped (the reference code: 0, degenerate only).
    Returns ``(image, targets, pad)``; after ``tries`` failures the image and targets as given
    and ``pad=True`` (the caller pads the image square).
    """
    height, width = image.shape[:2]
    if len(targets) == 0:
        return image, targets, True
    boxes = targets[:, :4]
    short = min(width, height)
    for _ in range(tries):
        scale = 1.0 if rng.uniform() <= 0.2 else rng.uniform(0.3, 1.0)
        side = int(scale * short)
        if side < 1:
            continue
        left = 0 if width == side else int(rng.integers(width - side))
        top = 0 if height == side else int(rng.integers(height - side))
        roi = np.array([left, top, left + side, top + side], np.float32)
        if not (matrix_iof(boxes, roi[None]) >= 1).any():
            continue
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        inside = ((roi[:2] < centres) & (centres < roi[2:])).all(axis=1)
        t = targets[inside].copy()
        if len(t) == 0:
            continue
        t[:, :2] = np.maximum(t[:, :2], roi[:2]) - roi[:2]
        t[:, 2:4] = np.minimum(t[:, 2:4], roi[2:]) - roi[:2]
        lms = t[:, 4:14].reshape(-1, 5, 2) - roi[:2]
        t[:, 4:14] = np.clip(lms, 0, side).reshape(-1, 10)
        bw = (t[:, 2] - t[:, 0] + 1) / side * image_size
        bh = (t[:, 3] - t[:, 1] + 1) / side * image_size
        t = t[np.minimum(bw, bh) > min_face]
        if len(t) == 0:
            continue
        crop = image[top : top + side, left : left + side]
        return crop, t, False
    return image, targets, True


def _convert(channel: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> None:
    """In place: ``channel * alpha + beta`` clipped to 0..255."""
    channel[:] = np.clip(channel.astype(np.float32) * alpha + beta, 0, 255)


def distort(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Photometric distortion of a BGR uint8 image (brightness, contrast, saturation, hue).

    As the reference: each with p = 0.5, contrast either before or after the HSV steps.
    """
    image = image.copy()
    contrast_first = rng.integers(2) == 1
    if rng.integers(2):
        _convert(image, beta=rng.uniform(-32, 32))
    if contrast_first and rng.integers(2):
        _convert(image, alpha=rng.uniform(0.5, 1.5))
    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
    if rng.integers(2):
        _convert(hsv[:, :, 1], alpha=rng.uniform(0.5, 1.5))
    if rng.integers(2):
        hsv[:, :, 0] = (hsv[:, :, 0].astype(np.int32) + int(rng.integers(-18, 19))) % 180
    image = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if not contrast_first and rng.integers(2):
        _convert(image, alpha=rng.uniform(0.5, 1.5))
    return image


def pad_to_square(image: np.ndarray, fill: Sequence[float] = MEAN_BGR) -> np.ndarray:
    """The image at the top left of a square of its long side, filled with ``fill``."""
    h, w = image.shape[:2]
    side = max(h, w)
    if h == w:
        return image
    out = np.empty((side, side, 3), image.dtype)
    out[:] = np.asarray(fill, image.dtype)
    out[:h, :w] = image
    return out


def mirror(image: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flip left-right; boxes and landmarks follow, the eye and mouth-corner pairs swap."""
    width = image.shape[1]
    image = image[:, ::-1]
    t = targets.copy()
    t[:, 0], t[:, 2] = width - targets[:, 2], width - targets[:, 0]
    lms = t[:, 4:14].reshape(-1, 5, 2)
    lms[:, :, 0] = width - lms[:, :, 0]
    lms[:] = lms[:, [1, 0, 2, 4, 3]]
    t[:, 4:14] = lms.reshape(-1, 10)
    return image, t


def _to_input(image: np.ndarray, size: int, mean: Sequence[float], interp: int) -> np.ndarray:
    """Resize a square BGR image to ``size``, subtract the mean, HWC -> CHW float32."""
    image = cv2.resize(image, (size, size), interpolation=interp).astype(np.float32)
    image -= np.asarray(mean, np.float32)
    return np.ascontiguousarray(image.transpose(2, 0, 1))


def _normalise(targets: np.ndarray, side: float) -> np.ndarray:
    t = targets.astype(np.float32).copy()
    t[:, :14] /= side
    t[t[:, 14] < 0, 4:14] = -1.0  # faces without landmarks keep the -1 marker
    return t


def augment(
    image: np.ndarray,
    targets: np.ndarray,
    image_size: int,
    rng: np.random.Generator,
    mean: Sequence[float] = MEAN_BGR,
    min_face: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """The training transform (crop, distort, pad, mirror, resize, mean): CHW float32, targets
    normalised to the square's side."""
    image, t, pad = random_crop(image, targets, image_size, rng, min_face)
    image = distort(image, rng)
    if pad:
        image = pad_to_square(image, mean)
    if rng.integers(2):
        image, t = mirror(image, t)
    side = image.shape[0]
    interp = _INTERPOLATIONS[int(rng.integers(len(_INTERPOLATIONS)))]
    return _to_input(image, image_size, mean, interp), _normalise(t, side)


def preprocess(
    image: np.ndarray, targets: np.ndarray, image_size: int, mean: Sequence[float] = MEAN_BGR
) -> tuple[np.ndarray, np.ndarray]:
    """The deterministic transform (pad square, resize, mean) for evaluation."""
    image = pad_to_square(image, mean)
    side = image.shape[0]
    return _to_input(image, image_size, mean, cv2.INTER_LINEAR), _normalise(targets, side)


# ============================================================================ dataset


class RetinaFaceDataset(Dataset):
    """Images and faces for RetinaFace training: ``(image (3, S, S) float32, targets (N, 15))``.

    ``annotations``: a list of :class:`ImageAnnotation` or an annotation file (any layout of
    :func:`read_annotations`); image paths are relative to ``image_root`` (default:
    :func:`default_image_root` of the file). Faces flagged ``invalid`` (WIDER) and boxes without
    area are left out. Images are BGR with ``mean`` subtracted, as the released models take them.
    With ``augment`` each item is randomly transformed (:func:`augment`), reproducibly from
    ``(seed, epoch, index)``; set ``epoch`` with :meth:`set_epoch`. Without, it is padded
    square and resized (:func:`preprocess`).
    """

    def __init__(
        self,
        annotations: Sequence[ImageAnnotation] | str | os.PathLike,
        image_root: str | os.PathLike | None = None,
        image_size: int = 640,
        augment: bool = True,
        mean: Sequence[float] = MEAN_BGR,
        drop_invalid: bool = True,
        min_face: float = 0.0,
        skip_empty: bool = False,
        seed: int = 0,
    ) -> None:
        if isinstance(annotations, (str, os.PathLike)):
            if image_root is None:
                image_root = default_image_root(annotations)
            annotations = read_annotations(annotations)
        self.image_root = None if image_root is None else Path(image_root)
        self.image_size = int(image_size)
        self.augment = bool(augment)
        self.mean = tuple(float(m) for m in mean)
        self.min_face = float(min_face)
        self.seed = int(seed)
        self.epoch = 0
        self.items: list[tuple[str, np.ndarray]] = []
        dropped = 0
        for ann in annotations:
            t = ann.targets()
            keep = (t[:, 2] > t[:, 0]) & (t[:, 3] > t[:, 1])
            if drop_invalid and "invalid" in ann.attributes:
                keep &= np.asarray(ann.attributes["invalid"]) == 0
            dropped += int((~keep).sum())
            if skip_empty and not keep.any():
                continue
            self.items.append((ann.path, t[keep]))
        if dropped:
            log.info("left out %d invalid or empty faces", dropped)

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        """The epoch the random transforms are drawn for."""
        self.epoch = int(epoch)

    def image_path(self, index: int) -> Path:
        p = Path(self.items[index][0])
        return p if self.image_root is None or p.is_absolute() else self.image_root / p

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The BGR uint8 image and its targets (N, 15) in pixels."""
        rgb = load_image(self.image_path(index))
        return np.ascontiguousarray(rgb[:, :, ::-1]), self.items[index][1].copy()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, t = self.load(index)
        if self.augment:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            x, t = augment(image, t, self.image_size, rng, self.mean, self.min_face)
        else:
            x, t = preprocess(image, t, self.image_size, self.mean)
        return torch.from_numpy(x), torch.from_numpy(t)


def collate(batch: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, list]:
    """Stack the images; the targets stay a list (a different number of faces per image)."""
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch]


# ============================================================================ matching and loss


def hard_negatives(loss_c: torch.Tensor, pos: torch.Tensor, ratio: float = 7) -> torch.Tensor:
    """Per image (rows), the ``ratio`` x positives highest-loss non-positive priors (bool mask).

    At most ``P - 1`` per image; none in an image without positives (as the reference).
    """
    loss_c = loss_c.detach().masked_fill(pos, 0.0)
    _, order = loss_c.sort(1, descending=True)
    _, rank = order.sort(1)
    num_pos = pos.long().sum(1, keepdim=True)
    num_neg = torch.clamp((ratio * num_pos).long(), max=pos.shape[1] - 1)
    return (rank < num_neg) & ~pos


class LossOutput(NamedTuple):
    """The three loss terms (each a mean per matched prior) and the counts they rest on."""

    loc: torch.Tensor
    conf: torch.Tensor
    landm: torch.Tensor
    num_pos: int
    num_neg: int
    num_pos_landm: int

    def total(self, loc_weight: float = 2.0) -> torch.Tensor:
        return loc_weight * self.loc + self.conf + self.landm


class MultiBoxLoss(nn.Module):
    """RetinaFace's multibox loss: smooth-L1 boxes and landmarks, softmax CE with hard negatives.

    ``forward((loc, conf_logits, landm), priors, targets)``: predictions (B, P, 4 / 2 / 10)
    before the softmax, ``priors`` (P, 4) normalised cx cy w h, ``targets`` one (N, 15) tensor
    per image (normalised; label -1: no landmarks). Box and class terms are divided by the
    number of positive priors, the landmark term by the positives of faces with landmarks.
    """

    def __init__(
        self, threshold: float = 0.35, neg_pos_ratio: float = 7, variances=VARIANCE
    ) -> None:
        super().__init__()
        self.threshold = float(threshold)
        self.neg_pos_ratio = float(neg_pos_ratio)
        self.variances = tuple(variances)

    @torch.no_grad()
    def targets(
        self, priors: torch.Tensor, targets: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Matched ``(loc_t (B, P, 4), conf_t (B, P), landm_t (B, P, 10))`` of a batch."""
        out = [
            match(t[:, :4], t[:, 14], t[:, 4:14], priors, self.threshold, self.variances)
            for t in (t.to(priors.device, torch.float32) for t in targets)
        ]
        loc_t, conf_t, landm_t = (torch.stack(v) for v in zip(*out, strict=True))
        return loc_t, conf_t, landm_t

    def forward(
        self,
        predictions: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        priors: torch.Tensor,
        targets: Sequence[torch.Tensor],
    ) -> LossOutput:
        loc_p, conf_p, landm_p = (p.float() for p in predictions)
        loc_t, conf_t, landm_t = self.targets(priors.float(), targets)

        pos_landm = conf_t > 0
        n_landm = int(pos_landm.sum())
        loss_landm = F.smooth_l1_loss(landm_p[pos_landm], landm_t[pos_landm], reduction="sum")

        pos = conf_t != 0
        labels = pos.long()
        n_pos = int(pos.sum())
        loss_l = F.smooth_l1_loss(loc_p[pos], loc_t[pos], reduction="sum")

        per_prior = torch.logsumexp(conf_p, dim=2) - conf_p.gather(2, labels[..., None])[..., 0]
        neg = hard_negatives(per_prior, pos, self.neg_pos_ratio)
        sel = pos | neg
        loss_c = F.cross_entropy(conf_p[sel], labels[sel], reduction="sum")

        n = max(n_pos, 1)
        return LossOutput(
            loss_l / n, loss_c / n, loss_landm / max(n_landm, 1), n_pos, int(neg.sum()), n_landm
        )


# ============================================================================ model helpers


def _network(network: str) -> str:
    network = _ALIASES.get(network, network)
    if network not in CONFIGS:
        raise ValueError(f"unknown RetinaFace network {network!r}; choose one of {sorted(CONFIGS)}")
    return network


def resolve_init(init: str | os.PathLike | None, network: str) -> Path | None:
    """The weight file ``init`` names: ``"released"`` (the network's released weights), a
    registered weights name or file name (``"mobilenet0.25_Final.pth"``), or a path; None:
    random initialisation."""
    if init is None or init == "scratch":
        return None
    if init == "released":
        return fetch(CONFIGS[network]["weights"])
    p = Path(init)
    if p.is_file():
        return p
    name = os.fspath(init)
    for wf in list_weights():
        if name in (wf.name, wf.filename):
            return fetch(wf.name)
    raise WeightsError(
        f"init {name!r} is neither a file nor a registered weights name or file name "
        f"(e.g. {weights_info(CONFIGS[network]['weights']).filename!r}, 'released' or None)"
    )


def _state_dict_of(path: Path) -> dict[str, torch.Tensor]:
    sd = load_state_dict(path)
    if isinstance(sd, Mapping) and "model" in sd and isinstance(sd["model"], Mapping):
        sd = {k.removeprefix("module."): v for k, v in sd["model"].items()}
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def load_init(model: RetinaFace, path: Path) -> str:
    """Load a full RetinaFace state dict, or backbone-only weights (ImageNet MobileNet-0.25 /
    torchvision ResNet-50, ``fc`` ignored) into the body. Returns ``"full"`` or ``"body"``."""
    sd = _state_dict_of(path)
    own = model.state_dict()
    if set(own) <= set(sd):
        model.load_state_dict({k: sd[k] for k in own}, strict=True)
        return "full"
    body = {k.removeprefix("body."): v for k, v in sd.items() if not k.startswith("fc.")}
    body_own = model.body.state_dict()
    missing = [k for k in body_own if k not in body and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in body if k not in body_own]
    shapes = [k for k in body_own if k in body and body[k].shape != body_own[k].shape]
    if missing or unexpected or shapes:
        raise WeightsError(
            f"{path} is neither a RetinaFace state dict nor {model.__class__.__name__} body "
            f"weights: missing {missing[:3]}, unexpected {unexpected[:3]}, shapes {shapes[:3]}"
        )
    model.body.load_state_dict(body, strict=False)
    return "body"


def infer_network(state_dict: Mapping[str, Any]) -> str:
    """``"mobilenet0.25"`` or ``"resnet50"`` from the body's key names."""
    if any(k.startswith("body.stage1") for k in state_dict):
        return "mobilenet0.25"
    if any(k.startswith("body.layer1") for k in state_dict):
        return "resnet50"
    raise ValueError("not a RetinaFace state dict (no body.stage1 / body.layer1 keys)")


def load_model(
    path: str | os.PathLike, network: str | None = None, device: str | torch.device = "cpu"
) -> RetinaFace:
    """A RetinaFace (eval mode) from a checkpoint (folder: its ``last.pt``) or a state dict."""
    p = Path(path)
    p = p / LAST if p.is_dir() else p
    sd = _state_dict_of(p)
    net = RetinaFace(_network(network) if network else infer_network(sd))
    net.load_state_dict(sd, strict=True)
    return net.to(device).eval()


# ============================================================================ schedule


def learning_rate(
    iteration: int,
    lr: float,
    milestones: Sequence[int],
    gamma: float = 0.1,
    warmup_iterations: int = 0,
) -> float:
    """The reference schedule: linear warm-up from 1e-6, then ``lr * gamma ** k`` after the
    ``k``-th milestone (iterations)."""
    if warmup_iterations > 0 and iteration < warmup_iterations:
        return 1e-6 + (lr - 1e-6) * iteration / warmup_iterations
    return lr * gamma ** sum(iteration >= m for m in milestones)


def default_milestones(network: str, epochs: int) -> tuple[float, float]:
    """The published decay epochs scaled to ``epochs`` (mobilenet 190/220 of 250, resnet50
    70/90 of 100)."""
    pub = PUBLISHED[network]
    return tuple(d / pub["epochs"] * epochs for d in pub["decay"])  # type: ignore[return-value]


# ============================================================================ evaluation


@torch.no_grad()
def evaluate_loss(
    model: RetinaFace,
    dataset: RetinaFaceDataset,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    amp: bool | None = None,
    loc_weight: float = 2.0,
    threshold: float = 0.35,
    neg_pos_ratio: float = 7,
    num_workers: int = 0,
) -> dict[str, float]:
    """Mean losses ``{"loss", "loss_loc", "loss_conf", "loss_landm"}`` of ``model`` (eval mode)
    over ``dataset`` (use ``augment=False`` for a fixed measure)."""
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    amp = dev.type == "cuda" if amp is None else bool(amp)
    was_training = model.training
    model.to(dev).eval()
    net = model
    crit = MultiBoxLoss(threshold, neg_pos_ratio)
    priors = normalised_priors(dataset.image_size, dev)
    sums = dict.fromkeys(("loss", "loss_loc", "loss_conf", "loss_landm"), 0.0)
    n = 0
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate
    )
    for x, targets in loader:
        with autocast(dev, amp):
            out = net(x.to(dev, non_blocking=True))
        lo = crit(out, priors, targets)
        b = len(targets)
        sums["loss"] += float(lo.total(loc_weight)) * b
        sums["loss_loc"] += float(lo.loc) * b
        sums["loss_conf"] += float(lo.conf) * b
        sums["loss_landm"] += float(lo.landm) * b
        n += b
    model.train(was_training)
    return {k: v / max(n, 1) for k, v in sums.items()}


# ============================================================================ training


def _as_dataset(
    data: Any, image_root: Any, image_size: int | None, network: str, augment: bool, seed: int
) -> RetinaFaceDataset:
    if isinstance(data, RetinaFaceDataset):
        if image_size is not None and image_size != data.image_size:
            raise ValueError(
                f"image_size={image_size} differs from the dataset's {data.image_size}"
            )
        return data
    size = image_size or PUBLISHED[network]["image_size"]
    return RetinaFaceDataset(data, image_root, size, augment=augment, seed=seed)


@dataclass
class _Config:
    """Everything one training process needs (picklable for ``torch.multiprocessing``)."""

    dataset: RetinaFaceDataset
    val: RetinaFaceDataset | None
    network: str
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    gamma: float
    milestones: tuple[float, ...]
    warmup_epochs: float
    loc_weight: float
    threshold: float
    neg_pos_ratio: float
    init: str | None
    checkpoint_dir: str | None
    resume: bool
    device: str | None
    amp: bool | None
    num_workers: int
    progress: bool
    seed: int
    keep_checkpoints: int | None
    dist_backend: str | None


def train(
    data: RetinaFaceDataset | Sequence[ImageAnnotation] | str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    network: str = "mobilenet0.25",
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float = 1e-3,
    init: str | os.PathLike | None = "released",
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = True,
    device: str | torch.device | None = None,
    amp: bool | None = None,
    num_workers: int = 0,
    progress: bool = True,
    *,
    image_size: int | None = None,
    val: RetinaFaceDataset | Sequence[ImageAnnotation] | str | os.PathLike | None = None,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    gamma: float = 0.1,
    milestones: Sequence[float] | None = None,
    warmup_epochs: float = 0.0,
    loc_weight: float = 2.0,
    overlap_threshold: float = 0.35,
    neg_pos_ratio: float = 7,
    augment: bool = True,
    seed: int = 0,
    world_size: int = 1,
    dist_backend: str | None = None,
    keep_checkpoints: int | None = None,
) -> tuple[RetinaFace, pd.DataFrame]:
    """Train RetinaFace; returns ``(model, metrics)`` (the model in eval mode).

    ``data``: a :class:`RetinaFaceDataset`, annotations, or an annotation file (label.txt,
    WIDER bbx_gt, dlib XML) with its ``image_root``. ``network``: ``"mobilenet0.25"`` or
    ``"resnet50"``; ``epochs``, ``batch_size`` and ``image_size`` default to the published
    250 / 32 / 640 (mobilenet) and 100 / 24 / 840 (resnet50). ``init``: ``"released"`` (the
    released weights of ``network``: fine-tuning), a registered file name such as
    ``"mobilenet0.25_Final.pth"``, a path to a RetinaFace state dict, checkpoint or
    backbone-only ImageNet weights, or None (random initialisation).

    SGD with ``momentum`` and ``weight_decay``; the learning rate is ``lr``, times ``gamma`` at
    each of ``milestones`` (epochs; default the published ones scaled to ``epochs``), after a
    linear warm-up from 1e-6 over ``warmup_epochs`` (0: none, as the published run).
    ``amp`` (default on CUDA): float16 autocast with a gradient scaler (bfloat16 on CPU when
    asked). ``world_size > 1`` spawns that many processes (one GPU each on CUDA, else CPU with
    gloo) training with DDP; ``batch_size`` is then the total over them. Run under
    ``torchrun`` (or with a process group already initialised) each process trains its share.

    With ``checkpoint_dir``, every epoch writes ``epoch_NNN.pt`` and ``last.pt`` (the weights
    under ``state_dict`` in the released key layout, so ``RetinaFaceDetector(weights=...)``
    loads them, and the optimiser, scaler, epoch and metrics) and the end ``<network>_Final.pth``
    (the weights alone); ``keep_checkpoints`` bounds the ``epoch_NNN.pt`` kept. With ``resume``
    a run finding ``last.pt`` continues from it up to ``epochs`` (total, not additional); the
    augmentation and shuffling are drawn per (seed, epoch), so a resumed run repeats the
    uninterrupted one. ``metrics``: one row per epoch with ``epoch, loss, loss_loc, loss_conf,
    loss_landm, lr, images, seconds, images_per_s`` (and ``val_*`` losses with ``val``).
    """
    network = _network(network)
    pub = PUBLISHED[network]
    epochs = int(pub["epochs"] if epochs is None else epochs)
    batch_size = int(pub["batch_size"] if batch_size is None else batch_size)
    dataset = _as_dataset(data, image_root, image_size, network, augment, seed)
    if len(dataset) == 0:
        raise ValueError("the training set is empty")
    val_ds = None
    if val is not None:
        val_ds = val if isinstance(val, RetinaFaceDataset) else RetinaFaceDataset(
            val, None if isinstance(val, (str, os.PathLike)) else image_root,
            dataset.image_size, augment=False,
        )  # fmt: skip
    init_path = resolve_init(init, network)
    ms = tuple(float(m) for m in (milestones or default_milestones(network, epochs)))
    cfg = _Config(
        dataset=dataset,
        val=val_ds,
        network=network,
        epochs=epochs,
        batch_size=batch_size,
        lr=float(lr),
        momentum=float(momentum),
        weight_decay=float(weight_decay),
        gamma=float(gamma),
        milestones=ms,
        warmup_epochs=float(warmup_epochs),
        loc_weight=float(loc_weight),
        threshold=float(overlap_threshold),
        neg_pos_ratio=float(neg_pos_ratio),
        init=None if init_path is None else os.fspath(init_path),
        checkpoint_dir=None if checkpoint_dir is None else os.fspath(checkpoint_dir),
        resume=bool(resume),
        device=None if device is None else str(device),
        amp=amp,
        num_workers=int(num_workers),
        progress=bool(progress),
        seed=int(seed),
        keep_checkpoints=keep_checkpoints,
        dist_backend=dist_backend,
    )
    if dist.is_available() and dist.is_initialized():  # launched by the caller (torchrun ...)
        return _train_process(cfg, dist.get_rank(), dist.get_world_size())
    env_world = int(os.environ.get("WORLD_SIZE", "1"))
    if dist.is_available() and env_world > 1 and "RANK" in os.environ:  # torchrun, no group yet
        rank = int(os.environ["RANK"])
        dist.init_process_group(_backend(cfg), init_method="env://")
        try:
            return _train_process(cfg, rank, env_world)
        finally:
            dist.destroy_process_group()
    if world_size > 1:
        return _spawn(cfg, int(world_size))
    return _train_process(cfg, 0, 1)


def _backend(cfg: _Config) -> str:
    if cfg.dist_backend:
        return cfg.dist_backend
    on_cuda = torch.cuda.is_available() and (cfg.device is None or cfg.device.startswith("cuda"))
    return "nccl" if on_cuda else "gloo"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawn(cfg: _Config, world_size: int) -> tuple[RetinaFace, pd.DataFrame]:
    """Run ``world_size`` DDP processes; rank 0 hands the model and metrics back by file."""
    import torch.multiprocessing as mp

    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this torch build")
    backend = _backend(cfg)
    if backend == "nccl" and torch.cuda.device_count() < world_size:
        raise RuntimeError(
            f"world_size={world_size} needs as many GPUs, {torch.cuda.device_count()} found"
        )
    with tempfile.TemporaryDirectory(prefix="faceetl_ddp_") as tmp:
        result = Path(tmp) / "result.pt"
        mp.spawn(
            _spawn_entry,
            args=(world_size, _free_port(), backend, cfg, os.fspath(result)),
            nprocs=world_size,
            join=True,
        )
        out = torch.load(result, map_location="cpu", weights_only=True)
    model = RetinaFace(cfg.network)
    model.load_state_dict(out["state_dict"])
    dev = _device(cfg, 0)
    return model.to(dev).eval(), pd.DataFrame(out["metrics"])


def _spawn_entry(
    rank: int, world_size: int, port: int, backend: str, cfg: _Config, result: str
) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    if backend == "gloo":  # share the cores rather than oversubscribe them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    dist.init_process_group(backend, rank=rank, world_size=world_size)
    try:
        model, metrics = _train_process(cfg, rank, world_size)
        if rank == 0:
            save(
                {"state_dict": model.state_dict(), "metrics": metrics.to_dict("records")},
                Path(result),
            )
    finally:
        dist.destroy_process_group()


def _device(cfg: _Config, rank: int) -> torch.device:
    if cfg.device is not None:
        dev = torch.device(cfg.device)
        if dev.type == "cuda" and dev.index is None and dist.is_initialized():
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        return dev
    if torch.cuda.is_available():
        if dist.is_initialized():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        return torch.device("cuda")
    return torch.device("cpu")


def _train_process(cfg: _Config, rank: int, world_size: int) -> tuple[RetinaFace, pd.DataFrame]:
    """The training loop of one process (rank) of ``world_size``."""
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data.distributed import DistributedSampler

    distributed = world_size > 1
    dev = _device(cfg, rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        torch.backends.cudnn.benchmark = True
    amp = dev.type == "cuda" if cfg.amp is None else bool(cfg.amp)
    main = rank == 0
    torch.manual_seed(cfg.seed)
    model = RetinaFace(cfg.network)
    if cfg.init is not None:
        kind = load_init(model, Path(cfg.init))
        log.info("initialised %s from %s (%s)", cfg.network, cfg.init, kind)
    model.to(dev)
    net: nn.Module = model
    if distributed:
        net = DistributedDataParallel(net, device_ids=[dev.index] if dev.type == "cuda" else None)
    opt = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    scaler = torch.amp.GradScaler("cuda", enabled=amp and dev.type == "cuda")
    crit = MultiBoxLoss(cfg.threshold, cfg.neg_pos_ratio)
    ds = cfg.dataset
    priors = normalised_priors(ds.image_size, dev)
    per_rank = max(1, cfg.batch_size // world_size)
    samples = math.ceil(len(ds) / world_size)
    epoch_size = math.ceil(samples / per_rank)  # iterations per epoch (each process)
    milestone_its = [round(m * epoch_size) for m in cfg.milestones]
    warmup_its = round(cfg.warmup_epochs * epoch_size)

    rows: list[dict[str, Any]] = []
    start = 0
    ckdir = None if cfg.checkpoint_dir is None else Path(cfg.checkpoint_dir)
    if ckdir is not None:
        if main:
            ckdir.mkdir(parents=True, exist_ok=True)
        if cfg.resume and (ckdir / LAST).is_file():
            ck = torch.load(ckdir / LAST, map_location=dev, weights_only=True)
            if ck.get("network") != cfg.network:
                raise ValueError(
                    f"{ckdir / LAST} holds a {ck.get('network')!r} model, not {cfg.network!r}"
                )
            if int(ck.get("image_size", ds.image_size)) != ds.image_size:
                raise ValueError(
                    f"{ckdir / LAST} was trained at image_size {ck.get('image_size')}, "
                    f"not {ds.image_size}; use another checkpoint_dir or resume=False"
                )
            model.load_state_dict(ck["state_dict"])
            opt.load_state_dict(ck["optimizer"])
            if ck.get("scaler") and scaler.is_enabled():
                scaler.load_state_dict(ck["scaler"])
            start = int(ck["epoch"])
            rows = [dict(r) for r in ck.get("metrics", [])]
            if main:
                log.info("resuming from %s at epoch %d of %d", ckdir / LAST, start + 1, cfg.epochs)
        elif main and (ckdir / LAST).is_file():
            log.warning("resume=False: checkpoints in %s will be overwritten", ckdir)

    config = plain(
        {k: v for k, v in cfg.__dict__.items() if k not in ("dataset", "val")}
        | {
            "image_size": ds.image_size,
            "train_size": len(ds),
            "world_size": world_size,
            "epoch_size": epoch_size,
            "milestone_iterations": milestone_its,
            "amp": amp,
        }
    )
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        ds.set_epoch(epoch)
        model.train()
        if distributed:
            sampler = DistributedSampler(ds, world_size, rank, shuffle=True, seed=cfg.seed)
            sampler.set_epoch(epoch)
            loader = DataLoader(
                ds, batch_size=per_rank, sampler=sampler, num_workers=cfg.num_workers,
                collate_fn=collate, pin_memory=dev.type == "cuda",
            )  # fmt: skip
        else:
            loader = DataLoader(
                ds, batch_size=per_rank, shuffle=True, num_workers=cfg.num_workers,
                collate_fn=collate, pin_memory=dev.type == "cuda",
                generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch),
            )  # fmt: skip
        sums = torch.zeros(6, dtype=torch.float64)  # loss, loc, conf, landm, images, skipped
        lr = cfg.lr
        bar = progress_bar(loader, cfg.progress and main, f"epoch {epoch + 1}/{cfg.epochs}")
        for it, (x, targets) in enumerate(bar):
            iteration = epoch * epoch_size + it
            lr = learning_rate(iteration, cfg.lr, milestone_its, cfg.gamma, warmup_its)
            for g in opt.param_groups:
                g["lr"] = lr
            x = x.to(dev, non_blocking=True)
            with autocast(dev, amp):
                out = net(x)
            lo = crit(out, priors, targets)
            loss = lo.total(cfg.loc_weight)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            finite = torch.isfinite(loss.detach()).to(torch.float32)
            if distributed and not scaler.is_enabled():
                dist.all_reduce(finite, op=dist.ReduceOp.MIN)
            if scaler.is_enabled() or bool(finite):  # the scaler skips non-finite steps itself
                scaler.step(opt)
            else:
                sums[5] += 1
                log.warning("non-finite loss at iteration %d: step skipped", iteration)
            scaler.update()
            b = x.shape[0]
            vals = [float(v.detach()) for v in (loss, lo.loc, lo.conf, lo.landm)]
            sums[:4] += torch.tensor(vals, dtype=torch.float64) * b
            sums[4] += b
            if cfg.progress and main:
                bar.set_postfix(loss=f"{float(sums[0] / sums[4]):.4f}", lr=f"{lr:.2e}")
        if distributed:
            sums = sums.to(dev)
            dist.all_reduce(sums)
            sums = sums.cpu()
        seconds = time.perf_counter() - t0
        n = max(float(sums[4]), 1.0)
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": float(sums[0]) / n,
            "loss_loc": float(sums[1]) / n,
            "loss_conf": float(sums[2]) / n,
            "loss_landm": float(sums[3]) / n,
            "lr": lr,
            "images": int(sums[4]),
            "skipped_steps": int(sums[5]),
            "seconds": seconds,
            "images_per_s": float(sums[4]) / seconds if seconds > 0 else math.nan,
        }
        if cfg.val is not None and main:
            ev = evaluate_loss(
                model, cfg.val, per_rank, dev, amp, cfg.loc_weight, cfg.threshold,
                cfg.neg_pos_ratio, cfg.num_workers,
            )  # fmt: skip
            row.update({f"val_{k}": v for k, v in ev.items()})
        rows.append(plain(row))
        if main:
            log.info("epoch %d/%d: %s", epoch + 1, cfg.epochs, row)
        if ckdir is not None and main:
            ck = {
                "version": CHECKPOINT_VERSION,
                "state_dict": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                "epoch": epoch + 1,
                "iteration": (epoch + 1) * epoch_size,
                "network": cfg.network,
                "image_size": ds.image_size,
                "metrics": rows,
                "config": config,
            }
            save(ck, ckdir / f"epoch_{epoch + 1:03d}.pt")
            save(ck, ckdir / LAST)
            if cfg.keep_checkpoints is not None:
                old = sorted(ckdir.glob("epoch_*.pt"))[: -max(cfg.keep_checkpoints, 1)]
                for p in old:
                    p.unlink(missing_ok=True)
        if distributed:
            dist.barrier()
    if ckdir is not None and main:
        save(dict(model.state_dict()), ckdir / f"{cfg.network}_Final.pth")
    model.eval()
    return model, pd.DataFrame(rows)


__all__ = [
    "PUBLISHED",
    "ImageAnnotation",
    "LossOutput",
    "MultiBoxLoss",
    "RetinaFaceDataset",
    "annotation_format",
    "augment",
    "box_iou",
    "collate",
    "default_image_root",
    "default_milestones",
    "distort",
    "encode",
    "encode_landm",
    "evaluate_loss",
    "five_from_68",
    "hard_negatives",
    "infer_network",
    "learning_rate",
    "load_init",
    "load_model",
    "match",
    "mirror",
    "matrix_iof",
    "normalised_priors",
    "pad_to_square",
    "point_form",
    "preprocess",
    "random_crop",
    "read_annotations",
    "read_dlib_xml",
    "read_retinaface_labels",
    "read_wider_bbx_gt",
    "resolve_init",
    "train",
    "write_retinaface_labels",
]
