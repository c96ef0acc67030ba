"""Standardised face alignment as pure functions.

Landmarks are always in the ArcFace 5-point order as seen in the image (left eye, right eye, nose
tip, left mouth corner, right mouth corner); points a backend cannot give are NaN. A similarity
transform (rotation, uniform scale, translation) is fitted from the finite points to a template and
the image is warped with it, so the same face found by two backends gives nearly the same crop.

Templates:
- ``"arcface"``: insightface's 112x112 ArcFace template, for any multiple of 112 (scaled) or of
  128 (scaled, shifted 8 px per 128 as insightface does).
- ``"dlib"``: dlib-style face chips (``dlib.get_face_chip_details``): the mean face of dlib's
  68-point model placed in a ``size`` chip with ``padding`` (FairFace: 300 px, padding 0.25).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from skimage.transform import SimilarityTransform

#: insightface's ArcFace template for 112x112 crops (left eye, right eye, nose, mouth l, mouth r)
ARCFACE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)

#: dlib's mean 68-point face (unit square, as used by get_face_chip_details) reduced to the five
#: ArcFace points: eye centres are the means of points 36-41 and 42-47, nose tip is point 30,
#: mouth corners are points 48 and 54.
DLIB_MEAN_5 = np.array(
    [
        [0.225492, 0.215990],
        [0.754761, 0.215990],
        [0.490127, 0.515625],
        [0.254149, 0.780233],
        [0.726104, 0.780233],
    ],
    dtype=np.float64,
)

TEMPLATES = ("arcface", "dlib")


class AlignmentError(ValueError):
    """Too few landmarks to align on."""


@dataclass(frozen=True)
class AlignSpec:
    """How crops are made: template name, output size in pixels, padding (dlib template only)."""

    template: str = "arcface"
    size: int = 112
    padding: float = 0.25

    def __post_init__(self) -> None:
        if self.template not in TEMPLATES:
            raise ValueError(f"unknown template {self.template!r}; choose one of {TEMPLATES}")
        template_points(self.template, self.size, self.padding)  # validates size

    def points(self) -> np.ndarray:
        return template_points(self.template, self.size, self.padding)


def arcface_template(size: int = 112) -> np.ndarray:
    """ArcFace destination points for a ``size`` crop, as insightface's ``estimate_norm``."""
    if size % 112 == 0:
        ratio, dx = size / 112.0, 0.0
    elif size % 128 == 0:
        ratio = size / 128.0
        dx = 8.0 * ratio
    else:
        raise ValueError(f"arcface crops are a multiple of 112 or 128 pixels, not {size}")
    dst = ARCFACE_112 * ratio
    dst[:, 0] += dx
    return dst


def dlib_template(size: int = 150, padding: float = 0.25) -> np.ndarray:
    """dlib face-chip destination points for a ``size`` chip with ``padding`` (fraction of face)."""
    if size <= 0:
        raise ValueError("size must be positive")
    return (padding + DLIB_MEAN_5) / (2 * padding + 1) * size


def template_points(
    template: str = "arcface", size: int = 112, padding: float = 0.25
) -> np.ndarray:
    """The (5, 2) destination points of ``template`` for a ``size`` crop."""
    if template == "arcface":
        return arcface_template(size)
    if template == "dlib":
        return dlib_template(size, padding)
    raise ValueError(f"unknown template {template!r}; choose one of {TEMPLATES}")


