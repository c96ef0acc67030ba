"""OpenCV Haar cascades: a frontal-face cascade for boxes; landmarks from MTCNN's O-Net on each
box (default) or the Haar eye cascade (``landmarks="haar"``, see :func:`find_eyes`).

No weight files to fetch: the cascades ship inside opencv-python (``cv2.data.haarcascades``);
their sha256 is recorded in :meth:`OpenCVDetector.provenance` all the same.

Scores: ``detectMultiScale3(outputRejectLevels=True)`` gives, for each grouped face, the sum
of the weak classifiers of the cascade's last stage. A window is a face when that sum reaches
the stage threshold, so ``margin = weight - last_stage_threshold >= 0`` and the score is
``1 - exp(-margin / SCORE_SCALE)``: monotonic in the weight, 0 at the threshold, toward 1 for
confident windows (on the shared photos margins run from about 0.3 to 4.5, scores 0.15-0.9).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .base import N_LANDMARKS, BaseDetector, Detections, register_backend
from .landmarks import eyes_to_landmarks, landmark_stage
from .params import renamed

log = logging.getLogger(__name__)

#: the score scale of the level-weight margin (see the module docstring)
SCORE_SCALE = 2.0
#: face cascades one can pick (file ``haarcascade_frontalface_<name>.xml``)
FACE_CASCADES = ("alt", "alt2", "default", "alt_tree")
EYE_CASCADE = "haarcascade_eye.xml"
#: face ROIs are resized to this width before the eye search (eyes then ~25-45 px wide)
_EYE_ROI_WIDTH = 160
#: O-Net's square as a fraction of a Haar face box's larger side (median eye error on the
#: shared photos 0.034 of the eye distance at 0.85, flat from 0.8 to 1.0; p90 0.051)
ONET_BOX_SCALE = 0.85
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


def _last_stage_threshold(path: Path) -> float:
    """The last stage's threshold of a (new-format) Haar cascade XML."""
    fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_READ)
    try:
        stages = fs.getFirstTopLevelNode().getNode("stages")
        return float(stages.at(stages.size() - 1).getNode("stageThreshold").real())
    finally:
        fs.release()


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


@register_backend("opencv", workers=10, gpu=False, evaluation={"max_side": None})
class OpenCVDetector(BaseDetector):
    """Haar frontal-face cascade (boxes, scores); five O-Net landmarks (or Haar eyes).

    ``max_side``: images whose longer side exceeds it are shrunk for the face search (speed;
    ``min_face_size`` is then in shrunk pixels); boxes come back in input pixels and the eye
    search runs on the full-resolution image. ``None`` searches at full resolution.
    ``score_threshold``: the least score kept (default 0: every face the cascade accepts).
    ``landmarks``: ``"onet"`` (MTCNN's O-Net on each box: five points, ~1 ms a face), ``"haar"``
    (the eye cascade in each box: eyes only, ~40 ms a face) or ``None`` (boxes only).
    """

    name = "opencv"

    @renamed(min_size="min_face_size", eyes=eyes_to_landmarks)
    def __init__(
        self,
        *,
        cascade: str = "alt",
        scale_factor: float = 1.1,
        min_neighbors: int = 3,
        min_face_size: int = 20,
        equalize: bool = True,
        max_side: int | None = 1280,
        landmarks: str | None = "onet",
        score_threshold: float = 0.0,
    ) -> None:
        if cascade not in FACE_CASCADES:
            raise ValueError(f"cascade must be one of {FACE_CASCADES}, got {cascade!r}")
        if scale_factor <= 1.0:
            raise ValueError("scale_factor must be > 1")
        if not 0.0 <= score_threshold <= 1.0:
            raise ValueError("score_threshold must be in [0, 1]")
        self.cascade = cascade
        self.scale_factor = float(scale_factor)
        self.min_neighbors = int(min_neighbors)
        self.min_face_size = int(min_face_size)
        self.score_threshold = float(score_threshold)
        self.equalize = bool(equalize)
        self.max_side = None if max_side is None else int(max_side)
        self.landmarks = landmarks
        self._face_path = cascade_path(f"haarcascade_frontalface_{cascade}.xml")
        self._face = cv2.CascadeClassifier(str(self._face_path))
        if self._face.empty():
            raise RuntimeError(f"could not load {self._face_path}")
        self._threshold = _last_stage_threshold(self._face_path)
        self._weights = {self._face_path.name: _file_sha256(str(self._face_path))}
        self._points = landmark_stage(landmarks, ONET_BOX_SCALE)
        if self._points is not None:
            self._weights.update(self._points.weights)

    def _detect_batch(self, images: list[np.ndarray]) -> list[Detections]:
        """The face cascade on each image, then the landmark stage on all boxes at once."""
        found = [self._boxes(im) for im in images]
        if self._points is None:
            return [Detections(b, s, None) for b, s in found]
        points = self._points(images, [b for b, _ in found])
        return [Detections(b, s, p) for (b, s), p in zip(found, points, strict=True)]

    def _boxes(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Boxes (N, 4) and scores (N,) of the face cascade, best score first."""
        h, w = image.shape[:2]
        gray = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
        small = gray
        scale = 1.0
        if self.max_side is not None and max(h, w) > self.max_side:
            scale = self.max_side / max(h, w)
            # explicit sizes of at least 1 px: an extreme aspect ratio (10 x 100000) would round
            # the short side to 0 and make cv2.resize fail
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            small = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
        rects, _levels, weights = self._face.detectMultiScale3(
            cv2.equalizeHist(small) if self.equalize else small,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(self.min_face_size, self.min_face_size),
            outputRejectLevels=True,
        )
        if len(rects) == 0:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
        r = np.asarray(rects, np.float32).reshape(-1, 4) / scale
        boxes = np.concatenate([r[:, :2], r[:, :2] + r[:, 2:]], axis=1)
        margin = np.asarray(weights, np.float64).reshape(-1) - self._threshold
        scores = 1.0 - np.exp(-np.clip(margin, 0, None) / SCORE_SCALE)
        order = np.argsort(-scores, kind="stable")
        order = order[scores[order] >= self.score_threshold]
        return boxes[order], scores[order]

    def _parameters(self) -> dict[str, Any]:
        return {
            "cascade": self.cascade,
            "scale_factor": self.scale_factor,
            "min_neighbors": self.min_neighbors,
            "min_face_size": self.min_face_size,
            "score_threshold": self.score_threshold,
            "equalize": self.equalize,
            "max_side": self.max_side,
            "landmarks": self.landmarks,
            **({} if self._points is None else {"landmark_stage": self._points.parameters()}),
            "score": f"1-exp(-(last_stage_weight-{self._threshold:.4f})/{SCORE_SCALE})",
            "opencv": cv2.__version__,
        }
