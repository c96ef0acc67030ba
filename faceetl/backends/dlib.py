"""dlib face detection: the HOG sliding-window detector (default) or the MMOD CNN, plus dlib's
68- or 5-point shape predictor for landmarks.

Scores: dlib gives a raw, unbounded detection margin (HOG: SVM score, CNN: MMOD confidence),
where 0 is dlib's own decision threshold. ``Detections.scores`` is the logistic function of that
margin, ``1 / (1 + exp(-raw))`` (monotonic, 0.5 at raw 0); the raw margin is kept in
``extra["raw_score"]``. ``score_threshold`` is in the same units as the scores: dlib gets its
logit as the raw threshold. (The deprecated ``threshold`` was in raw units.)

Default HOG setting (upsample=1, raw threshold 0.15, i.e. score 0.537) was chosen on
measurements: with raw threshold 0 the HOG detector reports a false face on skimage's astronaut
(raw 0.117, upsample 1), while the weakest annotated face of dlib's PASCAL example images scores
raw 0.22 (2007_007763.jpg). Without upsampling the 37-pixel faces of those images are missed.

Landmarks: the ArcFace 5 points derived from the shape predictor's output, and the shape itself
(68 or 5 whole-pixel points) in ``Detections.shapes``: the dlib template makes its chips from it
exactly as ``dlib.get_face_chip`` does (FairFace's pipeline is ``detector="cnn", landmarks="5"``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..align import five_from_68, five_from_dlib5
from ..extras import Need, locate, require
from ..nets import external as _releases  # noqa: F401 (registers the model files)
from ..weights import (
    cached_sha256,
    fetch,
    packaged_model,
    weights_info,
)
from .base import BaseDetector, Detections, register_backend
from .params import renamed

log = logging.getLogger(__name__)

CNN_WEIGHTS = "dlib_mmod_human_face_detector"

#: default raw-score threshold per detector (HOG: see the module docstring; CNN: dlib's own 0)
DEFAULT_THRESHOLD = {"hog": 0.15, "cnn": 0.0}
PREDICTOR_FILES = {
    "68": "shape_predictor_68_face_landmarks.dat",
    "5": "shape_predictor_5_face_landmarks.dat",
}


def predictor_path(kind: str) -> Path:
    """Path of dlib's ``kind``-point shape predictor in the face_recognition_models package."""
    locate("face_recognition_models", "dlib", "the dlib backend (its landmark models)")
    return packaged_model(PREDICTOR_FILES[kind])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def _score_of_raw(threshold: float | None) -> dict[str, Any]:
    """The deprecated raw ``threshold`` as ``score_threshold`` (``None``: the default)."""
    return {"score_threshold": None if threshold is None else float(_sigmoid(threshold))}


