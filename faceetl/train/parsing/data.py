"""The CelebAMask-HQ training set of face parsing: images and 19-class label maps as tensors,
with face-parsing.PyTorch's augmentation (``face_dataset.py`` / ``transform.py``). The folder
layouts, part masks and label maps are read by :mod:`faceetl.datasets.celebamask`."""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageEnhance
from torch.utils.data import Dataset

from ...datasets.celebamask import IMAGE_SIZE, PARTS, find_layout
from ...nets.bisenet import CLASSES as parsing_classes
from ...nets.bisenet import MEAN as _MEAN
from ...nets.bisenet import STD as _STD

#: the 19 labels: background, then the CelebAMask-HQ parts (label = index)
CLASSES: tuple[str, ...] = parsing_classes
N_CLASSES = len(CLASSES)
assert CLASSES[1:] == PARTS
MEAN = np.array(_MEAN, np.float32)
STD = np.array(_STD, np.float32)
#: label value of pixels that do not count (the loss and the metrics skip them)
IGNORE_LABEL = 255
#: label pairs a horizontal flip exchanges: brows, eyes, ears
FLIP_PAIRS: tuple[tuple[int, int], ...] = ((2, 3), (4, 5), (7, 8))
CROP_SIZE = 448
SCALES: tuple[float, ...] = (0.75, 1.0, 1.25, 1.5, 1.75, 2.0)
JITTER: tuple[float, float, float] = (0.5, 0.5, 0.5)

# flip lookup table: label -> label of the mirrored pixel
_FLIP_LUT = np.arange(256, dtype=np.uint8)
for _a, _b in FLIP_PAIRS:
    _FLIP_LUT[_a], _FLIP_LUT[_b] = _b, _a


