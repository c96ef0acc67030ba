"""The Haar eye search inside face boxes, and the cascade files OpenCV ships.

Used by the opencv backend (its cascade files) and by the landmark stage of box-only detectors
(:mod:`faceetl.backends.landmarks`, ``landmarks="haar"``).
"""

from __future__ import annotations

import functools
import hashlib
import threading
from pathlib import Path

import cv2
import numpy as np

from .base import N_LANDMARKS

EYE_CASCADE = "haarcascade_eye.xml"
#: face ROIs are resized to this width before the eye search (eyes then ~25-45 px wide)
_EYE_ROI_WIDTH = 160
#: a mirrored-ROI eye box counts as the same eye within this fraction of the eye-box width
_MIRROR_RADIUS = 0.35


def cascade_path(filename: str) -> Path:
    """Path of a cascade file shipped with opencv-python."""
    p = Path(cv2.data.haarcascades) / filename
    if not p.is_file():
        raise FileNotFoundError(f"OpenCV cascade {filename} not found in {p.parent}")
    return p


@functools.cache
def _file_sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def cascade_sha256(filename: str) -> str:
    """sha256 of a cascade file shipped with opencv-python (for provenance)."""
    return _file_sha256(str(cascade_path(filename)))


_THREAD = threading.local()


def _eye_cascade() -> cv2.CascadeClassifier:
    """This thread's eye cascade: a CascadeClassifier must not be used by two threads at once
    (shared, it fails with ``getScaleData`` assertions or crashes the process)."""
    cc = getattr(_THREAD, "eye_cascade", None)
    if cc is None:
        cc = cv2.CascadeClassifier(str(cascade_path(EYE_CASCADE)))
        if cc.empty():
            raise RuntimeError(f"could not load {EYE_CASCADE}")
        _THREAD.eye_cascade = cc
    return cc


def _eye_rects(
    cc: cv2.CascadeClassifier,
    roi: np.ndarray,
    fw: float,
    min_neighbors: int,
    scale_factor: float = 1.05,
    max_frac: float = 0.35,
) -> tuple[np.ndarray, np.ndarray]:
    """Eye-cascade boxes (K, 4) x y w h and their neighbour counts in a resized face ROI."""
    min_eye = max(12, int(0.12 * fw))
    max_eye = max(min_eye + 1, int(max_frac * fw))
    rects, neighbours = cc.detectMultiScale2(
        roi,
        scaleFactor=scale_factor,
        minNeighbors=min_neighbors,
        minSize=(min_eye, min_eye),
        maxSize=(max_eye, max_eye),
    )
    return (
        np.asarray(rects, np.float64).reshape(-1, 4),
        np.asarray(neighbours, np.float64).reshape(-1),
    )


def _mirror_refine(
    cc: cv2.CascadeClassifier,
    roi: np.ndarray,
    fw: float,
    pts: np.ndarray,
    widths: np.ndarray,
    **search: float,
) -> np.ndarray:
    """Average each eye centre with the matching eye box found in the mirrored ROI.

    The cascade is not mirror-symmetric, so the mirrored search gives a second, partly
    independent estimate of each eye box; an eye with no mirrored box within
    ``_MIRROR_RADIUS`` of its width (and of similar size) keeps its own box centre. The whole
    mirrored ROI is searched, as the first search did the ROI, so that mirroring the photo
    mirrors the eyes exactly (a search around each eye alone saved ~20% but broke that).
    """
    rects, _ = _eye_rects(cc, np.ascontiguousarray(roi[:, ::-1]), fw, 1, **search)
    if len(rects) == 0:
        return pts
    c = np.stack(
        [roi.shape[1] - (rects[:, 0] + rects[:, 2] / 2), rects[:, 1] + rects[:, 3] / 2], axis=1
    )
    out = pts.copy()
    for k in range(len(pts)):
        d = np.linalg.norm(c - pts[k], axis=1)
        ok = (d < _MIRROR_RADIUS * widths[k]) & (rects[:, 2] > 0.6 * widths[k])
        ok &= rects[:, 2] < 1.6 * widths[k]
        if ok.any():
            out[k] = (pts[k] + c[np.flatnonzero(ok)[np.argmin(d[ok])]]) / 2
    return out