def similarity_from_points(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2x3 similarity (Umeyama least squares) mapping the finite points of ``src`` onto ``dst``."""
    src = np.asarray(src, np.float64).reshape(-1, 2)
    dst = np.asarray(dst, np.float64).reshape(-1, 2)
    ok = np.isfinite(src).all(axis=1)
    if ok.sum() < 2:
        raise AlignmentError(f"need at least 2 landmarks to align, got {int(ok.sum())}")
    s, d = src[ok], dst[ok]
    if ok.sum() == 2 and np.allclose(s[0], s[1]):
        raise AlignmentError("the two landmarks coincide")
    tform = SimilarityTransform()
    if hasattr(SimilarityTransform, "from_estimate"):
        tform = SimilarityTransform.from_estimate(s, d)
        if not tform:
            raise AlignmentError("similarity transform could not be estimated")
    elif not tform.estimate(s, d):
        raise AlignmentError("similarity transform could not be estimated")
    m = np.asarray(tform.params[:2], np.float64)
    if not np.isfinite(m).all():
        raise AlignmentError("similarity transform is not finite")
    return m


def similarity_from_box(box: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2x3 scale+translation placing a face box where the template expects the face.

    Used when a face has too few landmarks: the box centre goes to the midpoint between the
    template's eye centre and mouth centre, and the box width to twice the template eye distance.
    """
    x1, y1, x2, y2 = np.asarray(box, np.float64)
    w = max(x2 - x1, 1.0)
    eye_c = dst[:2].mean(axis=0)
    mouth_c = dst[3:].mean(axis=0)
    target_c = (eye_c + mouth_c) / 2
    scale = 2.0 * np.linalg.norm(dst[1] - dst[0]) / w
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    return np.array(
        [[scale, 0.0, target_c[0] - scale * cx], [0.0, scale, target_c[1] - scale * cy]]
    )


def estimate_transform(
    landmarks: np.ndarray | None, box: np.ndarray | None, spec: AlignSpec
) -> tuple[np.ndarray, str]:
    """The image-to-crop 2x3 transform of one face and how it was found.

    Returns ``(M, method)`` with method ``"landmarks"`` (3 or more points), ``"eyes"`` (the two
    eyes only, which then land exactly on the template's eyes) or ``"box"`` (no usable landmarks).
    """
    dst = spec.points()
    if landmarks is not None:
        lm = np.asarray(landmarks, np.float64).reshape(-1, 2)
        ok = np.isfinite(lm).all(axis=1)
        if ok.sum() >= 3:
            return similarity_from_points(lm, dst), "landmarks"
        if ok[0] and ok[1] and ok.sum() == 2:
            try:
                return similarity_from_points(lm, dst), "eyes"
            except AlignmentError:
                pass
    if box is None:
        raise AlignmentError("no landmarks and no box to align on")
    return similarity_from_box(box, dst), "box"


def warp(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """The ``size`` x ``size`` crop of ``image`` under the 2x3 image-to-crop ``matrix``."""
    return cv2.warpAffine(
        image,
        np.asarray(matrix, np.float64),
        (size, size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )


def align_face(
    image: np.ndarray,
    landmarks: np.ndarray | None,
    box: np.ndarray | None = None,
    spec: AlignSpec | None = None,
) -> tuple[np.ndarray, np.ndarray, str]:
    """Aligned crop of one face: ``(crop, M, method)``; see :func:`estimate_transform`."""
    spec = spec or AlignSpec()
    m, method = estimate_transform(landmarks, box, spec)
    return warp(image, m, spec.size), m, method


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine ``matrix`` to (..., 2) ``points``."""
    p = np.asarray(points, np.float64)
    m = np.asarray(matrix, np.float64)
    return p @ m[:, :2].T + m[:, 2]


def invert(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a 2x3 affine transform (crop-to-image from image-to-crop)."""
    return cv2.invertAffineTransform(np.asarray(matrix, np.float64))


def _ordered_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two points with the smaller image x first."""
    return (a, b) if a[0] <= b[0] else (b, a)


def five_from_68(p68: np.ndarray) -> np.ndarray:
    """ArcFace / RetinaFace 5 points (5, 2) float32 from iBUG 68: eye centres (mean of 36-41,
    42-47), nose tip 30, mouth corners 48 / 54, each pair ordered by image x."""
    p = np.asarray(p68, np.float32).reshape(68, 2)
    le, re = _ordered_pair(p[36:42].mean(axis=0), p[42:48].mean(axis=0))
    lm, rm = _ordered_pair(p[48], p[54])
    return np.stack([le, re, p[30], lm, rm]).astype(np.float32)


def five_from_dlib5(p5: np.ndarray) -> np.ndarray:
    """ArcFace 5 points from dlib's 5-point model (eye corners 0-1 and 2-3, under-nose 4;
    no mouth: NaN), eyes ordered by image x."""
    p = np.asarray(p5, np.float32).reshape(5, 2)
    le, re = _ordered_pair(p[0:2].mean(axis=0), p[2:4].mean(axis=0))
    nan = np.full(2, np.nan, np.float32)
    return np.stack([le, re, p[4], nan, nan])