class CelebAMaskHQ(Dataset):
    """CelebAMask-HQ images and 19-class label maps, with face-parsing.PyTorch's augmentations.

    ``root`` holds either the release layout (``CelebA-HQ-img/`` + ``CelebAMask-HQ-mask-anno/``,
    part masks merged on the fly) or a prepared one (an image folder + a label folder of
    ``<stem>.png``; ``layout="auto"`` takes the per-part one when both exist), as
    :func:`faceetl.datasets.celebamask.find_layout` reads them. ``ids`` restricts it to some
    image stems (a split). Items are ``(image, label)``: a float (3, H, W) tensor
    normalised with the ImageNet mean/std and a long (H, W) tensor of labels (0..18).

    With ``augment`` (training): colour jitter (``jitter`` = brightness, contrast, saturation
    amplitudes), a horizontal flip with probability ``flip`` swapping l_/r_ brows, eyes and ears,
    a random scale from ``scales`` and a random ``crop_size`` crop (images smaller than the crop
    are first enlarged to it), as face-parsing.PyTorch's ``FaceMask``. Without: the image at
    ``image_size``. Randomness comes from torch's generator (seeded per DataLoader worker).
    ``repeat`` lists every image that many times per epoch (for tiny sets); ``cache`` keeps the
    decoded ``image_size`` images and labels in memory.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        augment: bool = True,
        ids: Sequence[str | int] | None = None,
        image_size: int = IMAGE_SIZE,
        crop_size: int = CROP_SIZE,
        scales: Sequence[float] = SCALES,
        flip: float = 0.5,
        jitter: tuple[float, float, float] | None = JITTER,
        parts: Sequence[str] = PARTS,
        layout: str = "auto",
        repeat: int = 1,
        cache: bool = False,
    ) -> None:
        folder = find_layout(root, layout, ids)
        if int(repeat) < 1:
            raise ValueError("repeat must be >= 1")
        if augment and (not scales or min(scales) <= 0):
            raise ValueError("scales must be positive")
        self.folder = folder
        self.root = folder.root
        self.layout = folder.layout
        self.image_dir = folder.image_dir
        self.anno_dir = folder.anno_dir
        self.label_dir = folder.label_dir
        self.parts = tuple(parts)
        self.ids = list(folder.ids)
        self.augment = bool(augment)
        self.image_size = int(image_size)
        self.crop_size = int(crop_size)
        self.scales = tuple(float(s) for s in scales)
        self.flip = float(flip)
        self.jitter = None if jitter is None else tuple(float(j) for j in jitter)
        self.repeat = int(repeat)
        self.cache = bool(cache)
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.ids) * self.repeat

    def __repr__(self) -> str:
        return (
            f"CelebAMaskHQ({os.fspath(self.root)!r}, {len(self.ids)} images, layout={self.layout!r}, "
            f"augment={self.augment}, image_size={self.image_size}, crop_size={self.crop_size})"
        )

    def with_augment(self, augment: bool) -> CelebAMaskHQ:
        """A shallow copy with augmentation on or off (same images, shared cache)."""
        out = copy.copy(self)
        out.augment = bool(augment)
        return out

    def label(self, i: int) -> np.ndarray:
        """The (image_size, image_size) uint8 label map of image ``i`` (no augmentation)."""
        return self.sample(i)[1]

    def sample(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """``(rgb, label)`` of image ``i`` at ``image_size``: uint8 (S, S, 3) and uint8 (S, S)."""
        i = int(i) % len(self.ids)
        hit = self._cache.get(i)
        if hit is not None:
            return hit
        rgb, label = self.folder.sample(self.ids[i], self.image_size, self.parts)
        if self.cache:
            self._cache[i] = (rgb, label)
        return rgb, label

    def _random(self) -> float:
        return float(torch.rand(()))

    def transform(self, rgb: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The training augmentation of one ``(rgb, label)`` pair (jitter, flip, scale, crop)."""
        im = Image.fromarray(rgb)
        if self.jitter is not None:
            for amp, enhancer in zip(
                self.jitter, (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color),
                strict=True,
            ):  # fmt: skip
                if amp > 0:
                    lo, hi = max(1.0 - amp, 0.0), 1.0 + amp
                    im = enhancer(im).enhance(lo + (hi - lo) * self._random())
        lb = Image.fromarray(label)
        if self._random() < self.flip:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
            lb = Image.fromarray(_FLIP_LUT[np.asarray(lb)]).transpose(Image.FLIP_LEFT_RIGHT)
        scale = self.scales[int(torch.randint(len(self.scales), ()))]
        w, h = im.size
        w, h = int(w * scale), int(h * scale)
        im = im.resize((w, h), Image.BILINEAR)
        lb = lb.resize((w, h), Image.NEAREST)
        c = self.crop_size
        if w < c or h < c:
            up = max(c / w, c / h)
            w, h = max(c, int(w * up + 1)), max(c, int(h * up + 1))
            im = im.resize((w, h), Image.BILINEAR)
            lb = lb.resize((w, h), Image.NEAREST)
        x0 = int(self._random() * (w - c))
        y0 = int(self._random() * (h - c))
        box = (x0, y0, x0 + c, y0 + c)
        return np.asarray(im.crop(box), np.uint8), np.asarray(lb.crop(box), np.uint8)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= idx < len(self):
            raise IndexError(idx)
        rgb, label = self.sample(idx % len(self.ids))
        if self.augment:
            rgb, label = self.transform(rgb, label)
        return to_tensor(rgb), torch.from_numpy(label.astype(np.int64))


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """Float (3, H, W) network input of an RGB uint8 image (ToTensor + ImageNet mean/std)."""
    x = (np.asarray(rgb, np.float32) / 255.0 - MEAN) / STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def _as_dataset(source: Any, **kw: Any) -> Dataset:
    if isinstance(source, Dataset):
        return source
    return CelebAMaskHQ(source, **kw)


__all__ = [
    "CLASSES",
    "CROP_SIZE",
    "FLIP_PAIRS",
    "IGNORE_LABEL",
    "JITTER",
    "MEAN",
    "N_CLASSES",
    "SCALES",
    "STD",
    "CelebAMaskHQ",
    "to_tensor",
]