@register_backend("dlib", workers=8, gpu=False)
class DlibDetector(BaseDetector):
    """dlib HOG (or MMOD CNN) face detector with dlib shape-predictor landmarks.

    ``score_threshold``: the least score (sigmoid of dlib's margin) kept; ``None``: raw 0.15
    for HOG, 0 for the CNN (see the module docstring).
    """

    name = "dlib"

    @staticmethod
    def needs(params: dict[str, Any]) -> list[Need]:
        """What the backend needs installed (checked where it is asked for)."""
        return [("dlib", "dlib", "the dlib backend"),
                ("face_recognition_models", "dlib", "the dlib backend (its landmark models)")]  # fmt: skip

    @renamed(threshold=_score_of_raw)
    def __init__(
        self,
        *,
        detector: str = "hog",
        upsample: int = 1,
        score_threshold: float | None = None,
        landmarks: str | None = "68",
    ) -> None:
        """``upsample``: times the image is doubled before detection (dlib's own default, 1,
        for both detectors). Each level gives the detector four times the pixels: it finds faces
        half as large, and with ``detector="cnn"`` on a CPU it is several times slower per photo
        than ``upsample=0`` (which finds only the larger faces)."""
        dlib = require("dlib", "dlib", "the dlib backend")

        if detector not in DEFAULT_THRESHOLD:
            raise ValueError(f"detector must be 'hog' or 'cnn', not {detector!r}")
        if score_threshold is not None and not 0.0 <= score_threshold <= 1.0:
            raise ValueError("score_threshold must be in [0, 1] or None")
        if landmarks is not None:
            landmarks = str(landmarks)
            if landmarks not in PREDICTOR_FILES:
                raise ValueError(f"landmarks must be '68', '5' or None, not {landmarks!r}")
        if int(upsample) < 0:
            raise ValueError("upsample must be >= 0")
        self.detector = detector
        self.upsample = int(upsample)
        if score_threshold is None:
            self.raw_threshold = DEFAULT_THRESHOLD[detector]
            self.score_threshold = float(_sigmoid(self.raw_threshold))
        else:
            self.score_threshold = float(score_threshold)
            with np.errstate(divide="ignore"):  # 0 and 1 become -inf and inf
                s = np.float64(score_threshold)
                self.raw_threshold = float(np.log(s) - np.log1p(-s))
        self.landmarks = landmarks
        self._weights: dict[str, str] = {}
        if detector == "hog":
            self._det = dlib.get_frontal_face_detector()
        else:
            path = fetch(CNN_WEIGHTS)
            self._det = dlib.cnn_face_detection_model_v1(str(path))
            self._weights[weights_info(CNN_WEIGHTS).filename] = weights_info(CNN_WEIGHTS).sha256
        self._predictor = None
        if landmarks is not None:
            ppath = predictor_path(landmarks)
            self._predictor = dlib.shape_predictor(str(ppath))
            self._weights[ppath.name] = cached_sha256(str(ppath))
        self._dlib = dlib

    def _detect(self, img: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
        """Raw boxes (x1 y1 x2 y2, half-open), raw scores, sub-detector index, dlib rects."""
        if self.detector == "hog":
            rects, scores, idx = self._det.run(img, self.upsample, self.raw_threshold)
            rects = list(rects)
            scores = np.asarray(scores, np.float64)
            idx = np.asarray(idx, np.int32)
        else:
            found = self._det(img, self.upsample)
            rects = [d.rect for d in found]
            scores = np.asarray([d.confidence for d in found], np.float64)
            idx = np.zeros(len(rects), np.int32)
            keep = scores >= self.raw_threshold
            rects = [r for r, k in zip(rects, keep, strict=True) if k]
            scores, idx = scores[keep], idx[keep]
        # dlib rectangles are inclusive: right/bottom pixel is inside the box
        boxes = np.array(
            [[r.left(), r.top(), r.right() + 1, r.bottom() + 1] for r in rects], np.float64
        ).reshape(-1, 4)
        return boxes, scores, idx, rects

    def _detect_one(self, img: np.ndarray) -> Detections:
        img = np.ascontiguousarray(img, dtype=np.uint8)
        boxes, raw, idx, rects = self._detect(img)
        n = len(boxes)
        lms = np.full((n, 5, 2), np.nan, np.float32)
        extra: dict[str, np.ndarray] = {
            "raw_score": raw.astype(np.float32),
            "detector_index": idx,
        }
        shapes = None
        if self._predictor is not None:
            npts = int(self.landmarks)
            pts = np.zeros((n, npts, 2), np.float32)
            for i, r in enumerate(rects):
                shape = self._predictor(img, r)
                pts[i] = [(p.x, p.y) for p in shape.parts()]
                lms[i] = five_from_68(pts[i]) if npts == 68 else five_from_dlib5(pts[i])
            extra[f"landmarks{npts}"] = pts
            shapes = list(pts)  # the native shape: dlib chips are fitted on it
        det = Detections(boxes, _sigmoid(raw), lms, extra, shapes)
        return det.select(np.argsort(-det.scores, kind="stable"))

    def _parameters(self) -> dict[str, Any]:
        return {
            "detector": self.detector,
            "upsample": self.upsample,
            "score_threshold": self.score_threshold,
            "raw_threshold": self.raw_threshold if np.isfinite(self.raw_threshold) else None,
            "score": "sigmoid(raw dlib margin)",
            "landmarks": self.landmarks,
            "dlib_version": str(getattr(self._dlib, "__version__", "unknown")),
        }
