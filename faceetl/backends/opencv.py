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

import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .base import BaseDetector, Detections, register_backend
from .haar import EYE_CASCADE, _file_sha256, cascade_path, cascade_sha256, find_eyes
from .landmarks import eyes_to_landmarks, landmark_stage
from .params import renamed

log = logging.getLogger(__name__)

#: the score scale of the level-weight margin (see the module docstring)
SCORE_SCALE = 2.0
#: face cascades one can pick (file ``haarcascade_frontalface_<name>.xml``)
FACE_CASCADES = ("alt", "alt2", "default", "alt_tree")
#: O-Net's square as a fraction of a Haar face box's larger side (median eye error on the
#: shared photos 0.034 of the eye distance at 0.85, flat from 0.8 to 1.0; p90 0.051)
ONET_BOX_SCALE = 0.85
#: re-exported: the eye search and cascade helpers live in .haar
__all__ = [
    "EYE_CASCADE",
    "FACE_CASCADES",
    "OpenCVDetector",
    "cascade_path",
    "cascade_sha256",
    "find_eyes",
]


def _last_stage_threshold(path: Path) -> float:
    """The last stage's threshold of a (new-format) Haar cascade XML."""
    fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_READ)
    try:
        stages = fs.getFirstTopLevelNode().getNode("stages")
        return float(stages.at(stages.size() - 1).getNode("stageThreshold").real())
    finally:
        fs.release()


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
