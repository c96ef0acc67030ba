"""Train and evaluate the BiSeNet face parser on CelebAMask-HQ (face-parsing.PyTorch recipe).

>>> ds = CelebAMaskHQ("data/CelebAMask-HQ")               # augmented training view
>>> model, metrics = train("data/CelebAMask-HQ", epochs=40, batch_size=16, lr=1e-2,
...                        checkpoint_dir="runs/parsing")
>>> evaluate(model, CelebAMaskHQ("data/val", augment=False))["miou"]
>>> ParsingPredictor(weights="runs/parsing/last.pt")      # the checkpoint is a parsing model

**Data.** The CelebAMask-HQ release holds ``CelebA-HQ-img/<id>.jpg`` (1024x1024) and
``CelebAMask-HQ-mask-anno/<id // 2000>/<id:05d>_<part>.png``, one 512x512 binary mask per part
present. :func:`merge_part_masks` turns them into one label map as zllrunning/face-parsing.PyTorch
prepares its training labels: the parts of :data:`PARTS` are painted in that order with
``label = index + 1`` (0 = background), so a pixel in two part masks gets the later part
(hair over skin, for instance). This is the order of the model's 19 outputs
(:data:`faceetl.nets.bisenet.CLASSES`). Note that CelebAMask-HQ's own
``face_parsing/Data_preprocessing/g_mask.py`` paints in another order (:data:`G_MASK_PARTS`,
labels 1..18 in *that* order); pass ``parts=G_MASK_PARTS`` to reproduce its label maps. A
prepared layout — images plus one label PNG per image with the same stem (``CelebA-HQ-img`` +
``mask``, as face-parsing.PyTorch writes it, or ``images`` + ``labels``) — is read as is;
:func:`write_label_maps` writes one from the per-part layout. Images are resized to 512
(PIL bilinear) and label maps of another size are resized with nearest neighbour.

**Training** (:func:`train`) follows face-parsing.PyTorch's ``train.py``: the augmentations of
its ``face_dataset.py``/``transform.py`` (colour jitter of brightness/contrast/saturation by
0.5, a horizontal flip that swaps the left/right classes, a random scale of
0.75/1/1.25/1.5/1.75/2, a random 448x448 crop), the sum of three :class:`OhemCELoss` terms
(main head + the two auxiliary heads ``conv_out16``/``conv_out32``; threshold 0.7, at least
1/16 of the pixels of a batch = ``16*448*448//16`` for the published batch of 16), SGD with
momentum 0.9 and weight decay 5e-4 (none on biases and BatchNorm), 10x the learning rate on the
fusion module and the output heads, an exponential warm-up from 1e-5 followed by the poly
schedule ``lr * (1 - it/max_iter) ** 0.9``. The published run is 80,000 iterations of 16 images
(about 43 epochs of the 30,000 images) at ``lr=1e-2`` from an ImageNet ResNet-18; this module
has no ImageNet weights of its own — pass one with ``init`` (a torchvision ``resnet18`` state
dict) or start from a BiSeNet state dict such as ``79999_iter.pth``.

**Evaluation** (:func:`evaluate`): one confusion matrix over all pixels of the dataset;
``IoU_c = TP / (TP + FP + FN)``; a class absent from both the predictions and the labels has
no IoU (NaN) and is left out of the mean; mIoU includes the background unless
``include_background=False``.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageEnhance
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from ..nets.bisenet import CLASSES as parsing_classes
from ..nets.bisenet import MEAN as _MEAN
from ..nets.bisenet import STD as _STD
from ..nets.bisenet import build_bisenet, load_bisenet
from ._common import LAST, autocast, checkpoint_file, plain, save
from ._common import progress as progress_bar

log = logging.getLogger(__name__)

#: the CelebAMask-HQ parts in face-parsing.PyTorch's merge order; label = index + 1
PARTS: tuple[str, ...] = parsing_classes[1:]
#: the order of CelebAMask-HQ's own g_mask.py ("list2"), for reproducing its label maps
G_MASK_PARTS: tuple[str, ...] = (
    "skin",
    "nose",
    "eye_g",
    "l_eye",
    "r_eye",
    "l_brow",
    "r_brow",
    "l_ear",
    "r_ear",
    "mouth",
    "u_lip",
    "l_lip",
    "hair",
    "hat",
    "ear_r",
    "neck_l",
    "neck",
    "cloth",
)
CLASSES: tuple[str, ...] = parsing_classes
MEAN = np.array(_MEAN, np.float32)
STD = np.array(_STD, np.float32)
N_CLASSES = len(CLASSES)
assert CLASSES[1:] == PARTS
IGNORE_LABEL = 255
#: label pairs a horizontal flip exchanges: brows, eyes, ears
FLIP_PAIRS: tuple[tuple[int, int], ...] = ((2, 3), (4, 5), (7, 8))
IMAGE_SIZE = 512
CROP_SIZE = 448
SCALES: tuple[float, ...] = (0.75, 1.0, 1.25, 1.5, 1.75, 2.0)
JITTER: tuple[float, float, float] = (0.5, 0.5, 0.5)
FOLDER_SIZE = 2000  # CelebAMask-HQ-mask-anno/<id // 2000>/

IMAGE_DIRS = ("CelebA-HQ-img", "images", "imgs", "img")
ANNO_DIR = "CelebAMask-HQ-mask-anno"
LABEL_DIRS = ("mask", "masks", "labels", "CelebAMask-HQ-mask", "CelebAMaskHQ-mask")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
CHECKPOINT_VERSION = 1

# flip lookup table: label -> label of the mirrored pixel
_FLIP_LUT = np.arange(256, dtype=np.uint8)
for _a, _b in FLIP_PAIRS:
    _FLIP_LUT[_a], _FLIP_LUT[_b] = _b, _a


# --- the dataset layout -------------------------------------------------------------------------


def part_mask_path(anno_dir: str | os.PathLike, image_id: int, part: str) -> Path:
    """``<anno_dir>/<id // 2000>/<id:05d>_<part>.png``, the CelebAMask-HQ file of one part."""
    image_id = int(image_id)
    return Path(anno_dir) / str(image_id // FOLDER_SIZE) / f"{image_id:05d}_{part}.png"


def _read_gray(path: str | os.PathLike) -> np.ndarray:
    a = cv2.imread(os.fspath(path), cv2.IMREAD_GRAYSCALE)
    if a is None:
        raise ValueError(f"cannot read the mask {path}")
    return a


def merge_part_masks(
    masks: Mapping[str, np.ndarray | None],
    size: int | tuple[int, int] | None = None,
    parts: Sequence[str] = PARTS,
) -> np.ndarray:
    """One (H, W) uint8 label map from binary part masks (part name -> (H, W) array).

    Parts are painted in the order of ``parts`` with label ``index + 1`` wherever their mask is
    non-zero, so later parts overwrite earlier ones; absent parts (missing or ``None``) are
    skipped, unknown part names refused. ``size`` (H, W) is needed when no mask is given.
    """
    unknown = sorted(set(masks) - set(parts))
    if unknown:
        raise ValueError(f"unknown parts {unknown}; known: {list(parts)}")
    given = [np.asarray(m) for m in masks.values() if m is not None]
    if size is None:
        if not given:
            raise ValueError("no part mask given: pass size=")
        size = given[0].shape[:2]
    elif isinstance(size, int):
        size = (size, size)
    out = np.zeros(tuple(size), np.uint8)
    for label, part in enumerate(parts, start=1):
        m = masks.get(part)
        if m is None:
            continue
        m = np.asarray(m)
        if m.ndim == 3:
            m = m[..., 0]
        if m.shape != out.shape:
            raise ValueError(f"mask of {part!r} is {m.shape}, expected {out.shape}")
        out[m != 0] = label
    return out


def read_part_masks(
    anno_dir: str | os.PathLike, image_id: int, parts: Sequence[str] = PARTS
) -> dict[str, np.ndarray]:
    """The part masks of ``image_id`` that exist under ``anno_dir`` (part name -> (H, W) uint8)."""
    out = {}
    for part in parts:
        p = part_mask_path(anno_dir, image_id, part)
        if p.is_file():
            out[part] = _read_gray(p)
    return out


def read_label_map(
    anno_dir: str | os.PathLike,
    image_id: int,
    size: int = IMAGE_SIZE,
    parts: Sequence[str] = PARTS,
) -> np.ndarray:
    """The merged (size, size) uint8 label map of ``image_id`` from its per-part masks."""
    masks = read_part_masks(anno_dir, image_id, parts)
    shapes = {m.shape for m in masks.values()}
    if len(shapes) > 1:
        raise ValueError(f"part masks of image {image_id} differ in size: {sorted(shapes)}")
    label = merge_part_masks(masks, next(iter(shapes)) if shapes else size, parts)
    if label.shape != (size, size):
        label = cv2.resize(label, (size, size), interpolation=cv2.INTER_NEAREST)
    return label


def _find_dir(root: Path, names: Sequence[str]) -> Path | None:
    for n in names:
        if (root / n).is_dir():
            return root / n
    return None


def _list_images(folder: Path) -> dict[str, Path]:
    return {
        p.stem: p
        for p in sorted(folder.iterdir())
        if p.is_file() and p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".")
    }


