"""RetinaFace's training augmentation (biubug6/Pytorch_Retinaface ``data_augment.py``): a random
square crop, photometric distortion, mirroring with the landmark pairs swapped, resizing with a
random interpolation and BGR mean subtraction; :func:`preprocess` is the deterministic variant.

The crop's side is drawn as the reference's ``_crop`` draws it: ``random.choice`` of
:data:`PRE_SCALES` (0.3, 0.45, 0.6, 0.8, 1.0) times the short side, each with p = 1/5, mean
0.63. ``continuous_scale=True`` gives the draw in the reference's commented-out code instead
(1.0 with p = 0.2, else uniform in 0.3-1; mean 0.72), which faceetl used before.

Targets are ``(N, 15)`` rows: x1 y1 x2 y2, ten landmark coordinates and a label (1: the face has
landmarks, -1: it has not), in pixels in, normalised to the square's side out.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from ...nets.retinaface import MEAN_BGR

#: the crop scales the reference draws from, uniformly (``data_augment._crop``'s PRE_SCALES)
PRE_SCALES = (0.3, 0.45, 0.6, 0.8, 1.0)

_INTERPOLATIONS = (
    cv2.INTER_LINEAR,
    cv2.INTER_CUBIC,
    cv2.INTER_AREA,
    cv2.INTER_NEAREST,
    cv2.INTER_LANCZOS4,
)


def matrix_iof(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over the area of each box of ``a`` (N, 4) with each box of ``b`` (M, 4)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(rb - lt, axis=2) * (lt < rb).all(axis=2)
    area = np.prod(a[:, 2:] - a[:, :2], axis=1)
    return inter / np.maximum(area[:, None], 1)


def draw_crop_scale(rng: np.random.Generator, continuous_scale: bool = False) -> float:
    """The side of a crop relative to the image's short side: one of :data:`PRE_SCALES` with
    equal chances (the reference), or with ``continuous_scale`` 1.0 with p = 0.2 else uniform in
    0.3-1 (the reference's commented-out draw)."""
    if continuous_scale:
        return 1.0 if rng.uniform() <= 0.2 else float(rng.uniform(0.3, 1.0))
    return PRE_SCALES[int(rng.integers(len(PRE_SCALES)))]


def random_crop(
    image: np.ndarray,
    targets: np.ndarray,
    image_size: int,
    rng: np.random.Generator,
    min_face: float = 0.0,
    tries: int = 250,
    continuous_scale: bool = False,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """A random square crop, its side drawn by :func:`draw_crop_scale` (``continuous_scale``).

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
        side = int(draw_crop_scale(rng, continuous_scale) * short)
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
    continuous_scale: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """The training transform (crop, distort, pad, mirror, resize, mean): CHW float32, targets
    normalised to the square's side. ``continuous_scale``: see :func:`draw_crop_scale`."""
    image, t, pad = random_crop(
        image, targets, image_size, rng, min_face, continuous_scale=continuous_scale
    )
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


__all__ = [
    "PRE_SCALES",
    "augment",
    "distort",
    "draw_crop_scale",
    "matrix_iof",
    "mirror",
    "pad_to_square",
    "preprocess",
    "random_crop",
]
