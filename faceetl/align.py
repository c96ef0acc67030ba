"""Standardised face alignment as pure functions.

Landmarks are always in the ArcFace 5-point order as seen in the image (left eye, right eye, nose
tip, left mouth corner, right mouth corner); points a backend cannot give are NaN. A similarity
transform (rotation, uniform scale, translation) is fitted from the finite points to a template and
the image is warped with it, so the same face found by two backends gives nearly the same crop.

Templates:
- ``"arcface"``: insightface's 112x112 ArcFace template, for any multiple of 112 (scaled) or of
  128 (scaled, shifted 8 px per 128 as insightface does): ``estimate_norm`` + ``cv2.warpAffine``.
- ``"dlib"``: dlib's face chips, made as ``dlib.get_face_chip_details`` + ``extract_image_chip``
  make them (FairFace: 300 px, padding 0.25; dlib's ResNet descriptor: 150 px, padding 0.25).
  dlib fits its template to the image (template -> image) on the backend's native shape where
  the frame has one (``shape``: 33 points of a 68-point shape, the 5 points of dlib's 5-point
  model), else on the 5 ArcFace points mapped to their places on dlib's mean face; the chip
  rectangle's corners go to pixels 0 and size-1, and faces much larger than the chip are
  downsampled through dlib's image pyramid first. dlib itself does the extraction when it
  imports; :func:`extract_dlib_chip` has a numpy equivalent for when it does not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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

#: dlib's mean face (the unit-square template of ``get_face_chip_details``): x and y of the iBUG
#: 68-point model's points 17-67 (dlib has no mean position for the jaw, points 0-16)
_DLIB_MEAN_X = (
    0.000213256, 0.0752622, 0.18113, 0.29077, 0.393397, 0.586856, 0.689483, 0.799124, 0.904991,
    0.98004, 0.490127, 0.490127, 0.490127, 0.490127, 0.36688, 0.426036, 0.490127, 0.554217,
    0.613373, 0.121737, 0.187122, 0.265825, 0.334606, 0.260918, 0.182743, 0.645647, 0.714428,
    0.793132, 0.858516, 0.79751, 0.719335, 0.254149, 0.340985, 0.428858, 0.490127, 0.551395,
    0.639268, 0.726104, 0.642159, 0.556721, 0.490127, 0.423532, 0.338094, 0.290379, 0.428096,
    0.490127, 0.552157, 0.689874, 0.553364, 0.490127, 0.42689,
)  # fmt: skip
_DLIB_MEAN_Y = (
    0.106454, 0.038915, 0.0187482, 0.0344891, 0.0773906, 0.0773906, 0.0344891, 0.0187482,
    0.038915, 0.106454, 0.203352, 0.307009, 0.409805, 0.515625, 0.587326, 0.609345, 0.628106,
    0.609345, 0.587326, 0.216423, 0.178758, 0.179852, 0.231733, 0.245099, 0.244077, 0.231733,
    0.179852, 0.178758, 0.216423, 0.244077, 0.245099, 0.780233, 0.745405, 0.727388, 0.742578,
    0.727388, 0.745405, 0.780233, 0.864805, 0.902192, 0.909281, 0.902192, 0.864805, 0.784792,
    0.778746, 0.785343, 0.778746, 0.784792, 0.824182, 0.831803, 0.824182,
)  # fmt: skip
#: dlib's mean face as a (68, 2) array in the unit square, NaN for the jaw (points 0-16)
DLIB_MEAN_68 = np.full((68, 2), np.nan, np.float64)
DLIB_MEAN_68[17:, 0] = _DLIB_MEAN_X
DLIB_MEAN_68[17:, 1] = _DLIB_MEAN_Y
#: the 33 points of a 68-point shape dlib fits a chip to: nose 27-35, eyes 36-47, upper lip 48-54
#: and 60-64 (not the eyebrows 17-26 nor the lower lip 55-59, 65-67)
DLIB_FIT_68 = np.r_[27:55, 60:65]
#: the template of dlib's 5-point model (unit square): the outer and inner corner of the eye on
#: the image's right, the outer and inner corner of the other eye, the point under the nose
DLIB_TEMPLATE_5 = np.array(
    [
        [0.8595674595992, 0.2134981538014],
        [0.6460604764104, 0.2289674387677],
        [0.1205750620789, 0.2137274526848],
        [0.3340850613712, 0.2290642403242],
        [0.4901123135679, 0.6277975316475],
    ],
    dtype=np.float64,
)
#: the five ArcFace points on dlib's mean face: eye centres are the means of points 36-41 and
#: 42-47, nose tip is point 30, mouth corners are points 48 and 54
DLIB_MEAN_5 = np.stack(
    [
        DLIB_MEAN_68[36:42].mean(axis=0),
        DLIB_MEAN_68[42:48].mean(axis=0),
        DLIB_MEAN_68[30],
        DLIB_MEAN_68[48],
        DLIB_MEAN_68[54],
    ]
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
    # Umeyama's least-squares similarity (rotation, uniform scale, translation; never a
    # reflection), written out for 2-D: with both point sets centred, rotation times scale is
    # the complex number sum(conj(s) * d) / sum(|s|^2). Hand-written rather than scikit-image's
    # SimilarityTransform: it is this one small fit, and dropping it drops scikit-image and
    # SciPy from every install. Same matrix to ~1e-15, so the same crops as insightface's.
    s_mean, d_mean = s.mean(axis=0), d.mean(axis=0)
    sc, dc = s - s_mean, d - d_mean
    spread = float((sc * sc).sum())
    if not spread > 0:
        raise AlignmentError("the landmarks coincide")
    a = float((sc * dc).sum()) / spread
    b = float((sc[:, 0] * dc[:, 1] - sc[:, 1] * dc[:, 0]).sum()) / spread
    rs = np.array([[a, -b], [b, a]])
    m = np.column_stack([rs, d_mean - rs @ s_mean])
    if not np.isfinite(m).all():
        raise AlignmentError("similarity transform is not finite")
    if a == 0 and b == 0:
        raise AlignmentError("the target points coincide: the similarity has scale 0")
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


# --------------------------------------------------------------------------------------------
# dlib face chips: dlib's geometry (get_face_chip_details) and extraction (extract_image_chip)


@dataclass(frozen=True)
class DlibChip:
    """A dlib ``chip_details`` of a square chip: the rectangle ``(left, top, right, bottom)`` in
    image pixels (dlib's convention: its corners become chip pixels 0 and ``size - 1``), rotated
    by ``angle`` radians about its centre."""

    rect: tuple[float, float, float, float]
    angle: float
    size: int

    def chip_to_image(self) -> np.ndarray:
        """2x3 affine taking chip pixels to image pixels (corners to the rotated rectangle's)."""
        left, top, right, bottom = self.rect
        c = np.array([(left + right) / 2, (top + bottom) / 2])
        cos, sin = np.cos(self.angle), np.sin(self.angle)
        rot = np.array([[cos, -sin], [sin, cos]])
        tl = rot @ (np.array([left, top]) - c) + c
        tr = rot @ (np.array([right, top]) - c) + c
        bl = rot @ (np.array([left, bottom]) - c) + c
        n = max(self.size - 1, 1)
        return np.column_stack([(tr - tl) / n, (bl - tl) / n, tl])

    def matrix(self) -> np.ndarray:
        """2x3 image-to-chip affine (dlib's ``get_mapping_to_chip``)."""
        return invert(self.chip_to_image())

    @classmethod
    def from_matrix(cls, matrix: np.ndarray, size: int) -> DlibChip:
        """The chip whose image-to-chip transform is the similarity ``matrix`` (inverse of
        :meth:`matrix`)."""
        a = invert(matrix)
        angle = float(np.arctan2(a[1, 0], a[0, 0]))
        half = np.hypot(a[0, 0], a[1, 0]) * (size - 1) / 2
        cx, cy = a[:, :2] @ np.full(2, (size - 1) / 2) + a[:, 2]
        return cls((cx - half, cy - half, cx + half, cy + half), angle, int(size))


def dlib_chip(
    template: np.ndarray, points: np.ndarray, size: int, padding: float = 0.25
) -> DlibChip:
    """dlib's chip of a face whose image ``points`` correspond to the unit-square ``template``
    points: ``get_face_chip_details``'s geometry for any point set.

    The template, padded and scaled to ``size``, is fitted to the image (a least-squares
    similarity from the template to the image, as dlib does); the chip rectangle is the chip's
    square under that similarity, its corners at chip pixels 0 and ``size - 1``.
    """
    if size <= 0 or padding < 0:
        raise ValueError("dlib chips need size > 0 and padding >= 0")
    chip_points = (padding + np.asarray(template, np.float64)) / (2 * padding + 1) * size
    t = similarity_from_points(chip_points, points)
    scale = float(np.hypot(t[0, 0], t[1, 0]))
    if not scale > 0:
        raise AlignmentError("the landmarks coincide")
    angle = float(np.arctan2(t[1, 0], t[0, 0]))
    cx, cy = t[:, :2] @ np.full(2, size / 2) + t[:, 2]
    half = (size * scale - 1) / 2  # dlib's centred rectangle: width - 1 between its corners
    return DlibChip((cx - half, cy - half, cx + half, cy + half), angle, int(size))


def _dlib():
    """The dlib module, or None where it does not import."""
    try:
        import dlib
    except ImportError:  # pragma: no cover - dlib-bin is a dependency
        return None
    return dlib


def native_shape(shape: np.ndarray | None) -> np.ndarray | None:
    """``shape`` as a (68, 2) or (5, 2) float array if it is a complete dlib shape, else None
    (also for a missing value: None, NaN, ``pd.NA``)."""
    if shape is None or np.ndim(shape) == 0:
        return None
    p = np.asarray(shape, np.float64).reshape(-1, 2)
    if len(p) not in (5, 68) or not np.isfinite(p).all():
        return None
    return p


def dlib_face_chip(
    shape: np.ndarray, size: int, padding: float = 0.25, engine: str | None = None
) -> DlibChip:
    """``dlib.get_face_chip_details`` of a 68- or 5-point dlib shape ((K, 2) image points).

    68 points: dlib's mean face fitted on the 33 points of :data:`DLIB_FIT_68`; 5 points:
    dlib's 5-point template. ``engine``: ``"dlib"`` (dlib's own function; the points must be
    whole pixels, as dlib's shape predictors give them), ``"numpy"`` (:func:`dlib_chip`), or
    None: dlib where it imports and the points are whole, else numpy (same geometry to ~1e-12).
    """
    p = native_shape(shape)
    if p is None:
        raise AlignmentError("a dlib shape is 68 or 5 finite points")
    dlib = _dlib() if engine in (None, "dlib") else None
    whole = bool(np.all(p == np.round(p)))
    if engine == "dlib" and (dlib is None or not whole):
        raise ValueError("engine='dlib' needs dlib and a shape in whole pixels")
    if dlib is not None and whole:
        q = p.astype(np.int64)
        rect = dlib.rectangle(
            int(q[:, 0].min()), int(q[:, 1].min()), int(q[:, 0].max()), int(q[:, 1].max())
        )
        parts = dlib.points([dlib.point(int(x), int(y)) for x, y in q])
        det = dlib.get_face_chip_details(dlib.full_object_detection(rect, parts), size, padding)
        r = det.rect
        return DlibChip((r.left(), r.top(), r.right(), r.bottom()), float(det.angle), int(size))
    if len(p) == 68:
        return dlib_chip(DLIB_MEAN_68[DLIB_FIT_68], p[DLIB_FIT_68], size, padding)
    return dlib_chip(DLIB_TEMPLATE_5, p, size, padding)


def _lround(x: np.ndarray | float) -> np.ndarray:
    """C's ``lround``: halves away from zero."""
    x = np.asarray(x, np.float64)
    return (np.sign(x) * np.floor(np.abs(x) + 0.5)).astype(np.int64)


def _rect_area(r: np.ndarray) -> float:
    """dlib's ``drectangle::area``: (right - left + 1) * (bottom - top + 1), 0 when empty."""
    left, top, right, bottom = r
    if left > right or top > bottom:
        return 0.0
    return float((right - left + 1) * (bottom - top + 1))


def _rect_down(r: np.ndarray) -> np.ndarray:
    """dlib's ``pyramid_down<2>::rect_down``: each corner to ``p / 2 - (1.25, 0.75)``."""
    return np.asarray(r, np.float64) / 2 - np.array([1.25, 0.75, 1.25, 0.75])


def pyramid_down(image: np.ndarray) -> np.ndarray:
    """dlib's ``pyramid_down<2>`` of an RGB uint8 image: the 5-tap [1 4 6 4 1] filter in both
    directions with every other row and column kept, sums truncated by 256, output
    ``((H - 3) // 2, (W - 3) // 2)``; an image of 8 pixels or fewer on a side gives an empty one."""
    h, w = image.shape[:2]
    if h <= 8 or w <= 8:
        return np.zeros((0, 0) + image.shape[2:], np.uint8)
    nr, nc = (h - 3) // 2, (w - 3) // 2
    x = image.astype(np.uint16)
    taps = (1, 4, 6, 4, 1)
    t = sum(k * x[:, i : i + 2 * nc : 2] for i, k in enumerate(taps))
    d = sum(k * t[i : i + 2 * nr : 2] for i, k in enumerate(taps))
    return (d // 256).astype(np.uint8)


def _bilinear(src: np.ndarray, chip_to_src: np.ndarray, size: int) -> np.ndarray:
    """dlib's ``transform_image`` with ``interpolate_bilinear``: each chip pixel sampled at its
    place in ``src``, 0 where a neighbour falls outside, the weighted sum truncated to uint8."""
    out = np.zeros((size, size) + src.shape[2:], np.uint8)
    h, w = src.shape[:2]
    if h < 2 or w < 2:
        return out
    cc, rr = np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64))
    a = chip_to_src
    x = a[0, 0] * cc + a[0, 1] * rr + a[0, 2]
    y = a[1, 0] * cc + a[1, 1] * rr + a[1, 2]
    left, top = np.floor(x), np.floor(y)
    ok = (left >= 0) & (top >= 0) & (left + 1 < w) & (top + 1 < h)
    li, ti = left[ok].astype(np.intp), top[ok].astype(np.intp)
    fx, fy = (x[ok] - left[ok])[:, None], (y[ok] - top[ok])[:, None]
    s = src.reshape(h, w, -1).astype(np.float64)
    val = (1 - fy) * ((1 - fx) * s[ti, li] + fx * s[ti, li + 1]) + fy * (
        (1 - fx) * s[ti + 1, li] + fx * s[ti + 1, li + 1]
    )
    out.reshape(size, size, -1)[ok] = val.astype(np.uint8)
    return out


def _extract_numpy(image: np.ndarray, chip: DlibChip) -> np.ndarray:
    """``dlib.extract_image_chip`` (bilinear, image pyramid) written with numpy."""
    size, n = chip.size, float(chip.size) ** 2
    rect = np.asarray(chip.rect, np.float64)
    h, w = image.shape[:2]
    if chip.angle == 0 and rect[2] - rect[0] + 1 == size and rect[3] - rect[1] + 1 == size:
        # no scaling, no rotation: dlib copies the (rounded) rectangle, zeros outside the image
        left, top = _lround(rect[:2])
        out = np.zeros((size, size) + image.shape[2:], np.uint8)
        y0, x0 = max(top, 0), max(left, 0)
        y1, x1 = min(top + size, h), min(left + size, w)
        if y1 > y0 and x1 > x0:
            out[y0 - top : y1 - top, x0 - left : x1 - left] = image[y0:y1, x0:x1]
        return out
    # how deep a pyramid the chip needs, and the part of the image it reads (plus a border)
    depth, grow, down = 0, 2.0, _rect_down(rect)
    while _rect_area(down) > n:
        down = _rect_down(down)
        depth += 1
        grow = grow * 2 + 2
    a = chip.chip_to_image()
    corners = np.array([[0, 0, 1], [size - 1, 0, 1], [0, size - 1, 1], [size - 1, size - 1, 1]])
    rot = corners @ a.T
    g = np.r_[rot.min(axis=0) - grow, rot.max(axis=0) + grow]
    g = np.r_[np.maximum(g[:2], 0), np.minimum(g[2:], [w - 1, h - 1])]
    bl, bt, br, bb = _lround(g)
    if bl > br or bt > bb:  # the chip lies outside the image
        return np.zeros((size, size) + image.shape[2:], np.uint8)
    src = image[bt : bb + 1, bl : br + 1]
    level_rect = rect - np.array([bl, bt, bl, bt], np.float64)
    for _ in range(depth):
        src = pyramid_down(src)
        level_rect = _rect_down(level_rect)
    moved = DlibChip(tuple(level_rect), chip.angle, size)
    return _bilinear(src, moved.chip_to_image(), size)


def extract_dlib_chip(image: np.ndarray, chip: DlibChip, engine: str | None = None) -> np.ndarray:
    """The ``size`` x ``size`` chip of an RGB uint8 ``image``, as ``dlib.extract_image_chip``
    makes it: bilinear, after dlib's image pyramid where the face is over twice the chip size.

    ``engine``: ``"dlib"``, ``"numpy"`` (:func:`pyramid_down` and dlib's bilinear sampling
    written with numpy) or None (dlib where it imports).
    """
    dlib = _dlib() if engine in (None, "dlib") else None
    if engine == "dlib" and dlib is None:
        raise ValueError("engine='dlib' needs dlib")
    if dlib is None:
        return _extract_numpy(np.asarray(image), chip)
    details = dlib.chip_details(
        dlib.drectangle(*(float(v) for v in chip.rect)),
        dlib.chip_dims(chip.size, chip.size),
        float(chip.angle),
    )
    return np.asarray(dlib.extract_image_chip(np.ascontiguousarray(image), details))


# --------------------------------------------------------------------------------------------
# one face


def estimate_transform(
    landmarks: np.ndarray | None,
    box: np.ndarray | None,
    spec: AlignSpec,
    shape: np.ndarray | None = None,
) -> tuple[np.ndarray, str]:
    """The image-to-crop 2x3 transform of one face and how it was found.

    Returns ``(M, method)`` with method ``"shape"`` (the dlib template on the backend's native
    68- or 5-point ``shape``: :func:`dlib_face_chip`), ``"landmarks"`` (3 or more points),
    ``"eyes"`` (the two eyes only, which then land exactly on the template's eyes) or ``"box"``
    (no usable landmarks). The dlib template fits the ArcFace points' places on dlib's mean face
    (:data:`DLIB_MEAN_5`) to the image, as dlib fits its own shapes; ``shape`` is used by the
    dlib template only.
    """
    dlib_template_ = spec.template == "dlib"
    if dlib_template_ and native_shape(shape) is not None:
        return dlib_face_chip(shape, spec.size, spec.padding).matrix(), "shape"
    dst = spec.points()
    if landmarks is not None:
        lm = np.asarray(landmarks, np.float64).reshape(-1, 2)
        ok = np.isfinite(lm).all(axis=1)
        method = "landmarks" if ok.sum() >= 3 else "eyes"
        if ok.sum() >= 3 or (ok[0] and ok[1] and ok.sum() == 2):
            try:
                if dlib_template_:
                    chip = dlib_chip(DLIB_MEAN_5[ok], lm[ok], spec.size, spec.padding)
                    return chip.matrix(), method
                return similarity_from_points(lm, dst), method
            except AlignmentError:
                if method == "landmarks":
                    raise
    if box is None:
        raise AlignmentError("no landmarks and no box to align on")
    return similarity_from_box(box, dst), "box"


def warp(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """The ``size`` x ``size`` crop of ``image`` under the 2x3 image-to-crop ``matrix``."""
    import cv2

    return cv2.warpAffine(
        image,
        np.asarray(matrix, np.float64),
        (size, size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )


def square_crop(
    image: np.ndarray, x0: int, y0: int, side: int, size: int, area: bool = True
) -> np.ndarray:
    """The square ``[x0, x0 + side) x [y0, y0 + side)`` of ``image`` resized to ``size`` x
    ``size``: zero past the image's borders (never stretched), area-averaged when shrinking,
    bilinear when enlarging. A detector's second look at one face (O-Net, BlazeFace refinement).

    ``area=False`` samples bilinearly straight from the image, as MediaPipe's
    ImageToTensorCalculator does for its inputs: no anti-aliasing, but its cost does not grow
    with the square (0.1 ms for a 600 px square to 128 px, against 2.3 ms area-averaged).
    """
    import cv2

    if not area:
        s = size / side  # pixel centres map as in cv2.resize: (x + 0.5) * s - 0.5
        m = np.array([[s, 0.0, s * (0.5 - x0) - 0.5], [0.0, s, s * (0.5 - y0) - 0.5]])
        return warp(image, m, size)
    h, w = image.shape[:2]
    ix0, iy0 = max(x0, 0), max(y0, 0)
    ix1, iy1 = min(x0 + side, w), min(y0 + side, h)
    if (ix0, iy0, ix1, iy1) == (x0, y0, x0 + side, y0 + side):
        window = image[iy0:iy1, ix0:ix1]  # wholly inside: no copy
    else:
        window = np.zeros((side, side, *image.shape[2:]), image.dtype)
        if ix1 > ix0 and iy1 > iy0:
            window[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0] = image[iy0:iy1, ix0:ix1]
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(window, (size, size), interpolation=interp)


def crop_face(image: np.ndarray, matrix: np.ndarray, spec: AlignSpec) -> np.ndarray:
    """The crop of ``spec`` under the image-to-crop ``matrix``: :func:`warp` (``cv2.warpAffine``,
    as insightface) for the ArcFace template, dlib's chip extraction for the dlib template."""
    if spec.template == "dlib":
        return extract_dlib_chip(image, DlibChip.from_matrix(matrix, spec.size))
    return warp(image, matrix, spec.size)


def align_face(
    image: np.ndarray,
    landmarks: np.ndarray | None,
    box: np.ndarray | None = None,
    spec: AlignSpec | None = None,
    shape: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, str]:
    """Aligned crop of one face: ``(crop, M, method)``; see :func:`estimate_transform`."""
    spec = spec or AlignSpec()
    m, method = estimate_transform(landmarks, box, spec, shape)
    return crop_face(image, m, spec), m, method


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine ``matrix`` to (..., 2) ``points``."""
    p = np.asarray(points, np.float64)
    m = np.asarray(matrix, np.float64)
    return p @ m[:, :2].T + m[:, 2]


def invert(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a 2x3 affine transform (crop-to-image from image-to-crop)."""
    import cv2

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
