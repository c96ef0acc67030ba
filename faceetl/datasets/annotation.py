"""One image's face annotations: the record every detection data-set reader returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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


__all__ = ["ImageAnnotation"]
