"""The RetinaFace training set: parsed face annotations plus an image root, as tensors."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ...datasets.annotation import ImageAnnotation
from ...datasets.formats import read_annotations
from ...datasets.wider import default_image_root
from ...images import ImageError, load_image
from ...nets.retinaface import MEAN_BGR
from .augmentation import augment, preprocess

log = logging.getLogger(__name__)


def _read(
    path: str | os.PathLike, image_root: str | os.PathLike | None
) -> tuple[list[ImageAnnotation], str | os.PathLike]:
    """The annotations of ``path`` and their image root (default: beside the file)."""
    return read_annotations(path), default_image_root(path) if image_root is None else image_root


class RetinaFaceDataset(Dataset):
    """Images and faces for RetinaFace training: ``(image (3, S, S) float32, targets (N, 15))``.

    ``annotations``: parsed :class:`~faceetl.datasets.ImageAnnotation` records (any reader of
    :mod:`faceetl.datasets`; :meth:`from_file` reads a file); image paths are relative to
    ``image_root``. Faces flagged ``invalid`` (WIDER) and boxes without area are left out.
    Images are BGR with ``mean`` subtracted, as the released models take them. With ``augment``
    each item is randomly transformed (:func:`~.augmentation.augment`), reproducibly from
    ``(seed, epoch, index)``; set ``epoch`` with :meth:`set_epoch`. Without, it is padded square
    and resized (:func:`~.augmentation.preprocess`). The crop scale is drawn from the reference's
    five values; ``continuous_scale=True`` draws it as faceetl did before
    (:func:`~.augmentation.draw_crop_scale`).
    """

    def __init__(
        self,
        annotations: Sequence[ImageAnnotation],
        image_root: str | os.PathLike | None = None,
        image_size: int = 640,
        augment: bool = True,
        mean: Sequence[float] = MEAN_BGR,
        drop_invalid: bool = True,
        min_face: float = 0.0,
        skip_empty: bool = False,
        seed: int = 0,
        continuous_scale: bool = False,
    ) -> None:
        if isinstance(annotations, (str, os.PathLike)):
            warnings.warn(
                "RetinaFaceDataset(path) is deprecated: use RetinaFaceDataset.from_file(path)",
                DeprecationWarning,
                stacklevel=2,
            )
            annotations, image_root = _read(annotations, image_root)
        self.image_root = None if image_root is None else Path(image_root)
        self.image_size = int(image_size)
        self.augment = bool(augment)
        self.mean = tuple(float(m) for m in mean)
        self.min_face = float(min_face)
        self.seed = int(seed)
        self.continuous_scale = bool(continuous_scale)
        self.epoch = 0
        self.items: list[tuple[str, np.ndarray]] = []
        dropped = 0
        for ann in annotations:
            t = ann.targets()
            keep = (t[:, 2] > t[:, 0]) & (t[:, 3] > t[:, 1])
            if drop_invalid and "invalid" in ann.attributes:
                keep &= np.asarray(ann.attributes["invalid"]) == 0
            dropped += int((~keep).sum())
            if skip_empty and not keep.any():
                continue
            self.items.append((ann.path, t[keep]))
        if dropped:
            log.info("left out %d invalid or empty faces", dropped)

    @classmethod
    def from_file(
        cls, path: str | os.PathLike, image_root: str | os.PathLike | None = None, **kwargs: Any
    ) -> RetinaFaceDataset:
        """The dataset of an annotation file (any layout of
        :func:`~faceetl.datasets.read_annotations`); ``image_root`` defaults to
        :func:`~faceetl.datasets.default_image_root` of the file."""
        annotations, root = _read(path, image_root)
        return cls(annotations, root, **kwargs)

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        """The epoch the random transforms are drawn for."""
        self.epoch = int(epoch)

    def image_path(self, index: int) -> Path:
        p = Path(self.items[index][0])
        return p if self.image_root is None or p.is_absolute() else self.image_root / p

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The BGR uint8 image and its targets (N, 15) in pixels."""
        path = self.image_path(index)
        try:
            rgb = load_image(path)
        except ImageError as e:  # the data set's own error: say which file, and where it looked
            raise ImageError(f"{path}: {e} (image {index} of the annotations; image_root "
                             f"{self.image_root})") from None  # fmt: skip
        return np.ascontiguousarray(rgb[:, :, ::-1]), self.items[index][1].copy()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, t = self.load(index)
        if self.augment:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            x, t = augment(
                image, t, self.image_size, rng, self.mean, self.min_face, self.continuous_scale
            )
        else:
            x, t = preprocess(image, t, self.image_size, self.mean)
        return torch.from_numpy(x), torch.from_numpy(t)


def collate(batch: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, list]:
    """Stack the images; the targets stay a list (a different number of faces per image)."""
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch]


__all__ = ["RetinaFaceDataset", "collate"]
