"""Face parsing: BiSeNet trained on CelebAMask-HQ (zllrunning/face-parsing.PyTorch), 19 classes.

The network is written here with the module names of the official ``model.py``/``resnet.py`` so
the released ``79999_iter.pth`` loads with ``strict=True``: a ResNet-18 context path with two
attention-refinement modules, the 1/8 ResNet feature in place of the spatial path, a feature
fusion module and three output heads (``conv_out`` is the main one; ``conv_out16``/``conv_out32``
were auxiliary training heads, loaded but not run). Inputs are prepared as the repository's
``test.py`` does: 512x512 (PIL bilinear), ``ToTensor``, ImageNet mean/std; the label of a pixel is
the argmax of the main head.

Crop geometry: the model was trained on CelebAMask-HQ images, which show the whole head (hair,
ears, neck, some shoulders). A dlib face chip of 512 px with padding 0.75 keeps the top of the head,
both ears and the neck on typical photos; padding ~0.62 reproduces the face scale of the repo's
sample ``makeup/116_ori.png`` but cuts the top of the hair of many faces (see the module tests).
"""

from __future__ import annotations

import logging
import os
from typing import Any, ClassVar

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa
from PIL import Image

from ..align import AlignSpec
from ..nets.bisenet import (  # noqa: F401 (WEIGHTS_FILE, build/load: the predictor's names)
    CLASSES,
    INPUT_SIZE,
    N_CLASSES,
    WEIGHTS_FILE,
    WEIGHTS_NAME,
    build_bisenet,
    load_bisenet,
)
from ..nets.bisenet import MEAN as _MEAN
from ..nets.bisenet import STD as _STD
from ..weights import resolve
from .base import check_crops, default_device, register_predictor

log = logging.getLogger(__name__)

#: the 19 CelebAMask-HQ labels in the model's output order (index = label value in the mask)
parsing_classes: tuple[str, ...] = CLASSES
MEAN = np.array(_MEAN, np.float32)
STD = np.array(_STD, np.float32)
#: default crop: a 512 px dlib face chip, loose enough for hair, ears and neck
DEFAULT_PADDING = 0.75

# The release (registered in faceetl.nets.bisenet): the official file is a Google Drive download
# (id 154JgKpzCPW82qINcVieuPH3fZ2e0P812, linked from the repository README); the registry's URL
# is a commit-pinned Hugging Face mirror of it (used by MuseTalk's download script); the sha256
# and size (53,289,463 bytes) are pinned by several public projects for 79999_iter.pth, and the
# same hash is that of CodeFormer/facexlib's parsing_bisenet.pth.

# a fixed palette for colorize(): background black, then one distinct colour per class
_PALETTE = np.array(
    [
        (0, 0, 0),  # background
        (230, 180, 150),  # skin
        (120, 60, 20),  # l_brow
        (160, 90, 40),  # r_brow
        (0, 200, 255),  # l_eye
        (0, 120, 255),  # r_eye
        (200, 200, 200),  # eye_g
        (255, 140, 0),  # l_ear
        (255, 200, 0),  # r_ear
        (255, 0, 255),  # ear_r
        (0, 255, 0),  # nose
        (255, 255, 255),  # mouth
        (220, 20, 60),  # u_lip
        (150, 0, 40),  # l_lip
        (255, 220, 180),  # neck
        (180, 0, 255),  # neck_l
        (0, 90, 160),  # cloth
        (90, 50, 20),  # hair
        (100, 100, 0),  # hat
    ],
    np.uint8,
)


def preprocess(crops: list[np.ndarray]) -> np.ndarray:
    """(N, 3, 512, 512) float32 network input from RGB uint8 crops, as the repo's test.py."""
    out = np.empty((len(crops), 3, INPUT_SIZE, INPUT_SIZE), np.float32)
    for i, crop in enumerate(crops):
        crop = np.asarray(crop)
        if crop.ndim != 3 or crop.shape[2] != 3 or crop.dtype != np.uint8:
            raise ValueError(f"crops must be RGB uint8 (H, W, 3), got {crop.dtype} {crop.shape}")
        if crop.shape[:2] != (INPUT_SIZE, INPUT_SIZE):
            im = Image.fromarray(crop).resize((INPUT_SIZE, INPUT_SIZE), Image.BILINEAR)
            crop = np.asarray(im)
        x = crop.astype(np.float32) / 255.0
        out[i] = ((x - MEAN) / STD).transpose(2, 0, 1)
    return out