def _id_sort_key(stem: str) -> tuple:
    return (0, int(stem), "") if stem.isdigit() else (1, 0, stem)


def write_label_maps(
    root: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    size: int = IMAGE_SIZE,
    parts: Sequence[str] = PARTS,
) -> Path:
    """Write ``<out_dir>/<id>.png`` label maps (default ``<root>/mask``) from the per-part masks.

    The prepared layout face-parsing.PyTorch trains from; :class:`CelebAMaskHQ` reads it back.
    """
    root = Path(root)
    img_dir = _find_dir(root, IMAGE_DIRS)
    anno = root / ANNO_DIR
    if img_dir is None or not anno.is_dir():
        raise FileNotFoundError(f"{root} has no CelebA-HQ-img/ and {ANNO_DIR}/ folders")
    out = Path(out_dir) if out_dir is not None else root / "mask"
    out.mkdir(parents=True, exist_ok=True)
    for stem in sorted(_list_images(img_dir), key=_id_sort_key):
        if not stem.isdigit():
            raise ValueError(f"CelebAMask-HQ image names are numbers, not {stem!r}")
        label = read_label_map(anno, int(stem), size, parts)
        if not cv2.imwrite(os.fspath(out / f"{stem}.png"), label):
            raise OSError(f"cannot write {out / f'{stem}.png'}")
    return out


