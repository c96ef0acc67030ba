"""Image-quality measures of one face, as pure functions: size, sharpness, exposure.

Sizes are in input pixels: ``face_size`` is the inter-ocular distance (between the two eye
centres of the five landmarks), ``box_side`` the geometric mean of the box's sides.

The others are measured on the face's grey ArcFace crop at one fixed size (:data:`QUALITY_ALIGN`,
112 px, insightface's template), so that values compare across backends, photos and face sizes:

- ``blur``: variance of the Laplacian (``cv2.Laplacian``, ``CV_64F``, ``ksize=1``: the 4-neighbour
  kernel) of the grey crop, in grey levels squared. Higher = sharper; a face upscaled from a few
  pixels, out of focus or moving scores low. It grows with contrast and texture too, so compare
  faces, not absolute numbers across very different photos.
- ``brightness``: mean grey level of the crop, 0 (black) to 255 (white).
- ``contrast``: standard deviation of the crop's grey levels (0: flat).

Grey is ``cv2.COLOR_RGB2GRAY`` (ITU-R BT.601 luma). Only the crop's pixels that come from inside
the photo count: a face at the photo's edge gets black padding in its crop, whose sharp edge would
read as detail and its black as darkness (:func:`inside_mask`).
"""

from __future__ import annotations

import math

import numpy as np

from ..align import AlignSpec, estimate_transform

#: the crop the crop measures are made on: ArcFace template, 112 px
QUALITY_ALIGN = AlignSpec("arcface", 112)


def _points(value: object, n: int | None = None) -> np.ndarray | None:
    """A landmark list as a (K, 2) float array, or None when missing (None, NaN, ``pd.NA``)."""
    if value is None or np.ndim(value) == 0:
        return None
    p = np.asarray(value, np.float64).reshape(-1, 2)
    return p if n is None or len(p) == n else None


def face_size(landmarks: object) -> float:
    """Inter-ocular distance in input pixels: between the two eye centres (ArcFace points 0
    and 1); NaN without both eyes."""
    p = _points(landmarks, 5)
    if p is None or not np.isfinite(p[:2]).all():
        return math.nan
    return float(np.hypot(*(p[1] - p[0])))


def box_side(x1: float, y1: float, x2: float, y2: float) -> float:
    """``sqrt(width * height)`` of a box in input pixels; NaN for a missing box."""
    w, h = float(x2) - float(x1), float(y2) - float(y1)
    if not (w >= 0 and h >= 0):  # also NaN
        return math.nan
    return math.sqrt(w * h)


def quality_transform(landmarks: object, box: np.ndarray | None) -> np.ndarray:
    """The image-to-crop 2x3 transform of the :data:`QUALITY_ALIGN` crop, as the pipeline makes
    it (:func:`faceetl.align.estimate_transform`: landmarks, else eyes, else box)."""
    m, _ = estimate_transform(_points(landmarks), box, QUALITY_ALIGN)
    return m


def inside_mask(matrix: np.ndarray, width: int, height: int, size: int = 112) -> np.ndarray:
    """Bool (size, size): the crop pixels under the image-to-crop ``matrix`` that are sampled
    wholly from inside a ``width`` x ``height`` image (bilinear sampling blends pixels past the
    border with black: one pixel of margin is dropped)."""
    import cv2

    m = np.asarray(matrix, np.float64)
    corners = np.array([[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]], float)
    poly = corners @ m[:, :2].T + m[:, 2]
    mask = np.zeros((size, size), np.uint8)
    shift = 4  # sub-pixel vertices: fillConvexPoly takes fixed-point coordinates
    cv2.fillConvexPoly(mask, np.round(poly * (1 << shift)).astype(np.int32), 1, cv2.LINE_8, shift)
    return cv2.erode(mask, np.ones((3, 3), np.uint8)).astype(bool)


def crop_measures(crop: np.ndarray, mask: np.ndarray | None = None) -> tuple[float, float, float]:
    """(blur, brightness, contrast) of an RGB uint8 crop (see the module docstring), over the
    pixels where ``mask`` is true (all by default); NaNs when none is left."""
    import cv2

    grey = cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_RGB2GRAY)
    lap = cv2.Laplacian(grey, cv2.CV_64F, ksize=1)
    if mask is None:
        mask = np.ones(grey.shape, bool)
    # the Laplacian of a pixel reads its 4 neighbours: they must all be inside too
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    lap_mask = cv2.erode(mask.astype(np.uint8), cross).astype(bool)
    if not mask.any():
        return math.nan, math.nan, math.nan
    g = grey[mask].astype(np.float64)
    blur = float(lap[lap_mask].var()) if lap_mask.any() else math.nan
    return blur, float(g.mean()), float(g.std())
