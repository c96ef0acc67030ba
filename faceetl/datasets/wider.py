"""WIDER FACE annotation files: the official train/val ``bbx_gt.txt`` lists, RetinaFace's
``label.txt`` (the InsightFace WIDER annotations with five landmarks), and the val ground truth
``.mat`` files the official evaluation reads (:func:`read_widerface_gt`)."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..extras import require
from .annotation import ImageAnnotation

WIDER_ATTRIBUTES = ("blur", "expression", "illumination", "invalid", "occlusion", "pose")
#: the three evaluation settings of the val ground truth
SETTINGS = ("easy", "medium", "hard")


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


# ----------------------------------------------------------------------------- val ground truth


@dataclass(frozen=True)
class WiderGT:
    """WIDER FACE ground truth: per image its event, name, boxes and counted-box indices."""

    events: tuple[str, ...]  # event folder of each image, e.g. "0--Parade"
    names: tuple[str, ...]  # image name without extension
    boxes: tuple[np.ndarray, ...]  # (K, 4) float64 x y w h
    keep: dict[str, tuple[np.ndarray, ...]]  # setting -> 0-based int64 indices of counted boxes

    def index(self) -> dict[str, int]:
        """Image name -> position."""
        return {n: i for i, n in enumerate(self.names)}


def _mat_str(x: Any) -> str:
    return str(np.asarray(x).ravel()[0])


@functools.lru_cache(maxsize=4)
def _read_gt_cached(gt_dir: str) -> WiderGT:
    loadmat = require("scipy.io", "eval", "reading WIDER FACE's .mat ground truth").loadmat

    root = Path(gt_dir)
    full = loadmat(root / "wider_face_val.mat")
    events: list[str] = []
    names: list[str] = []
    boxes: list[np.ndarray] = []
    for i in range(len(full["event_list"])):
        event = _mat_str(full["event_list"][i][0])
        files = full["file_list"][i][0]
        bbx = full["face_bbx_list"][i][0]
        for j in range(len(files)):
            events.append(event)
            names.append(_mat_str(files[j][0]))
            boxes.append(np.asarray(bbx[j][0], np.float64).reshape(-1, 4))
    keep: dict[str, tuple[np.ndarray, ...]] = {}
    for setting in SETTINGS:
        mat = loadmat(root / f"wider_{setting}_val.mat")
        gl = mat["gt_list"]
        if len(gl) != len(full["event_list"]):
            raise ValueError(
                f"wider_{setting}_val.mat has {len(gl)} events, expected {len(full['event_list'])}"
            )
        lists: list[np.ndarray] = []
        for i in range(len(gl)):
            for j in range(len(gl[i][0])):
                # 1-based MATLAB indices, stored as uint8/uint16: widen before subtracting
                lists.append(np.asarray(gl[i][0][j][0], np.int64).ravel() - 1)
        if len(lists) != len(names):
            raise ValueError(
                f"wider_{setting}_val.mat lists {len(lists)} images, expected {len(names)}"
            )
        keep[setting] = tuple(lists)
    return WiderGT(tuple(events), tuple(names), tuple(boxes), keep)


def read_widerface_gt(gt_dir: str | os.PathLike) -> WiderGT:
    """The official val ground truth from the four ``.mat`` files in ``gt_dir`` (cached)."""
    return _read_gt_cached(str(Path(gt_dir).resolve()))


__all__ = [
    "SETTINGS",
    "WIDER_ATTRIBUTES",
    "WiderGT",
    "default_image_root",
    "read_retinaface_labels",
    "read_wider_bbx_gt",
    "read_widerface_gt",
    "write_retinaface_labels",
]