# --- the dataset --------------------------------------------------------------------------------


class CelebAMaskHQ(Dataset):
    """CelebAMask-HQ images and 19-class label maps, with face-parsing.PyTorch's augmentations.

    ``root`` holds either the release layout (``CelebA-HQ-img/`` + ``CelebAMask-HQ-mask-anno/``,
    part masks merged on the fly) or a prepared one (an image folder + a label folder of
    ``<stem>.png``; ``layout="auto"`` takes the per-part one when both exist). ``ids`` restricts
    it to some image stems (a split). Items are ``(image, label)``: a float (3, H, W) tensor
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
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"no dataset folder {self.root}")
        img_dir = _find_dir(self.root, IMAGE_DIRS)
        if img_dir is None:
            raise FileNotFoundError(f"{self.root} has no image folder (one of {list(IMAGE_DIRS)})")
        anno = self.root / ANNO_DIR
        label_dir = _find_dir(self.root, LABEL_DIRS)
        if layout == "auto":
            layout = "parts" if anno.is_dir() else "labels"
        if layout == "parts" and not anno.is_dir():
            raise FileNotFoundError(f"{self.root} has no {ANNO_DIR}/ folder")
        if layout == "labels" and label_dir is None:
            raise FileNotFoundError(
                f"{self.root} has neither {ANNO_DIR}/ nor a label folder (one of {list(LABEL_DIRS)})"
            )
        if layout not in ("parts", "labels"):
            raise ValueError(f"layout must be 'auto', 'parts' or 'labels', not {layout!r}")
        if int(repeat) < 1:
            raise ValueError("repeat must be >= 1")
        if augment and (not scales or min(scales) <= 0):
            raise ValueError("scales must be positive")
        self.layout = layout
        self.image_dir = img_dir
        self.anno_dir = anno if layout == "parts" else None
        self.label_dir = label_dir if layout == "labels" else None
        self.parts = tuple(parts)
        images = _list_images(img_dir)
        if layout == "labels":
            assert label_dir is not None
            labels = {p.stem for p in label_dir.glob("*.png")}
            missing = sorted(set(images) - labels)
            if missing and ids is None:
                log.warning("%d images of %s have no label map; skipped", len(missing), img_dir)
            images = {k: v for k, v in images.items() if k in labels}
        elif any(not s.isdigit() for s in images):
            raise ValueError(f"CelebAMask-HQ image names are numbers; {img_dir} has others")
        if ids is not None:
            want = [str(i) for i in ids]
            absent = [i for i in want if i not in images]
            if absent:
                raise ValueError(f"ids not in {img_dir} (or without labels): {absent[:5]}")
            self.ids = want
        else:
            self.ids = sorted(images, key=_id_sort_key)
        self._paths = {i: images[i] for i in self.ids}
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
        stem = self.ids[i]
        s = self.image_size
        with Image.open(self._paths[stem]) as im:
            im = im.convert("RGB")
            if im.size != (s, s):
                im = im.resize((s, s), Image.BILINEAR)
            rgb = np.asarray(im, np.uint8).copy()
        if self.layout == "parts":
            label = read_label_map(self.anno_dir, int(stem), s, self.parts)
        else:
            label = _read_gray(self.label_dir / f"{stem}.png")
            if label.shape != (s, s):
                label = cv2.resize(label, (s, s), interpolation=cv2.INTER_NEAREST)
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


# --- the model, the loss and the optimiser ------------------------------------------------------


def build_model(init: str | os.PathLike | Mapping[str, torch.Tensor] | None = None) -> nn.Module:
    """A BiSeNet (the parsing predictor's module and key layout) ready for training.

    Without ``init``: the convolutions outside the ResNet-18 get face-parsing.PyTorch's
    ``kaiming_normal_(a=1)``, the ResNet-18 torch's default initialisation (the published model
    starts from ImageNet weights, which faceetl does not ship). ``init`` is a state dict or a
    file: a whole BiSeNet (keys ``cp.resnet...``, e.g. ``79999_iter.pth`` or a checkpoint of
    :func:`train`) or a ResNet-18 with torchvision's names (``conv1.weight`` ..., ``fc.*``
    ignored), loaded into the context path's backbone.
    """
    net = build_bisenet(N_CLASSES)
    for name, m in net.named_modules():
        if isinstance(m, nn.Conv2d) and not name.startswith("cp.resnet."):
            nn.init.kaiming_normal_(m.weight, a=1)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    if init is None:
        return net
    if isinstance(init, (str, os.PathLike)):
        from ..weights import load_state_dict

        sd = load_state_dict(init)
    else:
        sd = {k.removeprefix("module."): v for k, v in init.items()}
    if any(k.startswith("cp.resnet.") for k in sd):
        target, module = "BiSeNet", net
    else:
        sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
        target, module = "ResNet-18 backbone", net.cp.resnet
    try:
        missing, unexpected = module.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ValueError(f"init weights do not fit the {target}: {e}") from e
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(
            f"init weights do not fit the {target}: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {list(unexpected)[:5]}"
            f"{'...' if len(unexpected) > 5 else ''}"
        )
    return net


def forward_heads(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``(main, aux16, aux32)`` logits of BiSeNet at the input resolution (training forward)."""
    feat8, cp8, cp16 = net.cp(x)
    outs = (net.conv_out(net.ffm(feat8, cp8)), net.conv_out16(cp8), net.conv_out32(cp16))
    size = x.shape[2:]
    return tuple(F.interpolate(o, size, mode="bilinear", align_corners=True) for o in outs)