def class_fractions(mask: np.ndarray) -> np.ndarray:
    """(19,) float32 share of the mask's pixels in each class (sums to 1)."""
    counts = np.bincount(np.asarray(mask, np.uint8).ravel(), minlength=N_CLASSES)[:N_CLASSES]
    return (counts / max(mask.size, 1)).astype(np.float32)


def encode_mask(mask: np.ndarray) -> bytes:
    """Lossless 8-bit grayscale PNG bytes of a (H, W) uint8 label mask."""
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise ValueError(f"a label mask is (H, W) uint8, got {mask.dtype} {mask.shape}")
    ok, buf = cv2.imencode(".png", mask)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def decode_mask(data: bytes) -> np.ndarray:
    """The (H, W) uint8 label mask of a ``parsing_mask`` cell."""
    a = cv2.imdecode(np.frombuffer(bytes(data), np.uint8), cv2.IMREAD_UNCHANGED)
    if a is None or a.ndim != 2:
        raise ValueError("not a single-channel PNG label mask")
    return a


def colorize(mask: np.ndarray) -> np.ndarray:
    """RGB uint8 (H, W, 3) picture of a label mask (or ``parsing_mask`` PNG bytes), for notebooks."""
    if isinstance(mask, (bytes, bytearray, memoryview)):
        mask = decode_mask(bytes(mask))
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a label mask is (H, W), got shape {mask.shape}")
    return _PALETTE[np.clip(mask, 0, N_CLASSES - 1).astype(np.intp)]


@register_predictor("parsing", gpu=True)
class ParsingPredictor:
    """BiSeNet face parsing: a 512x512 label mask and per-class pixel fractions per face."""

    name = "parsing"
    align: ClassVar[AlignSpec | None] = AlignSpec("dlib", INPUT_SIZE, DEFAULT_PADDING)
    columns: ClassVar[dict[str, Any]] = {
        "parsing_mask": pd.ArrowDtype(pa.binary()),
        "parsing_fractions": pd.ArrowDtype(pa.list_(pa.float32())),
    }
    classes: ClassVar[tuple[str, ...]] = parsing_classes

    def __init__(
        self,
        *,
        device: str | None = None,
        padding: float = DEFAULT_PADDING,
        weights: str | os.PathLike | None = None,
    ) -> None:
        """``padding``: dlib-chip padding of the 512 px crop; ``weights``: a local file to use
        instead of the registered (hash-checked) ``79999_iter.pth``."""
        import torch

        self.device = default_device(device)
        self.padding = float(padding)
        if self.padding != DEFAULT_PADDING:
            self.align = AlignSpec("dlib", INPUT_SIZE, self.padding)  # instance override
        self.weights = resolve(weights, WEIGHTS_NAME, "BiSeNet face parsing")
        self.weights_file, self.sha256 = self.weights.path.name, self.weights.sha256
        self.net = load_bisenet(self.weights.path).to(self.device)
        self._torch = torch
        log.debug("parsing: BiSeNet loaded from %s on %s", self.weights.path, self.device)

    def masks(self, crops: list[np.ndarray]) -> np.ndarray:
        """(N, 512, 512) uint8 label masks of RGB uint8 crops."""
        torch = self._torch
        if not crops:
            return np.zeros((0, INPUT_SIZE, INPUT_SIZE), np.uint8)
        x = torch.from_numpy(preprocess(crops)).to(self.device)
        cuda = self.device.startswith("cuda")
        with torch.inference_mode(), torch.autocast("cuda", torch.float16, enabled=cuda):
            labels = self.net(x).argmax(dim=1)
        return labels.to(torch.uint8).cpu().numpy()

    def predict_batch(self, crops: list[np.ndarray]) -> dict[str, list]:
        """A PNG label mask and the 19 class fractions per crop (of the ``align`` size)."""
        check_crops(crops, self.align, "face parsing")
        masks = self.masks(crops)
        return {
            "parsing_mask": [encode_mask(m) for m in masks],
            "parsing_fractions": [class_fractions(m).tolist() for m in masks],
        }

    def provenance(self) -> dict[str, Any]:
        a = self.align
        return {
            "model": "parsing",
            "arch": "BiSeNet ResNet-18 (zllrunning/face-parsing.PyTorch), CelebAMask-HQ",
            "classes": list(parsing_classes),
            "input_size": INPUT_SIZE,
            "align": {"template": a.template, "size": a.size, "padding": a.padding},
            "device": self.device,
            "weights": self.weights.provenance(),
        }