def find_eyes(
    gray: np.ndarray,
    boxes: np.ndarray,
    *,
    roi_width: int = _EYE_ROI_WIDTH,
    scale_factor: float = 1.05,
    max_frac: float = 0.35,
    mirror: bool = True,
) -> np.ndarray:
    """Eye centres of each face box with the Haar eye cascade: (N, 5, 2), eyes filled, rest NaN.

    ``gray`` is the uint8 grayscale image, ``boxes`` (N, 4) x1 y1 x2 y2 in its pixels. The
    upper part of each box is resized to a fixed width (no equalisation: it hurt on the shared
    photos) and searched. Of the pairs of eye detections, one on each side of the box's
    vertical centre line, that look like two eyes (20-75% of the box width and 1-2.6 eye-box
    widths apart, nearly level, similar size), the best wins: most neighbours (log), midpoint
    near the box's centre line, level. Each eye centre is then averaged with the matching
    detection in the mirrored ROI (see :func:`_mirror_refine`). A face keeps NaN eyes unless
    both are found; the eye with the smaller x comes first (ArcFace order as seen in the image).

    Cost (one core, the 16 shared group/single/PASCAL photos, 79 SSD faces): about 2 ms of
    cascade per face and scale. ``scale_factor`` is the cascade's scale step, ``max_frac`` the
    largest eye box as a fraction of the face width (0.35 keeps 63 of the 64 eye pairs found at
    0.45, for ~15% less time); ``mirror=False`` skips the mirrored search (~40% less time; median
    eye error 0.038 of the eye distance instead of 0.031, against dlib's 68 points).
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    out = np.full((len(boxes), N_LANDMARKS, 2), np.nan, np.float32)
    if len(boxes) == 0:
        return out
    if gray.ndim != 2:
        raise ValueError(f"find_eyes wants a 2-D grayscale image, got shape {gray.shape}")
    cc = _eye_cascade()
    h_img, w_img = gray.shape
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        bw, bh = x2 - x1, y2 - y1
        if bw < 8 or bh < 8:
            continue
        # eyes lie in the upper ~60% of a face box, below the forehead
        rx1, rx2 = int(max(0, np.floor(x1))), int(min(w_img, np.ceil(x2)))
        ry1, ry2 = int(max(0, np.floor(y1 + 0.12 * bh))), int(min(h_img, np.ceil(y1 + 0.62 * bh)))
        if rx2 - rx1 < 8 or ry2 - ry1 < 4:
            continue
        roi = gray[ry1:ry2, rx1:rx2]
        s = roi_width / roi.shape[1]
        roi = cv2.resize(
            roi, None, fx=s, fy=s, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
        )
        fw = bw * s  # face width in ROI pixels
        search = {"scale_factor": scale_factor, "max_frac": max_frac}
        rects, neighbours = _eye_rects(cc, roi, fw, 2, **search)
        if len(rects) < 2:
            continue
        cx = rects[:, 0] + rects[:, 2] / 2
        cy = rects[:, 1] + rects[:, 3] / 2
        mid = (x1 + bw / 2 - rx1) * s
        left, right = np.flatnonzero(cx < mid), np.flatnonzero(cx >= mid)
        if len(left) == 0 or len(right) == 0:
            continue
        # pairs that look like two eyes of one face: apart by 20-75% of the face width and by
        # 1-2.6 eye-box widths, nearly level, of similar size
        li, ri = np.meshgrid(left, right, indexing="ij")
        li, ri = li.ravel(), ri.ravel()
        dx, dy = cx[ri] - cx[li], np.abs(cy[ri] - cy[li])
        size = rects[li, 2] / rects[ri, 2]
        mean_w = (rects[li, 2] + rects[ri, 2]) / 2
        ok = (dx > 0.2 * fw) & (dx < 0.75 * fw) & (dy < 0.5 * dx) & (size < 2.0) & (size > 0.5)
        ok &= (dx > 1.0 * mean_w) & (dx < 2.6 * mean_w)
        if not ok.any():
            continue
        score = (
            np.log1p(neighbours[li])
            + np.log1p(neighbours[ri])
            - 4.0 * np.abs((cx[li] + cx[ri]) / 2 - mid) / fw
            - 2.0 * dy / np.maximum(dx, 1e-9)
        )
        best = np.flatnonzero(ok)[np.argmax(score[ok])]
        sides = [li[best], ri[best]]
        pts = np.stack([cx[sides], cy[sides]], axis=1)
        if mirror:
            pts = _mirror_refine(cc, roi, fw, pts, rects[sides, 2], **search)
        pts = pts / s + [rx1, ry1]
        out[i, 0:2] = pts[np.argsort(pts[:, 0])]
    return out