class OhemCELoss(nn.Module):
    """Cross-entropy averaged over the hard pixels (online hard example mining).

    Pixels labelled ``ignore_index`` do not count. The hard pixels are those whose loss exceeds
    ``-log(thresh)`` (predicted probability of the true class below ``thresh``); when fewer than
    ``n_min`` are hard, the ``n_min`` largest losses are averaged instead (all valid pixels when
    there are fewer). ``n_min=None`` takes 1/16 of the batch's pixels, face-parsing.PyTorch's
    ``n_img * H * W // 16``.
    """

    def __init__(
        self, thresh: float = 0.7, n_min: int | None = None, ignore_index: int = IGNORE_LABEL
    ) -> None:
        super().__init__()
        if not 0 < thresh <= 1:
            raise ValueError("thresh is a probability in (0, 1]")
        self.thresh = float(thresh)
        self.loss_thresh = -math.log(self.thresh)
        self.n_min = None if n_min is None else int(n_min)
        self.ignore_index = int(ignore_index)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(
            logits.float(), labels.long(), ignore_index=self.ignore_index, reduction="none"
        ).flatten()
        valid = loss[labels.flatten() != self.ignore_index]
        if valid.numel() == 0:
            return logits.sum() * 0.0
        n_min = labels.numel() // 16 if self.n_min is None else self.n_min
        n_min = max(1, min(n_min, valid.numel()))
        hard = valid[valid > self.loss_thresh]
        if hard.numel() >= n_min:
            return hard.mean()
        return valid.topk(n_min, sorted=False).values.mean()


_HEADS = ("ffm", "conv_out", "conv_out16", "conv_out32")


def param_groups(net: nn.Module, weight_decay: float = 5e-4) -> list[dict[str, Any]]:
    """face-parsing.PyTorch's four SGD groups: (no) weight decay x (1x / 10x learning rate).

    Conv/linear weights decay, biases and BatchNorm parameters do not; the feature fusion
    module and the three output heads learn 10x faster (``lr_mul``).
    """
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {
        (d, m): [] for d in (True, False) for m in (False, True)
    }
    for name, module in net.named_modules():
        mul = name.split(".", 1)[0] in _HEADS
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            groups[(True, mul)].append(module.weight)
            if module.bias is not None:
                groups[(False, mul)].append(module.bias)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            groups[(False, mul)] += list(module.parameters(recurse=False))
    n = sum(len(v) for v in groups.values())
    if n != len(list(net.parameters())):
        raise RuntimeError("param_groups: some parameters belong to no group")
    return [
        {"params": groups[(True, False)], "weight_decay": weight_decay, "lr_mul": 1.0},
        {"params": groups[(False, False)], "weight_decay": 0.0, "lr_mul": 1.0},
        {"params": groups[(True, True)], "weight_decay": weight_decay, "lr_mul": 10.0},
        {"params": groups[(False, True)], "weight_decay": 0.0, "lr_mul": 10.0},
    ]


def learning_rate(
    it: int,
    lr: float,
    max_iter: int,
    warmup_steps: int,
    warmup_start_lr: float = 1e-5,
    power: float = 0.9,
) -> float:
    """The base learning rate of iteration ``it`` (0-based): exponential warm-up, then poly.

    ``warmup_start_lr * (lr / warmup_start_lr) ** (it / warmup_steps)`` up to ``warmup_steps``,
    then ``lr * (1 - (it - warmup_steps) / (max_iter - warmup_steps)) ** power``.
    """
    if warmup_steps > 0 and it <= warmup_steps:
        return warmup_start_lr * (lr / warmup_start_lr) ** (it / warmup_steps)
    span = max(max_iter - warmup_steps, 1)
    return lr * max(0.0, 1.0 - (it - warmup_steps) / span) ** power


# --- evaluation ---------------------------------------------------------------------------------


def confusion_matrix(
    pred: np.ndarray | torch.Tensor,
    label: np.ndarray | torch.Tensor,
    n_classes: int = N_CLASSES,
    ignore_index: int = IGNORE_LABEL,
) -> np.ndarray:
    """(n, n) int64 counts: row = true class, column = predicted class (ignored pixels skipped)."""
    p = torch.as_tensor(pred).flatten().long()
    t = torch.as_tensor(label).flatten().long().to(p.device)
    keep = (t != ignore_index) & (t >= 0) & (t < n_classes)
    idx = t[keep] * n_classes + p[keep].clamp(0, n_classes - 1)
    cm = torch.bincount(idx, minlength=n_classes * n_classes)
    return cm.reshape(n_classes, n_classes).cpu().numpy().astype(np.int64)


def iou_from_confusion(
    cm: np.ndarray, classes: Sequence[str] = CLASSES, include_background: bool = True
) -> dict[str, Any]:
    """Per-class IoU, mIoU and pixel accuracy of a confusion matrix.

    ``IoU_c = TP / (TP + FP + FN)``; NaN for a class with no pixel in the labels nor in the
    predictions, and such classes are left out of ``miou`` (a class present in the labels but
    never predicted counts with IoU 0, and so does one predicted but absent from the labels).
    """
    cm = np.asarray(cm, np.float64)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    use = iou if include_background else iou[1:]
    present = ~np.isnan(use)
    total = cm.sum()
    return {
        "miou": float(use[present].mean()) if present.any() else math.nan,
        "pixel_accuracy": float(tp.sum() / total) if total else math.nan,
        "iou": {c: float(v) for c, v in zip(classes, iou, strict=True)},
        "n_classes": int(present.sum()),
        "confusion": cm.astype(np.int64),
    }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset | str | os.PathLike,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    amp: bool | None = None,
    num_workers: int = 0,
    include_background: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """mIoU of ``model`` on a labelled dataset, from one confusion matrix over all its pixels.

    Returns ``{"miou", "pixel_accuracy", "iou": {class: IoU}, "n_classes", "confusion"}``
    (see :func:`iou_from_confusion`; classes absent from both predictions and labels are NaN
    and not averaged). A :class:`CelebAMaskHQ` is evaluated without augmentation (full images
    at its ``image_size``); a path is read as one. The prediction is the main head's argmax.
    """
    ds = _as_dataset(dataset, augment=False)
    if isinstance(ds, CelebAMaskHQ) and ds.augment:
        ds = ds.with_augment(False)
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(dev)
    amp = dev.type == "cuda" if amp is None else bool(amp)
    was_training = model.training
    model.eval()
    loader = DataLoader(
        ds, batch_size=batch_size, shuffle=False, num_workers=num_workers,
        pin_memory=dev.type == "cuda",
    )  # fmt: skip
    cm = np.zeros((N_CLASSES, N_CLASSES), np.int64)
    for x, y in progress_bar(loader, progress, "evaluate"):
        with autocast(dev, amp):
            logits = model(x.to(dev, non_blocking=True))
        cm += confusion_matrix(logits.argmax(1), y.to(dev))
    model.train(was_training)
    return iou_from_confusion(cm, include_background=include_background)


# --- training -----------------------------------------------------------------------------------


def _default_device(device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _alias(src: Path, dst: Path) -> None:
    """Make ``dst`` hold ``src``'s content: a hard link where possible (no second write)."""
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        import shutil

        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def train(
    root: str | os.PathLike | Dataset,
    epochs: int = 40,
    batch_size: int = 16,
    lr: float = 1e-2,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = True,
    device: str | torch.device | None = None,
    amp: bool | None = None,
    init: str | os.PathLike | Mapping[str, torch.Tensor] | None = None,
    progress: bool = True,
    *,
    val: str | os.PathLike | Dataset | None = None,
    image_size: int = IMAGE_SIZE,
    crop_size: int = CROP_SIZE,
    num_workers: int = 0,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    warmup_steps: int | None = None,
    warmup_start_lr: float = 1e-5,
    power: float = 0.9,
    ohem_thresh: float = 0.7,
    aux_weight: float = 1.0,
    keep_epochs: bool = True,
    seed: int = 0,
) -> tuple[nn.Module, pd.DataFrame]:
    """Train BiSeNet on a CelebAMask-HQ folder (or a dataset); returns ``(model, metrics)``.

    ``root`` is read with :class:`CelebAMaskHQ` (augmented, ``image_size``/``crop_size``);
    ``val`` (a folder or dataset) is evaluated with :func:`evaluate` after every epoch. The
    recipe is face-parsing.PyTorch's (see the module docstring); the schedule spans
    ``epochs * ceil(len(train) / batch_size)`` iterations with ``warmup_steps`` of exponential
    warm-up (default ``min(1000, max_iter // 10)``; the published run: 1000 of 80,000).
    ``init``: see :func:`build_model`. Mixed precision (float16 autocast + GradScaler) is on by
    default on CUDA; ``amp=True`` on CPU uses bfloat16 autocast.

    With ``checkpoint_dir`` a checkpoint is written after every epoch (``epoch_001.pt`` ... when
    ``keep_epochs``, and ``last.pt``) holding the model under ``"state_dict"`` — so the file
    loads as ``ParsingPredictor(weights=...)`` and with
    :func:`faceetl.nets.bisenet.load_bisenet` — plus the optimiser, scaler, epoch,
    iteration, metrics and config; :func:`export_weights` writes the bare state dict. With
    ``resume`` a run finding ``last.pt`` continues from it up to ``epochs`` (total); each epoch's
    shuffling and augmentation are seeded from ``seed`` and the epoch number, so a resumed run
    repeats an uninterrupted one. ``metrics``: one row per epoch with ``epoch, iterations,
    train_loss`` (the three OHEM terms summed), ``train_loss_main``, ``lr`` (base, at the end),
    ``val_miou, val_pixel_accuracy`` (with ``val``) and ``seconds``.
    """
    train_ds = _as_dataset(root, augment=True, image_size=image_size, crop_size=crop_size)
    if len(train_ds) == 0:
        raise ValueError("the training set is empty")
    val_ds = None
    if val is not None:
        val_ds = _as_dataset(val, augment=False, image_size=image_size)
    if epochs < 0 or batch_size < 1:
        raise ValueError("epochs must be >= 0 and batch_size >= 1")

    dev = _default_device(device)
    amp = dev.type == "cuda" if amp is None else bool(amp)
    # BatchNorm cannot train on a batch of one sample
    drop_last = len(train_ds) % batch_size == 1 and len(train_ds) > batch_size
    steps = len(train_ds) // batch_size if drop_last else math.ceil(len(train_ds) / batch_size)
    max_iter = max(1, epochs * steps)
    warmup = min(1000, max_iter // 10) if warmup_steps is None else int(warmup_steps)

    torch.manual_seed(seed)
    model = build_model(init).to(dev)
    opt = torch.optim.SGD(
        param_groups(model, weight_decay), lr=lr, momentum=momentum, weight_decay=weight_decay
    )
    scaler = torch.amp.GradScaler(dev.type, enabled=amp and dev.type == "cuda")
    criterion = OhemCELoss(ohem_thresh, None, IGNORE_LABEL)

    config = plain(
        {
            "arch": "BiSeNet (face-parsing.PyTorch)",
            "classes": list(CLASSES),
            "batch_size": batch_size,
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "warmup_steps": warmup,
            "warmup_start_lr": warmup_start_lr,
            "power": power,
            "max_iter": max_iter,
            "ohem_thresh": ohem_thresh,
            "aux_weight": aux_weight,
            "image_size": getattr(train_ds, "image_size", image_size),
            "crop_size": getattr(train_ds, "crop_size", crop_size),
            "amp": amp,
            "seed": seed,
            "train_size": len(train_ds),
            "init": init if isinstance(init, (str, os.PathLike)) else (init is not None),
        }
    )
    rows: list[dict[str, Any]] = []
    start = 0
    it = 0
    ckdir = None if checkpoint_dir is None else Path(checkpoint_dir)
    if ckdir is not None:
        ckdir.mkdir(parents=True, exist_ok=True)
        if not resume and (ckdir / LAST).is_file():
            log.warning("resume=False: checkpoints in %s will be overwritten", ckdir)
        if resume and (ckdir / LAST).is_file():
            ck = torch.load(ckdir / LAST, map_location=dev, weights_only=True)
            if ck.get("config", {}).get("max_iter") not in (None, max_iter):
                log.warning(
                    "%s was planned for %s iterations, this run for %d (epochs or batch size "
                    "changed): the learning-rate schedule follows this run",
                    ckdir / LAST, ck["config"]["max_iter"], max_iter,
                )  # fmt: skip
            model.load_state_dict(ck["state_dict"])
            opt.load_state_dict(ck["optimizer"])
            if ck.get("scaler") and scaler.is_enabled():
                scaler.load_state_dict(ck["scaler"])
            start = int(ck["epoch"])
            it = int(ck["iteration"])
            rows = [dict(r) for r in ck.get("metrics", [])]
            log.info("resuming from %s at epoch %d of %d", ckdir / LAST, start + 1, epochs)

    pin = dev.type == "cuda"
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        model.train()
        torch.manual_seed(seed * 100_003 + epoch)  # augmentation in the main process
        loader = DataLoader(
            train_ds, batch_size=batch_size, shuffle=True, num_workers=num_workers,
            pin_memory=pin, drop_last=drop_last,
            generator=torch.Generator().manual_seed(seed * 100_003 + epoch),
        )  # fmt: skip
        total = main = 0.0
        n = 0
        bar = progress_bar(loader, progress, f"epoch {epoch + 1}/{epochs}")
        base_lr = learning_rate(it, lr, max_iter, warmup, warmup_start_lr, power)
        for x, y in bar:
            base_lr = learning_rate(it, lr, max_iter, warmup, warmup_start_lr, power)
            for g in opt.param_groups:
                g["lr"] = base_lr * g.get("lr_mul", 1.0)
            x = x.to(dev, non_blocking=True)
            y = y.to(dev, non_blocking=True)
            with autocast(dev, amp):
                out, out16, out32 = forward_heads(model, x)
            lp = criterion(out, y)
            loss = lp + aux_weight * (criterion(out16, y) + criterion(out32, y))
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            it += 1
            b = x.shape[0]
            total += float(loss.detach()) * b
            main += float(lp.detach()) * b
            n += b
            if progress:
                bar.set_postfix(loss=f"{total / n:.4f}", lr=f"{base_lr:.2e}")
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "iterations": it,
            "train_loss": total / n if n else math.nan,
            "train_loss_main": main / n if n else math.nan,
            "lr": base_lr,
        }
        if val_ds is not None and len(val_ds):
            ev = evaluate(model, val_ds, batch_size, dev, amp, num_workers)
            row["val_miou"] = ev["miou"]
            row["val_pixel_accuracy"] = ev["pixel_accuracy"]
        row["seconds"] = time.perf_counter() - t0
        rows.append(plain(row))
        log.info("epoch %d/%d: %s", epoch + 1, epochs, row)
        if ckdir is not None:
            ck = {
                "version": CHECKPOINT_VERSION,
                "state_dict": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                "epoch": epoch + 1,
                "iteration": it,
                "classes": list(CLASSES),
                "metrics": rows,
                "config": config,
            }
            if keep_epochs:
                save(ck, ckdir / f"epoch_{epoch + 1:03d}.pt")
                _alias(ckdir / f"epoch_{epoch + 1:03d}.pt", ckdir / LAST)
            else:
                save(ck, ckdir / LAST)
    model.eval()
    return model, pd.DataFrame(rows)


def load_model(
    checkpoint: str | os.PathLike, device: str | torch.device | None = "cpu"
) -> nn.Module:
    """The BiSeNet of a checkpoint file or folder (its ``last.pt``), or of a bare state dict."""
    net = load_bisenet(checkpoint_file(checkpoint))
    return net.to(_default_device(device)).eval()


def export_weights(checkpoint: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Write the bare state dict of a checkpoint (the layout of ``79999_iter.pth``) to ``path``."""
    net = load_model(checkpoint)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    save(net.state_dict(), out)
    return out


__all__ = [
    "CLASSES",
    "FLIP_PAIRS",
    "G_MASK_PARTS",
    "IGNORE_LABEL",
    "PARTS",
    "CelebAMaskHQ",
    "OhemCELoss",
    "build_model",
    "confusion_matrix",
    "evaluate",
    "export_weights",
    "forward_heads",
    "iou_from_confusion",
    "learning_rate",
    "load_model",
    "merge_part_masks",
    "param_groups",
    "part_mask_path",
    "read_label_map",
    "read_part_masks",
    "to_tensor",
    "train",
    "write_label_maps",
]
